"""Parity with the authors' code: golden numbers from linyq2117/TagCLIP run on the same random checkpoint.

tests/fixtures/golden/README.md says how they were made. Same weights, same images: per-class final scores
within 1e-4, identical tags, identical CWR candidate lists (the reference's early-return quirk included).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tagclip_core import EngineConfig, ModelSpec, TagCLIP, TagCLIPConfig
from tagclip_core.random_weights import TINY_VIT_B_16, random_clip_state_dict
from tests.conftest import VOC_CLASSES
from tests.fixtures.images import PARITY_IMAGES, render, synthetic_pixels

pytestmark = pytest.mark.unit

GOLDEN = json.loads((Path(__file__).parents[1] / "fixtures" / "golden" / "tagclip_voc_tiny_seed0.json").read_text())
SCORE_TOLERANCE = 1e-4
SPECS = {spec.name: spec for spec in PARITY_IMAGES}


def _golden_image(entry: dict) -> Image.Image:
    if entry["name"] in SPECS:
        return render(SPECS[entry["name"]])
    generator = entry["generator"]
    return Image.fromarray(synthetic_pixels(generator["height"], generator["width"], generator["seed"], 3))


def test_checkpoint_recipe_still_gives_the_golden_weights():
    state = random_clip_state_dict(TINY_VIT_B_16, seed=GOLDEN["checkpoint"]["seed"])
    digest = hashlib.sha256(b"".join(state[k].float().numpy().tobytes() for k in sorted(state))).hexdigest()
    assert digest == GOLDEN["checkpoint"]["state_dict_sha256"], "the random checkpoint changed: regenerate goldens"


def test_text_classifier_matches_reference(tiny_engine):
    assert list(tiny_engine.labels) == GOLDEN["classes"]
    assert list(tiny_engine._classes.background) == GOLDEN["background"]
    expected = torch.tensor(GOLDEN["text_features"])
    torch.testing.assert_close(tiny_engine._classes.text, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("entry", GOLDEN["images"], ids=[e["name"] for e in GOLDEN["images"]])
def test_scores_tags_and_candidates_match_reference(tiny_engine, entry):
    prediction = tiny_engine.predict([_golden_image(entry)])[0]
    labels = GOLDEN["classes"]
    assert list(prediction.input_size) == entry["input_size"]
    np.testing.assert_allclose(
        prediction.scores, np.array(entry["scores"], dtype=np.float32), atol=SCORE_TOLERANCE, rtol=0
    )
    assert list(prediction.tags) == [labels[i] for i in entry["tags"]]
    assert list(prediction.candidates) == [labels[i] for i in sorted(entry["candidates"])]


@pytest.fixture(scope="module")
def local_engine(tiny_checkpoint, tmp_path_factory):
    """The engine with CWR off: its scores are the DMAR local scores (P_local)."""
    spec = ModelSpec(checkpoint=str(tiny_checkpoint), cache_dir=str(tmp_path_factory.mktemp("local-cache")))
    engine = TagCLIP.load(spec, EngineConfig(tagclip=TagCLIPConfig(use_cwr=False)))
    engine.set_classes(VOC_CLASSES, background="voc")
    return engine


@pytest.mark.parametrize("entry", GOLDEN["images"], ids=[e["name"] for e in GOLDEN["images"]])
def test_local_scores_before_cwr_match_reference(local_engine, entry):
    prediction = local_engine.predict([_golden_image(entry)])[0]
    expected = np.array(entry["local_scores"], dtype=np.float32)
    np.testing.assert_allclose(prediction.scores, expected, atol=SCORE_TOLERANCE, rtol=0)
