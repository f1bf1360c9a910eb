"""The real loading path: OpenAI TorchScript archives, plain state dicts, clear errors, no hangs."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

import open_clip
import pytest
import torch

from tagclip_core.config import ModelSpec
from tagclip_core.errors import CheckpointFormatError, UnsupportedModelError, WeightsUnavailableError
from tagclip_core.model import load_clip, native_cpu_bf16, read_checkpoint_state, resolve_dtype
from tagclip_core.random_weights import TINY_VIT_B_16, random_clip_state_dict, save_openai_checkpoint

pytestmark = pytest.mark.unit


def test_torchscript_archive_loads_exact_values(tiny_checkpoint):
    clip = load_clip(ModelSpec(checkpoint=str(tiny_checkpoint)))
    expected = random_clip_state_dict(TINY_VIT_B_16, seed=0)
    loaded = clip.model.state_dict()
    for key, value in expected.items():
        assert loaded[key].dtype == torch.float32
        assert torch.equal(loaded[key], value.float()), key
    assert clip.patch_size == 16
    assert clip.num_blocks == 12
    assert clip.pretrained_grid == (14, 14)
    assert float(clip.model.logit_scale.exp()) == pytest.approx(100.0)


def test_plain_state_dict_with_wrapper_and_module_prefix(tmp_path):
    state = random_clip_state_dict(TINY_VIT_B_16, seed=1)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    path = tmp_path / "wrapped.pt"
    torch.save(wrapped, path)
    clip = load_clip(ModelSpec(checkpoint=str(path)))
    assert torch.equal(clip.model.visual.proj, state["visual.proj"].float())


def test_model_id_depends_on_weights_not_path(tmp_path):
    state = random_clip_state_dict(TINY_VIT_B_16, seed=2)
    first = save_openai_checkpoint(state, tmp_path / "a.pt", torchscript=False)
    second = save_openai_checkpoint(state, tmp_path / "b.pt", torchscript=False)
    other = save_openai_checkpoint(random_clip_state_dict(TINY_VIT_B_16, seed=3), tmp_path / "c.pt", torchscript=False)
    ids = [load_clip(ModelSpec(checkpoint=str(p))).model_id for p in (first, second, other)]
    assert ids[0] == ids[1] != ids[2]


def test_garbage_file_is_a_format_error(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="garbage.pt"):
        read_checkpoint_state(path)


def test_state_dict_without_clip_keys_is_a_format_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointFormatError, match="vision-transformer"):
        read_checkpoint_state(path)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="nowhere.pt"):
        load_clip(ModelSpec(checkpoint=str(tmp_path / "nowhere.pt")))


def test_no_weights_and_downloads_off_says_how_to_provide_them(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="TAGCLIP_CHECKPOINT"):
        load_clip(ModelSpec(cache_dir=str(tmp_path), allow_download=False))


def test_unreachable_weights_host_fails_fast_with_instructions(tmp_path, monkeypatch):
    """Offline by construction, whatever this machine's network: every connection the loader opens is sent to a
    local port nothing listens on (refused), and a download would fail the test."""
    refused_port = free_local_port()
    attempts = []
    connect = socket.create_connection

    def refused(address, timeout=None, *args, **kwargs):
        attempts.append((address, timeout))
        return connect(("127.0.0.1", refused_port), timeout, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_url", lambda *a, **k: pytest.fail("download"))
    with pytest.raises(WeightsUnavailableError, match="cannot reach .*TAGCLIP_CHECKPOINT"):
        load_clip(ModelSpec(cache_dir=str(tmp_path)))
    weights_host = urlparse(open_clip.get_pretrained_cfg("ViT-B-16", "openai")["url"]).hostname
    # One bounded connection check to the weights host: refused here, it can never hang (a timeout is set).
    assert [address for address, _ in attempts] == [(weights_host, 443)]
    assert 0 < attempts[0][1] <= 10


def free_local_port() -> int:
    """A local TCP port that was free a moment ago: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_weights_in_cache_dir_are_used_without_download(tmp_path):
    target = tmp_path / "weights" / "ViT-B-16.pt"
    save_openai_checkpoint(random_clip_state_dict(TINY_VIT_B_16, seed=0), target)
    clip = load_clip(ModelSpec(cache_dir=str(tmp_path), allow_download=False))
    assert clip.model_id.startswith("ViT-B-16-openai-")


def test_fp16_on_cpu_is_refused(tiny_checkpoint):
    with pytest.raises(UnsupportedModelError, match="CUDA"):
        load_clip(ModelSpec(checkpoint=str(tiny_checkpoint), precision="fp16", device="cpu"))


def test_lower_precision_keeps_float32_weights(tiny_checkpoint):
    clip = load_clip(ModelSpec(checkpoint=str(tiny_checkpoint), precision="bf16", device="cpu"))
    assert clip.dtype == torch.bfloat16
    assert clip.model.visual.proj.dtype == torch.float32


def test_bf16_on_a_cpu_without_native_bf16_warns(caplog):
    """bf16 matmuls are emulated on CPUs without AVX512-BF16/AMX (several times slower than fp32): say so."""
    with caplog.at_level("WARNING", logger="tagclip_core.model"):
        assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
        assert resolve_dtype("fp32", torch.device("cpu")) == torch.float32
    warned = [r for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warned) == (0 if native_cpu_bf16() else 1)
