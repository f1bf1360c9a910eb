"""Parity with the authors' code: golden numbers from linyq2117/TagCLIP run on the same random checkpoint.

tests/fixtures/golden/README.md says how they were made. Same weights, same images: text classifier, per-class
final scores (and DMAR local scores with CWR off), tags and CWR candidate lists (the reference's early-return
quirk included).

Tolerances (tests/fixtures/parity.py, tests/fixtures/noise.py) follow from the numbers compared: the engine is
rerun with every weight perturbed by the backward error of one float32 reduction order (sqrt(n) * 2**-24) and
an image's scores may differ by 4x their largest move (about 1e-6 here). A tag or a CWR candidate is compared
where the golden score is farther than twice that from its threshold, and must then be the same. Every check
runs with 1 and with 2 torch threads; tests/unit/test_core_parity_bites.py shows the same checks fail on deliberate
mistakes.
"""

from __future__ import annotations

import hashlib

import pytest

from tagclip_core import EngineConfig, TagCLIPConfig
from tagclip_core.random_weights import TINY_VIT_B_16, random_clip_state_dict
from tests.conftest import VOC_CLASSES
from tests.fixtures.parity import TAGCLIP_GOLDEN, TagclipParity, load_golden, tagclip_golden_image

pytestmark = pytest.mark.unit

GOLDEN = load_golden(TAGCLIP_GOLDEN)


@pytest.fixture(scope="module")
def parity(tagclip_clips, tmp_path_factory) -> TagclipParity:
    return TagclipParity(tagclip_clips, EngineConfig(), GOLDEN, tmp_path_factory.mktemp("text"))


@pytest.fixture(scope="module")
def local_parity(tagclip_clips, tmp_path_factory) -> TagclipParity:
    """The engine with CWR off: its scores are the DMAR local scores (P_local)."""
    config = EngineConfig(tagclip=TagCLIPConfig(use_cwr=False))
    return TagclipParity(tagclip_clips, config, GOLDEN, tmp_path_factory.mktemp("text"))


def test_checkpoint_recipe_still_gives_the_golden_weights():
    state = random_clip_state_dict(TINY_VIT_B_16, seed=GOLDEN["checkpoint"]["seed"])
    digest = hashlib.sha256(b"".join(state[k].float().numpy().tobytes() for k in sorted(state))).hexdigest()
    assert digest == GOLDEN["checkpoint"]["state_dict_sha256"], "the random checkpoint changed: regenerate goldens"


def test_classes_and_background_words_are_the_reference_ones(tiny_engine):
    assert list(tiny_engine.labels) == GOLDEN["classes"] == list(VOC_CLASSES)
    assert list(tiny_engine._classes.background) == GOLDEN["background"]


def test_text_classifier_matches_reference(parity):
    assert parity.text_mismatches() == []


@pytest.mark.parametrize("entry", GOLDEN["images"], ids=[e["name"] for e in GOLDEN["images"]])
def test_scores_tags_and_candidates_match_reference(parity, entry, torch_threads):
    assert parity.mismatches(tagclip_golden_image(entry), entry) == []


@pytest.mark.parametrize("entry", GOLDEN["images"], ids=[e["name"] for e in GOLDEN["images"]])
def test_local_scores_before_cwr_match_reference(local_parity, entry, torch_threads):
    assert local_parity.mismatches(tagclip_golden_image(entry), entry) == []
