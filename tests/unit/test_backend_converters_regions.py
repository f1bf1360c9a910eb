"""Region converters (BrushLabels, RectangleLabels, PolygonLabels): pure functions of the worker's plain JSON,
checked with label-studio-sdk's own decoder and validator. No model, no torch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.label_interface import LabelInterface

from backend.converters.brush import BrushLabelsConverter, brush_rle
from backend.converters.polygon import PolygonLabelsConverter
from backend.converters.rectangle import RectangleLabelsConverter
from backend.converters.regions import MaskDefaults, MaskOutput, RegionPlan
from backend.errors import LabelConfigError
from tagclip_core.geometry import rle_decode, rle_encode

pytestmark = pytest.mark.unit

CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <Choices name="tags" toName="image" choice="multiple">
    <Choice value="Cat" predicted_values="cat,kitty"/><Choice value="Dog"/><Choice value="Car"/>
  </Choices>
  <BrushLabels name="mask" toName="image" model_mask_mode="clip-es" model_min_region_area="5">
    <Label value="Cat" predicted_values="cat,kitty"/><Label value="Dog"/><Label value="Car"/>
  </BrushLabels>
  <RectangleLabels name="box" toName="image">
    <Label value="Cat"/><Label value="Dog" alias="D"/><Label value="Car"/>
  </RectangleLabels>
  <PolygonLabels name="poly" toName="image" model_masks="true">
    <Label value="Cat"/><Label value="Dog"/><Label value="Car"/>
  </PolygonLabels>
</View>
"""
WIDTH, HEIGHT = 101, 67


def neutral_rle(mask: np.ndarray) -> dict:
    """The neutral form written independently of tagclip_core: column-major runs starting with zeros."""
    flat = mask.ravel(order="F").astype(bool)
    counts, current, run = [], False, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def worker_output(tags=("Cat", "Dog"), dog="Dog") -> dict:
    """What the worker sends for a region control; labels are the plan's (a label's alias when it has one)."""
    cat = np.zeros((HEIGHT, WIDTH), dtype=bool)
    cat[10:30, 20:50] = True
    cat[50:52, 90:92] = True  # a 4-pixel speck
    dog_mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    dog_mask[40:66, 0:30] = True
    masks = {
        "mode": "clip-es",
        "width": WIDTH,
        "height": HEIGHT,
        "masks": [
            {
                "label": "Cat",
                "score": 0.8,
                "rle": neutral_rle(cat),
                "regions": [
                    {
                        "bbox": [20, 10, 30, 20],
                        "polygon": [[20, 10], [20, 29], [49, 29], [49, 10]],
                        "area": 600,
                        "score": 0.81,
                    },
                    {
                        "bbox": [90, 50, 2, 2],
                        "polygon": [[90, 50], [92, 50], [92, 52], [90, 52]],
                        "area": 4,
                        "score": 0.4,
                    },
                ],
            },
            {
                "label": dog,
                "score": 0.7,
                "rle": neutral_rle(dog_mask),
                "regions": [
                    {
                        "bbox": [0, 40, 30, 26],
                        "polygon": [[0, 40], [0, 65], [29, 65], [29, 40]],
                        "area": 780,
                        "score": 0.7,
                    }
                ],
            },
        ],
    }
    tags = [dog if t == "Dog" else t for t in tags]
    return {"labels": ["Cat", dog, "Car"], "scores": [0.9, 0.6, 0.1], "tags": tags, "masks": masks}


@pytest.fixture(scope="module")
def interface() -> LabelInterface:
    return LabelInterface(CONFIG)


def plan_for(interface: LabelInterface, name: str, converter, threshold=None) -> RegionPlan:
    control = interface.get_control(name)
    assert converter.match(control, ["image"]) is None
    planned = converter.plan(control, {"image": "image"}, CONFIG, threshold)
    assert isinstance(planned, RegionPlan)
    return planned


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (37, 53), (67, 101), (75, 100), (120, 97)])
def test_brush_rle_round_trips_odd_sizes(size):
    rng = np.random.default_rng(size[0] * 1000 + size[1])
    mask = rng.random(size) < 0.4
    mask[: size[0] // 2, : size[1] // 2] = True
    rle = brush_rle(mask)
    decoded = decode_rle(rle).reshape(size[0], size[1], 4)[:, :, 3]
    assert np.array_equal(decoded, np.where(mask, 255, 0))
    assert np.array_equal(rle_decode(neutral_rle(mask)), mask)


def test_brush_regions(interface):
    converter = BrushLabelsConverter()
    plan = plan_for(interface, "mask", converter)
    assert plan.mode == "clip-es" and plan.min_region_area == 5
    assert plan.to_payload()["masks"] == {"mode": "clip-es", "min_region_area": 5, "threshold": None}
    assert plan.classes[0].prompts == ("cat", "kitty")
    output = worker_output()
    regions = converter.to_regions(output, plan)
    assert [r["value"]["brushlabels"] for r in regions] == [["Cat"], ["Dog"]]  # Car is not a tag
    for region, entry in zip(regions, output["masks"]["masks"], strict=True):
        assert region["original_width"] == WIDTH and region["original_height"] == HEIGHT
        assert region["value"]["format"] == "rle" and region["score"] == entry["score"]
        decoded = decode_rle(region["value"]["rle"]).reshape(HEIGHT, WIDTH, 4)[:, :, 3]
        assert set(np.unique(decoded)) == {0, 255}
        assert np.array_equal(decoded > 0, rle_decode(entry["rle"]))
    assert interface.validate_prediction({"result": regions}, return_errors=True) == []


def test_rectangle_regions_in_percent_with_min_area_and_alias(interface):
    converter = RectangleLabelsConverter(MaskDefaults(min_region_area=5))
    plan = plan_for(interface, "box", converter)
    assert plan.mode == "coarse" and plan.min_region_area == 5
    assert [c.label for c in plan.classes] == ["Cat", "D", "Car"] and plan.classes[1].prompts == ("Dog",)
    regions = converter.to_regions(MaskOutput.from_json(worker_output(dog="D")), plan)
    assert len(regions) == 2  # the 4-pixel speck is dropped
    cat, dog = regions
    assert cat["value"] == {
        "x": pytest.approx(100 * 20 / WIDTH), "y": pytest.approx(100 * 10 / HEIGHT),
        "width": pytest.approx(100 * 30 / WIDTH), "height": pytest.approx(100 * 20 / HEIGHT),
        "rotation": 0, "rectanglelabels": ["Cat"],
    }  # fmt: skip
    assert dog["value"]["rectanglelabels"] == ["D"] and dog["score"] == 0.7
    assert len({r["id"] for r in regions}) == len(regions)
    assert interface.validate_prediction({"result": regions}, return_errors=True) == []


def test_polygon_regions_in_percent(interface):
    converter = PolygonLabelsConverter()
    plan = plan_for(interface, "poly", converter)
    regions = converter.to_regions(worker_output(), plan)
    assert [r["value"]["polygonlabels"] for r in regions] == [["Cat"], ["Cat"], ["Dog"]]
    first = regions[0]["value"]["points"]
    assert first[2] == [pytest.approx(100 * 49 / WIDTH), pytest.approx(100 * 29 / HEIGHT)]
    assert all(0 <= c <= 100 for r in regions for p in r["value"]["points"] for c in p)
    assert interface.validate_prediction({"result": regions}, return_errors=True) == []


def test_all_controls_together_validate(interface):
    result = []
    for name, converter, dog in (
        ("mask", BrushLabelsConverter(), "Dog"),
        ("box", RectangleLabelsConverter(), "D"),
        ("poly", PolygonLabelsConverter(), "Dog"),
    ):
        result += converter.to_regions(worker_output(dog=dog), plan_for(interface, name, converter))
    assert {r["type"] for r in result} == {"brushlabels", "rectanglelabels", "polygonlabels"}
    result.append({"from_name": "tags", "to_name": "image", "type": "choices", "value": {"choices": ["Cat", "Dog"]}})
    assert interface.validate_prediction({"result": result}, return_errors=True) == []
    assert len({r.get("id") for r in result if "id" in r}) == len(result) - 1
    json.dumps(result)


def test_threshold_selects_labels_and_no_tags_gives_no_regions(interface):
    converter = RectangleLabelsConverter()
    plan = plan_for(interface, "box", converter, threshold=0.65)
    assert [r["value"]["rectanglelabels"] for r in converter.to_regions(worker_output(), plan)] == [["Cat"], ["Cat"]]
    plan = plan_for(interface, "box", converter)
    assert converter.to_regions(worker_output(tags=()), plan) == []
    assert converter.to_regions(worker_output(tags=("Car",)), plan) == []  # a tag without a mask


def test_masks_switched_off_by_attribute_or_default():
    config = CONFIG.replace('model_masks="true"', 'model_masks="off"')
    control = LabelInterface(config).get_control("poly")
    assert "switched off" in PolygonLabelsConverter().plan(control, {"image": "image"}, config, None)
    control = LabelInterface(CONFIG).get_control("box")
    off = RectangleLabelsConverter(MaskDefaults(enabled=False))
    assert "switched off" in off.plan(control, {"image": "image"}, CONFIG, None)


@pytest.mark.parametrize(
    ("attribute", "message"),
    [('model_mask_mode="grabcut"', "model_mask_mode"), ('model_min_region_area="-1"', "negative"),
     ('model_min_region_area="big"', "not an integer"), ('model_masks="maybe"', "true/false")],
)  # fmt: skip
def test_bad_mask_attributes(attribute, message):
    config = CONFIG.replace('model_masks="true"', attribute)
    control = LabelInterface(config).get_control("poly")
    with pytest.raises(LabelConfigError, match=message):
        PolygonLabelsConverter().plan(control, {"image": "image"}, config, None)


def test_neutral_rle_round_trips():
    rng = np.random.default_rng(3)
    for size in [(1, 1), (5, 3), (67, 101)]:
        mask = rng.random(size) < 0.5
        assert rle_encode(mask) == neutral_rle(mask)
        assert np.array_equal(rle_decode(rle_encode(mask)), mask)
