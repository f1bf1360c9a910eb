"""The parity checks still bite: with a deliberate mistake in the engine, the very checks the parity tests run
(tests/fixtures/parity.py) report mismatches. Each mistake is small and plausible: a config value one step off,
or one step of the algorithm left out (monkeypatched into the engine for the length of the test)."""

from __future__ import annotations

import pytest

import tagclip_core.predictor as predictor_module
from tagclip_core import EngineConfig, ModelSpec, TagCLIPConfig
from tagclip_core.config import MaskConfig
from tagclip_core.masks import Segmenter
from tagclip_core.model import load_clip
from tests.fixtures.images import write_parity_images
from tests.fixtures.parity import TAGCLIP_GOLDEN, ClipesParity, TagclipParity, load_golden, tagclip_golden_image

pytestmark = pytest.mark.unit

CLIPES_GOLDENS = {"plain": "clipes_tiny_seed0.json", "sharp": "clipes_tiny_seed0_sharp8.json"}
CLIPES_MISTAKES = {
    "one Sinkhorn round after the first instead of two": MaskConfig(affinity_norm_passes=2),
    "box threshold 0.5 instead of 0.4": MaskConfig(box_threshold=0.5),
    "min-max eps 1e-8 instead of 1e-7": MaskConfig(minmax_eps=1e-8),
    "affinity not squared": MaskConfig(affinity_squarings=0),
    "boxes not clipped at the right/bottom edge": MaskConfig(clip_box_edges=False),
    "affinity from blocks 3..10 instead of 4..10": MaskConfig(affinity_layer_start=-9),
}


def dmar_without_class_boxes(coarse, attention, grid, clip_edges):
    """DMAR's box-masked second refinement dropped: only A @ P_coarse."""
    return attention @ coarse


def no_dmar(coarse, attention, grid, clip_edges):
    """No attention refinement at all: the coarse patch probabilities themselves."""
    return coarse


TAGCLIP_MISTAKES = {
    "DMAR's class-box refinement dropped": (EngineConfig(), dmar_without_class_boxes),
    "DMAR dropped": (EngineConfig(), no_dmar),
    "3 votes instead of 4": (EngineConfig(tagclip=TagCLIPConfig(vote_min_layers=3)), None),
    "refinement from block 7 instead of 8": (EngineConfig(tagclip=TagCLIPConfig(refine_layer_start=7)), None),
    "CWR fusion weight 0.4 instead of 0.5": (EngineConfig(tagclip=TagCLIPConfig(cwr_fusion_weight=0.4)), None),
    "DMAR boxes not clipped at the edge": (EngineConfig(tagclip=TagCLIPConfig(dmar_clip_box_edges=False)), None),
}


@pytest.fixture(scope="module")
def parity_paths(tmp_path_factory):
    return {p.stem: p for p in write_parity_images(tmp_path_factory.mktemp("parity"))}


@pytest.fixture(scope="module")
def clipes_clips(tiny_checkpoint, sharp_checkpoint) -> dict:
    return {
        "plain": load_clip(ModelSpec(checkpoint=str(tiny_checkpoint))),
        "sharp": load_clip(ModelSpec(checkpoint=str(sharp_checkpoint))),
    }


def clipes_mismatches(clips: dict, config: MaskConfig, paths) -> list[str]:
    """What the CLIP-ES parity tests would report, both goldens, for a segmenter with this config."""
    found = []
    for name, golden_name in CLIPES_GOLDENS.items():
        parity = ClipesParity(Segmenter(clips[name], config), load_golden(golden_name))
        found += parity.golden_mismatches(paths)
    return found


def tagclip_mismatches(clips: list, config: EngineConfig, text_cache) -> list[str]:
    """What the TagCLIP parity tests would report (final scores, tags, candidates) for an engine with this config."""
    golden = load_golden(TAGCLIP_GOLDEN)
    parity = TagclipParity(clips, config, golden, text_cache)
    return [m for entry in golden["images"] for m in parity.mismatches(tagclip_golden_image(entry), entry)]


def test_the_checks_pass_on_the_engine_as_it_is(clipes_clips, tagclip_clips, parity_paths, tmp_path):
    """The control: without a mistake the same calls find nothing (so the failures below come from the mistakes)."""
    assert clipes_mismatches(clipes_clips, MaskConfig(), parity_paths) == []
    assert tagclip_mismatches(tagclip_clips, EngineConfig(), tmp_path) == []


@pytest.mark.parametrize("mistake", CLIPES_MISTAKES)
def test_clipes_parity_catches(mistake, clipes_clips, parity_paths):
    found = clipes_mismatches(clipes_clips, CLIPES_MISTAKES[mistake], parity_paths)
    assert found, f"the CLIP-ES parity checks pass with {mistake}"


@pytest.mark.parametrize("mistake", TAGCLIP_MISTAKES)
def test_tagclip_parity_catches(mistake, tagclip_clips, tmp_path_factory, monkeypatch):
    config, dmar = TAGCLIP_MISTAKES[mistake]
    if dmar is not None:
        monkeypatch.setattr(predictor_module, "dmar", dmar)
    found = tagclip_mismatches(tagclip_clips, config, tmp_path_factory.getbasetemp() / "bites-text")
    assert found, f"the TagCLIP parity checks pass with {mistake}"
