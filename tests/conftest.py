"""Shared fixtures: a tiny random-weight CLIP checkpoint in OpenAI's format, loaded through the real path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tagclip_core.prompts import VOC_CLASSES
from tagclip_core.random_weights import TINY_VIT_B_16, write_random_checkpoint

__all__ = ["VOC_CLASSES"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """OpenAI-format TorchScript archive of a seeded random CLIP (12 blocks, patch 16, narrow width)."""
    return write_random_checkpoint(tmp_path_factory.mktemp("weights") / "tiny-ViT-B-16.pt", TINY_VIT_B_16, seed=0)


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint, tmp_path_factory):
    """A TagCLIP engine on the tiny checkpoint with the 20 VOC classes and VOC background words."""
    from tagclip_core import ModelSpec, TagCLIP

    engine = TagCLIP.load(ModelSpec(checkpoint=str(tiny_checkpoint), cache_dir=str(tmp_path_factory.mktemp("cache"))))
    engine.set_classes(VOC_CLASSES, background="voc")
    return engine
