"""Shared fixtures: a tiny random-weight CLIP checkpoint in OpenAI's format, loaded through the real path.
Hooks: every test carries the marker of its folder; under scripts/test.sh the programs the selected tests need
are installed once they are collected (tests/fixtures/components.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from tagclip_core.config import ModelSpec
from tagclip_core.prompts import VOC_CLASSES
from tagclip_core.random_weights import TINY_VIT_B_16, write_random_checkpoint

__all__ = ["VOC_CLASSES"]

# tests/<folder>/ -> the marker each of its tests must carry (so `-m unit` selects exactly tests/unit).
FOLDER_MARKERS = {"unit": "unit", "integration": "integration", "gpu": "gpu"}


def pytest_collection_modifyitems(config, items) -> None:
    """Refuse a test without its folder's marker: `-m` selections and the provisioning depend on them."""
    tests_dir = Path(__file__).resolve().parent
    unmarked = set()
    for item in items:
        folder = item.path.resolve().relative_to(tests_dir).parts[0]
        marker = FOLDER_MARKERS.get(folder)
        if marker and item.get_closest_marker(marker) is None:
            unmarked.add(f"{item.path.relative_to(tests_dir.parent)} (needs pytest.mark.{marker})")
    if unmarked:
        raise pytest.UsageError("test modules without their folder's marker: " + ", ".join(sorted(unmarked)))


def pytest_collection_finish(session) -> None:
    """Under scripts/test.sh, install the programs the selected tests need (nothing for a unit-test run)."""
    from tests.fixtures.components import PROVISION_SCRIPT, needed_components, provisioned

    if not provisioned() or session.config.option.collectonly:
        return
    needed = needed_components([item.fixturenames for item in session.items])
    if needed and subprocess.run(["bash", str(PROVISION_SCRIPT), *needed]).returncode != 0:
        pytest.exit(f"scripts/provision.sh {' '.join(needed)} failed", returncode=pytest.ExitCode.INTERNAL_ERROR)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """OpenAI-format TorchScript archive of a seeded random CLIP (12 blocks, patch 16, narrow width)."""
    return write_random_checkpoint(tmp_path_factory.mktemp("weights") / "tiny-ViT-B-16.pt", TINY_VIT_B_16, seed=0)


@pytest.fixture(scope="session")
def sharp_checkpoint(tmp_path_factory) -> Path:
    """The tiny checkpoint with every visual query/key projection x8 (the sharp CLIP-ES golden's weights)."""
    from tests.fixtures.parity import sharpened_checkpoint

    return sharpened_checkpoint(tmp_path_factory.mktemp("weights") / "tiny-sharp8.pt", 8)


@pytest.fixture(scope="session")
def tagclip_clips(tiny_checkpoint) -> list:
    """The tiny CLIP, then perturbed copies that measure the float32 noise of the TagCLIP golden's forwards."""
    from tagclip_core.model import load_clip
    from tests.fixtures.noise import float32_perturbation, perturbed_clips
    from tests.fixtures.parity import TAGCLIP_GOLDEN, load_golden, max_tokens

    clip = load_clip(ModelSpec(checkpoint=str(tiny_checkpoint)))
    sizes = [entry["input_size"] for entry in load_golden(TAGCLIP_GOLDEN)["images"]]
    return [clip, *perturbed_clips(clip, float32_perturbation(clip, max_tokens(sizes, clip.patch_size)))]


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def torch_threads(request) -> int:
    """Run the test with 1, then 2 torch threads: another float reduction order, as another CPU would use."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint, tmp_path_factory):
    """A TagCLIP engine on the tiny checkpoint with the 20 VOC classes and VOC background words."""
    from tagclip_core import TagCLIP

    engine = TagCLIP.load(ModelSpec(checkpoint=str(tiny_checkpoint), cache_dir=str(tmp_path_factory.mktemp("cache"))))
    engine.set_classes(VOC_CLASSES, background="voc")
    return engine


@pytest.fixture(scope="module")
def tiny_settings(tiny_checkpoint, tmp_path_factory):
    """Backend/worker settings that load the tiny checkpoint on the CPU, offline, with a cache of their own."""
    from backend.settings import Settings

    return Settings(
        checkpoint=str(tiny_checkpoint),
        cache_dir=str(tmp_path_factory.mktemp("cache")),
        device="cpu",
        allow_download=False,
        predict_timeout=60,
        allowed_image_hosts="127.0.0.1",  # the tests' image servers listen there
    )


@pytest.fixture(scope="module")
def tiny_runtime(tiny_settings):
    """A worker Runtime (the engine loaded once, as `tagclip worker` does) on the tiny checkpoint."""
    from worker.runtime import Runtime

    runtime = Runtime.load(tiny_settings, name="test")
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def tiny_client(tiny_settings):
    """A Flask test client of the backend in embedded mode (the engine in-process) on the tiny checkpoint."""
    from backend.web.app import create_app

    app = create_app(tiny_settings)
    yield app.test_client()
    app.extensions["tagclip"].dispatcher.close()
