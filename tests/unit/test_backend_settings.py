"""Settings.from_env: defaults, parsing, and clear errors naming the variable."""

from __future__ import annotations

import pytest

from backend.errors import SettingsError
from backend.settings import ENV_VARS, Settings

pytestmark = pytest.mark.unit


def test_defaults_are_embedded_mode_on_port_9090():
    settings = Settings.from_env({})
    assert settings.embedded and settings.port == 9090 and settings.basic_auth is None
    assert settings.predict_timeout < 100  # below Label Studio's ML_TIMEOUT_PREDICT


def test_every_field_has_an_env_var_and_values_parse():
    env = {
        "TAGCLIP_MODEL": "ViT-L-14",
        "TAGCLIP_CHECKPOINT": "/w/x.pt",
        "TAGCLIP_DEVICE": "cuda:1",
        "TAGCLIP_ALLOW_DOWNLOAD": "no",
        "REDIS_URL": "redis://r:6379/2",
        "CHUNK_SIZE": "4",
        "PREDICT_TIMEOUT": "30.5",
        "BASIC_AUTH_USER": "u",
        "BASIC_AUTH_PASS": "p",
        "PORT": "9191",
        "SERVER_WORKERS": "2",
        "LABEL_STUDIO_URL": "http://ls:8080",
        "MAX_IMAGE_PIXELS": "1000",
        "TAGCLIP_MASK_MODE": "clip-es",
        "TAGCLIP_MIN_REGION_AREA": "25",
    }
    s = Settings.from_env(env)
    assert (s.mask_mode, s.min_region_area) == ("clip-es", 25)
    assert (s.model_name, s.checkpoint, s.device, s.allow_download) == ("ViT-L-14", "/w/x.pt", "cuda:1", False)
    assert (s.redis_url, s.chunk_size, s.predict_timeout, s.port) == ("redis://r:6379/2", 4, 30.5, 9191)
    assert s.basic_auth == ("u", "p") and not s.embedded and s.max_image_pixels == 1000
    assert set(ENV_VARS) == {f for f in Settings.__dataclass_fields__}


def test_empty_values_keep_defaults():
    assert Settings.from_env({"PORT": "", "REDIS_URL": "  "}) == Settings()


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PORT": "ninety"}, "PORT='ninety'"),
        ({"TAGCLIP_ALLOW_DOWNLOAD": "maybe"}, "TAGCLIP_ALLOW_DOWNLOAD"),
        ({"PREDICT_TIMEOUT": "120"}, "PREDICT_TIMEOUT must be in"),
        ({"BASIC_AUTH_USER": "u"}, "BASIC_AUTH_USER and BASIC_AUTH_PASS"),
        ({"CHUNK_SIZE": "0"}, "CHUNK_SIZE must be positive"),
        ({"SERVER_WORKERS": "2"}, "needs REDIS_URL"),
        ({"TAGCLIP_PRECISION": "int8"}, "TAGCLIP_PRECISION"),
        ({"TAGCLIP_MASK_MODE": "grabcut"}, "TAGCLIP_MASK_MODE"),
        ({"TAGCLIP_MIN_REGION_AREA": "-1"}, "TAGCLIP_MIN_REGION_AREA"),
        ({"SERVER_THREADS": "4"}, "SERVER_THREADS must be more than the 4"),
    ],
)
def test_bad_values_raise_settings_error(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_configuration_doc_describes_every_variable_with_its_default():
    """docs/configuration.md's table has one row per variable, and each row's default is the dataclass's."""
    import re
    from dataclasses import fields
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            for name in re.findall(r"`([A-Z_]+)`", cells[0]):
                rows[name] = cells[1]
    assert set(ENV_VARS.values()) <= set(rows), sorted(set(ENV_VARS.values()) - set(rows))
    defaults = {f.name: f.default for f in fields(Settings)}
    for field_name, var in ENV_VARS.items():
        default = defaults[field_name]
        if default is None or var in ("HOST", "PORT", "BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
            continue
        shown = (
            str(default).lower()
            if isinstance(default, bool)
            else f"{default:g}"
            if isinstance(default, float)
            else str(default)
        )
        assert shown in rows[var], f"{var}: docs say {rows[var]!r}, the default is {default!r}"
