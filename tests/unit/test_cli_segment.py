"""`tagclip segment`: per image an .npz (float32 maps, label map, labels) and a PNG overlay, both modes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tagclip_cli.main import COMMANDS, Command, main
from tagclip_core import ClassSpec, ModelSpec, TagCLIP
from tagclip_core.config import MaskConfig
from tagclip_core.masks import Segmenter
from tagclip_core.model import load_clip
from tests.fixtures.images import synthetic_pixels

pytestmark = pytest.mark.unit

SEGMENT = Command("segment", "tagclip_cli.segment", "masks for each image's tags")
COMMANDS_WITH_SEGMENT = COMMANDS if any(c.name == "segment" for c in COMMANDS) else (*COMMANDS, SEGMENT)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(synthetic_pixels(75, 100, 2)).save(folder / "a.png")
    Image.fromarray(synthetic_pixels(37, 53, 4)).save(folder / "b.png")
    return folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def segment(args: list[str], capsys) -> tuple[int, list[dict]]:
    status = main(["segment", *args], COMMANDS_WITH_SEGMENT)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    return status, lines


@pytest.mark.parametrize("mode", ["clip-es", "coarse"])
def test_segment_given_tags(mode, images, tiny_checkpoint, cache, tmp_path, capsys):
    status, records = segment(
        [str(images), "--labels", "cat,dog", "--tags", "dog,person", "--mode", mode, "--background", "none",
         "--checkpoint", str(tiny_checkpoint), "--cache-dir", str(cache), "--offline", "--out", str(tmp_path / "out")],
        capsys,
    )  # fmt: skip
    assert status == 0 and [r["error"] for r in records] == [None, None]
    assert [r["tags"] for r in records] == [["dog", "person"]] * 2
    data = np.load(tmp_path / "out" / "a.npz")
    assert data["labels"].tolist() == ["dog", "person"] and str(data["mode"]) == mode
    # The very maps and label map the engine API gives (same computation, same process: equal bit for bit).
    expected = engine_masks(tiny_checkpoint, Image.open(images / "a.png"), mode)
    assert data["cams"].dtype == np.float32 and np.array_equal(data["cams"], expected.cams.astype(np.float32))
    assert np.array_equal(data["label_map"], expected.label_map)
    with Image.open(tmp_path / "out" / "b.png") as overlay:
        assert overlay.size == (53, 37) and overlay.mode == "RGB"


def engine_masks(checkpoint, image: Image.Image, mode: str):
    """What tagclip_core gives for `segment --labels cat,dog --tags dog,person --background none`: the classifier
    knows cat, dog and person (a tag outside the labels becomes a class), the masks are dog's and person's."""
    clip = load_clip(ModelSpec(checkpoint=str(checkpoint)))
    specs = [ClassSpec("dog"), ClassSpec("person")]
    segmenter = Segmenter(clip, MaskConfig(mode=mode, background="none"))
    if mode == "clip-es":
        return segmenter.segment(image, specs)
    engine = TagCLIP(clip)
    engine.set_classes(["cat", "dog", "person"], background="none")
    return segmenter.segment(image, specs, mode="coarse", prediction=engine.predict([image])[0])


def test_segment_tags_from_the_classifier(images, tiny_checkpoint, cache, tmp_path, capsys):
    status, records = segment(
        [str(images / "a.png"), "--labels", "cat,dog,person: person with clothes, people, human", "--checkpoint",
         str(tiny_checkpoint), "--cache-dir", str(cache), "--offline", "--out", str(tmp_path / "out")],
        capsys,
    )  # fmt: skip
    assert status == 0 and records[0]["error"] is None and records[0]["tags"]
    assert set(records[0]["tags"]) <= {"cat", "dog", "person"}
    data = np.load(tmp_path / "out" / "a.npz")
    assert data["labels"].tolist() == records[0]["tags"]


def test_segment_usage_errors(images, tmp_path, capsys):
    status = main(
        ["segment", str(images), "--labels", "cat", "--tags", " , ", "--out", str(tmp_path)], COMMANDS_WITH_SEGMENT
    )
    assert status == 2 and "--tags names no tag" in capsys.readouterr().err


def test_every_input_gets_its_own_output_name(tiny_checkpoint, cache, tmp_path, capsys):
    """Same file name in two folders, and names that differ only after a dot (img.001 / img.002): four inputs,
    four .npz and four overlays, each record naming its own files."""
    for folder, name, seed in (
        ("a", "img.jpg", 1),
        ("b", "img.jpg", 2),
        ("c", "img.001.jpg", 3),
        ("c", "img.002.jpg", 4),
    ):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.fromarray(synthetic_pixels(30, 40, seed)).save(tmp_path / folder / name)
    inputs = [str(tmp_path / p) for p in ("a/img.jpg", "b/img.jpg", "c/img.001.jpg", "c/img.002.jpg")]
    status, records = segment(
        [*inputs, "--labels", "cat", "--tags", "cat", "--mode", "coarse", "--background", "none", "--checkpoint",
         str(tiny_checkpoint), "--cache-dir", str(cache), "--offline", "--out", str(tmp_path / "out")],
        capsys,
    )  # fmt: skip
    assert status == 0 and [r["error"] for r in records] == [None] * 4
    npz = [r["npz"] for r in records]
    assert [p.rsplit("/", 1)[-1] for p in npz] == ["img.npz", "img-2.npz", "img.001.npz", "img.002.npz"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [f"{stem}.{ext}" for stem in ("img", "img-2", "img.001", "img.002") for ext in ("npz", "png")]
    )
    assert len({np.load(p)["cams"].tobytes() for p in npz}) == 4  # each file holds its own image's maps
