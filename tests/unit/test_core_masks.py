"""Masks: the neutral run-length form, regions (boxes, polygons, scores), coarse masks, results, EXIF, CRF."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tagclip_core import clipes
from tagclip_core.config import MaskConfig, ModelSpec
from tagclip_core.errors import ClassListError, TagCLIPError
from tagclip_core.geometry import mask_regions, rle_decode, rle_encode
from tagclip_core.masks import MASK_FOREGROUND, Segmenter, coarse_maps, coarse_masks, level_label_map
from tagclip_core.model import load_clip
from tagclip_core.types import ClassSpec, ImagePrediction
from tests.fixtures.images import synthetic_pixels
from tests.fixtures.parity import clipes_stages

pytestmark = pytest.mark.unit

ODD_SIZES = [(1, 1), (1, 7), (7, 1), (3, 5), (37, 53), (75, 100), (101, 67)]


@pytest.mark.parametrize("size", ODD_SIZES)
def test_rle_round_trip_random_masks(size):
    rng = np.random.default_rng(sum(size))
    for density in (0.0, 0.3, 0.9, 1.0):
        mask = rng.random(size) < density
        rle = rle_encode(mask)
        assert sum(rle["counts"]) == size[0] * size[1]
        assert rle["size"] == list(size)
        assert np.array_equal(rle_decode(json.loads(json.dumps(rle))), mask)


def test_rle_is_column_major_starting_with_zeros():
    mask = np.array([[0, 1], [1, 1]], dtype=np.uint8)  # column-major: 0, 1, 1, 1
    assert rle_encode(mask) == {"size": [2, 2], "counts": [1, 3]}
    full = np.ones((2, 3), dtype=bool)
    assert rle_encode(full)["counts"] == [0, 6]
    assert rle_encode(np.zeros((2, 3), dtype=bool))["counts"] == [6]


def test_rle_decode_rejects_wrong_totals():
    with pytest.raises(ValueError, match="sum to 5"):
        rle_decode({"size": [2, 3], "counts": [2, 3]})


def test_mask_regions_boxes_polygons_scores_and_min_area():
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:8, 3:13] = True  # 60 px
    mask[12:14, 20:22] = True  # 4 px
    score = np.zeros((20, 30), dtype=np.float32)
    score[2:8, 3:13] = 0.5
    score[12:14, 20:22] = 1.0
    kept, regions = mask_regions(mask, score, min_area=0, polygon_epsilon=0.005)
    assert np.array_equal(kept, mask)
    assert [r.box for r in regions] == [(3, 2, 10, 6), (20, 12, 2, 2)]
    assert [r.area for r in regions] == [60, 4]
    assert regions[0].score == pytest.approx(0.5) and regions[1].score == pytest.approx(1.0)
    assert sorted(regions[0].polygon) == sorted([(3, 2), (3, 7), (12, 7), (12, 2)])
    kept, regions = mask_regions(mask, score, min_area=5, polygon_epsilon=0.005)
    assert [r.area for r in regions] == [60]
    assert not kept[12:14, 20:22].any() and kept[2:8, 3:13].all()


def test_single_pixel_region_gets_its_box_as_polygon():
    mask = np.zeros((5, 5), dtype=bool)
    mask[2, 3] = True
    _, (region,) = mask_regions(mask, mask.astype(np.float32), 0, 0.005)
    assert region.box == (3, 2, 1, 1)
    assert region.polygon == ((3, 2), (4, 2), (4, 3), (3, 3))


def test_polygons_are_simplified_relative_to_perimeter():
    yy, xx = np.mgrid[0:200, 0:200]
    disc = (yy - 100) ** 2 + (xx - 100) ** 2 < 80**2
    _, (fine,) = mask_regions(disc, disc.astype(np.float32), 0, 0.001)
    _, (coarse,) = mask_regions(disc, disc.astype(np.float32), 0, 0.02)
    assert 3 <= len(coarse.polygon) < len(fine.polygon)


def _prediction(maps: np.ndarray, labels: tuple[str, ...], size: tuple[int, int]) -> ImagePrediction:
    return ImagePrediction(
        labels=labels,
        scores=np.zeros(len(labels), np.float32),
        tags=labels,
        candidates=(),
        patch_scores=maps.astype(np.float32),
        input_size=(maps.shape[1] * 16, maps.shape[2] * 16),
        original_size=size,
    )


def test_coarse_maps_minmax_then_bilinear():
    maps = np.array([[[1.0, 3.0], [2.0, 5.0]]], dtype=np.float32)
    got = coarse_maps(maps, (2, 2), 1e-7)
    np.testing.assert_allclose(got[0].astype(np.float32), [[0, 0.5], [0.25, 1]], atol=1e-3)
    assert got.dtype == np.float16 and coarse_maps(maps, (9, 13), 1e-7).shape == (1, 9, 13)


def test_level_label_map_ties():
    cams = np.array([[[0.5, 0.6, 0.7]], [[0.4, 0.6, 0.8]]], dtype=np.float16)
    assert level_label_map(cams, 0.5).tolist() == [[0, 1, 2]]


def test_coarse_masks_from_prediction():
    maps = np.zeros((3, 4, 6), dtype=np.float32)
    maps[0, :2, :3] = 1.0  # "cat" top-left
    maps[1, 2:, 3:] = 1.0  # "dog" bottom-right
    maps[2] = 0.3  # "car" flat: min-max gives 0 everywhere
    prediction = _prediction(maps, ("cat", "dog", "car"), (64, 96))
    result = coarse_masks(prediction, ["dog", "cat"], MaskConfig())
    assert result.mode == "coarse" and result.labels == ("dog", "cat")
    assert result.cams.shape == (2, 64, 96) and result.label_map.shape == (64, 96)
    dog, cat = result.masks
    assert dog.mask.dtype == np.uint8 and set(np.unique(dog.mask)) == {0, MASK_FOREGROUND}
    assert dog.mask[-1, -1] == MASK_FOREGROUND and cat.mask[0, 0] == MASK_FOREGROUND
    assert result.label_map[0, 0] == 2 and result.label_map[-1, -1] == 1 and result.label_map[0, -1] == 0
    assert len(dog.regions) == 1 and dog.regions[0].box[0] > 40 and 0.5 < dog.score <= 1
    payload = json.loads(json.dumps(result.to_json()))
    assert payload["width"] == 96 and payload["height"] == 64
    assert np.array_equal(rle_decode(payload["masks"][0]["rle"]), dog.mask > 0)
    with pytest.raises(ClassListError, match="bird"):
        coarse_masks(prediction, ["bird"])
    assert coarse_masks(prediction, []).masks == ()


def test_coarse_masks_on_a_real_prediction(tiny_engine):
    image = Image.fromarray(synthetic_pixels(150, 100, 3))
    prediction = tiny_engine.predict([image])[0]
    result = coarse_masks(prediction, prediction.tags)
    rows = [prediction.labels.index(tag) for tag in prediction.tags]
    expected = coarse_maps(prediction.patch_scores[rows], (150, 100), MaskConfig().minmax_eps)
    assert np.array_equal(result.cams, expected)
    assert np.array_equal(result.label_map, level_label_map(expected, MaskConfig().coarse_background))
    assert_masks_are_the_label_map(result)


def assert_masks_are_the_label_map(result) -> None:
    """With no minimum region area, tag k's mask is exactly where the label map says k, at 255."""
    assert len(result.masks) == len(result.labels)
    for index, tag in enumerate(result.masks):
        assert np.array_equal(tag.mask, (result.label_map == index + 1).astype(np.uint8) * MASK_FOREGROUND)


@pytest.fixture(scope="module")
def segmenter(tiny_checkpoint, tmp_path_factory) -> Segmenter:
    clip = load_clip(ModelSpec(checkpoint=str(tiny_checkpoint)))
    return Segmenter(clip, MaskConfig(min_region_area=3), text_cache_dir=tmp_path_factory.mktemp("text"))


def test_clip_es_masks_follow_the_label_map(segmenter):
    image = Image.fromarray(synthetic_pixels(96, 128, 5))
    specs = [ClassSpec("cat"), ClassSpec("person", ("person with clothes", "people", "human"))]
    result = segmenter.segment(image, specs)
    assert result.mode == "clip-es" and result.labels == ("cat", "person")
    # The maps are the refined CAMs of the pipeline's steps, min-max normalised, upsampled, in float16.
    stages = clipes_stages(segmenter, image, specs)
    refined = clipes.minmax(torch.from_numpy(stages.refined), segmenter.config.minmax_eps)
    expected = clipes.upsample_cams(refined, stages.grid, (96, 128)).astype(np.float16)
    assert result.cams.dtype == np.float16 and np.array_equal(result.cams, expected)
    assert np.array_equal(result.label_map, clipes.label_map(expected))
    for index, mask in enumerate(result.masks):
        inside = result.label_map == index + 1
        assert not (mask.mask.astype(bool) & ~inside).any()  # small regions may be dropped, nothing added
        assert all(region.area >= 3 for region in mask.regions)
    json.dumps(result.to_json())


def test_exif_orientation_is_applied(segmenter):
    image = Image.fromarray(synthetic_pixels(40, 70, 9))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    stored = Image.open(io.BytesIO(buffer.getvalue()))
    result = segmenter.segment(stored, ["cat"])
    assert result.original_size == (70, 40) and result.cams.shape == (1, 70, 40)


def test_segment_without_tags_and_mode_errors(segmenter):
    image = Image.fromarray(synthetic_pixels(32, 48, 1))
    empty = segmenter.segment(image, [])
    assert empty.masks == () and empty.label_map.shape == (32, 48)
    with pytest.raises(TagCLIPError, match="prediction"):
        segmenter.segment(image, ["cat"], mode="coarse")
    with pytest.raises(TagCLIPError, match="mask mode"):
        segmenter.segment(image, ["cat"], mode="grabcut")


def test_crf_post_processing_when_installed():
    pytest.importorskip("pydensecrf.densecrf")
    maps = np.zeros((2, 4, 6), dtype=np.float32)
    maps[0, :, :3] = 1.0
    maps[1, :, 3:] = 1.0
    prediction = _prediction(maps, ("left", "right"), (32, 48))
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    image[:, 24:] = 255
    result = coarse_masks(prediction, ["left", "right"], MaskConfig(crf=True), image=image)
    assert result.label_map[16, 2] == 1 and result.label_map[16, 45] == 2


def test_crf_needs_the_image():
    prediction = _prediction(np.ones((1, 2, 2), np.float32), ("a",), (8, 8))
    with pytest.raises(TagCLIPError, match="needs the image"):
        coarse_masks(prediction, ["a"], MaskConfig(crf=True))


def test_clip_es_works_under_inference_mode(segmenter):
    """A worker may wrap everything in torch.inference_mode(); the Grad-CAM step must still get its gradients."""
    image = Image.fromarray(synthetic_pixels(48, 64, 11))
    expected = segmenter.segment(image, ["cat", "dog"])
    with torch.inference_mode():
        got = segmenter.segment(image, ["cat", "dog"])
    assert np.array_equal(got.cams, expected.cams) and np.array_equal(got.label_map, expected.label_map)
