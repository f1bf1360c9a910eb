"""CUDA checks (skipped without a GPU): the fp32 GPU path equals the CPU path, batching keeps results, and
half precision runs. Run on a lent GPU with `scripts/test.sh tests/gpu`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tagclip_core import EngineConfig, ModelSpec, TagCLIP
from tests.conftest import VOC_CLASSES
from tests.fixtures.images import synthetic_pixels
from tests.fixtures.noise import autocast_perturbation, perturbed_clips
from tests.fixtures.parity import prediction_mismatches

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
IMAGES = [Image.fromarray(synthetic_pixels(375, 500, seed)) for seed in range(6)] + [
    Image.fromarray(synthetic_pixels(224, 224, 9))
]


def _engine(checkpoint, cache, device: str, precision: str = "fp32", batch: int = 16) -> TagCLIP:
    spec = ModelSpec(checkpoint=str(checkpoint), cache_dir=str(cache), device=device, precision=precision)
    engine = TagCLIP.load(spec, EngineConfig(gpu_batch_size=batch))
    engine.set_classes(VOC_CLASSES, background="voc")
    return engine


def test_cuda_fp32_equals_cpu(tiny_checkpoint, tmp_path):
    cpu = _engine(tiny_checkpoint, tmp_path, "cpu").predict(IMAGES)
    gpu = _engine(tiny_checkpoint, tmp_path, "cuda").predict(IMAGES)
    for a, b in zip(cpu, gpu, strict=True):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4, rtol=0)
        assert a.tags == b.tags


def test_cuda_batches_equal_single_images(tiny_checkpoint, tmp_path):
    batched = _engine(tiny_checkpoint, tmp_path, "cuda", batch=16).predict(IMAGES)
    single = _engine(tiny_checkpoint, tmp_path, "cuda", batch=1).predict(IMAGES)
    for a, b in zip(batched, single, strict=True):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_runs_close_to_fp32(tiny_checkpoint, tmp_path, precision):
    """Scores within the fp32 engine's response to the half precision's operand rounding, and the same tags
    wherever that cannot flip them (tests/fixtures/noise.py)."""
    exact = _engine(tiny_checkpoint, tmp_path, "cuda")
    reference = exact.predict(IMAGES)
    half = _engine(tiny_checkpoint, tmp_path, "cuda", precision=precision).predict(IMAGES)
    worst = max(float(np.abs(a.scores - b.scores).max()) for a, b in zip(reference, half, strict=True))
    print(f"{precision}: max |score - fp32 score| = {worst:.2e}")
    assert all(np.isfinite(p.scores).all() for p in half)
    shifted = []
    for clip in perturbed_clips(exact.clip, autocast_perturbation(PRECISIONS[precision])):
        engine = TagCLIP(clip, EngineConfig(gpu_batch_size=16))
        engine.set_classes(VOC_CLASSES, background="voc")
        shifted.append(engine.predict(IMAGES))
    rel = exact.config.tagclip.tag_rel_threshold
    assert prediction_mismatches(reference, half, shifted, rel) == []
