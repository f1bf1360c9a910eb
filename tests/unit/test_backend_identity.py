"""model_version: deterministic across processes, changed by anything that changes predictions."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from backend.converters import MaskDefaults
from backend.identity import model_key, model_version, normalize_background
from backend.labelconfig import parse_label_config
from backend.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="tags" toName="image" choice="multiple">'
    '<Choice value="Cat" predicted_values="cat,kitten"/><Choice value="Dog"/></Choices></View>'
)


def version(
    config: str = CONFIG, settings: Settings | None = None, background: str = "voc", threshold: float | None = None
) -> str:
    settings = settings or Settings()
    plan = parse_label_config(config, threshold).plan
    return model_version(model_key(settings), settings.model_name, plan, normalize_background(background))


def test_same_inputs_same_version_in_another_process():
    here = version()
    code = "from tests.unit.test_backend_identity import version; print(version())"
    there = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert there.stdout.strip() == here
    assert here.startswith("tagclip-ViT-B-16-")


def test_changes_that_change_predictions_change_the_version():
    base = version()
    variants = {
        "label": version(CONFIG.replace('"Dog"', '"Wolf"')),
        "prompt": version(CONFIG.replace("cat,kitten", "cat")),
        "threshold": version(threshold=0.5),
        "background": version(background="coco"),
        "model": version(settings=Settings(model_name="ViT-L-14")),
        "pretrained": version(settings=Settings(pretrained="laion2b_s34b_b88k")),
        "precision": version(settings=Settings(precision="bf16")),
    }
    assert base not in variants.values()
    assert len(set(variants.values())) == len(variants)


def test_irrelevant_settings_keep_the_version():
    assert version(settings=dataclasses.replace(Settings(), port=1234, device="cuda", chunk_size=3)) == version()
    # Whitespace in the config text does not change the plan.
    assert version(CONFIG.replace("><", ">\n  <")) == version()


def test_checkpoint_identity_is_its_content_not_its_path(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights-1" * 1000)
    b.write_bytes(b"weights-1" * 1000)
    assert model_key(Settings(checkpoint=str(a))) == model_key(Settings(checkpoint=str(b)))
    b.write_bytes(b"weights-2" * 1000)
    assert model_key(Settings(checkpoint=str(a))) != model_key(Settings(checkpoint=str(b)))


def test_background_spellings_normalize():
    assert normalize_background("VOC") == "voc"
    assert normalize_background(" sky , grass ") == normalize_background(["sky", "grass"]) == "sky,grass"


REGIONS = CONFIG.replace(
    "</View>", '<BrushLabels name="mask" toName="image"><Label value="Cat"/><Label value="Dog"/></BrushLabels></View>'
)


def region_version(config: str = REGIONS, masks: MaskDefaults | None = None) -> str:
    settings = Settings()
    plan = parse_label_config(config, None, masks).plan
    return model_version(model_key(settings), settings.model_name, plan, normalize_background("voc"))


def test_mask_settings_change_the_version():
    base = region_version()
    assert base != version()  # the brush control is predicted
    variants = {
        "mode_attribute": region_version(REGIONS.replace('name="mask"', 'name="mask" model_mask_mode="clip-es"')),
        "area_attribute": region_version(REGIONS.replace('name="mask"', 'name="mask" model_min_region_area="20"')),
        "mode_extra_params": region_version(masks=MaskDefaults(mode="clip-es")),
        "area_extra_params": region_version(masks=MaskDefaults(min_region_area=20)),
    }
    assert base not in variants.values()
    assert variants["mode_attribute"] == variants["mode_extra_params"]  # the same plan, wherever it came from
    assert variants["area_attribute"] == variants["area_extra_params"]
    assert len({variants["mode_attribute"], variants["area_attribute"]}) == 2
    # Masks off: the brush control is not predicted, so the version is the Choices-only one.
    assert region_version(masks=MaskDefaults(enabled=False)) == version()
    assert region_version(masks=MaskDefaults()) == base
