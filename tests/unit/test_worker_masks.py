"""worker.jobs with masks, REAL engine on a tiny checkpoint: masks only where a control asks, for exactly the
labels the backend keeps, equal to tagclip_core's own coarse_masks / Segmenter output, in plain JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backend.contracts.predict import MASKS_SCHEMA, SCHEMA, build_payloads, parse_payload
from backend.contracts.source import KeyPlace, SourceRef
from backend.errors import PayloadError
from backend.labelconfig import parse_label_config
from tagclip_core import ClassSpec
from tagclip_core.config import MaskConfig
from tagclip_core.geometry import rle_decode
from tagclip_core.images import load_image
from tagclip_core.masks import Segmenter, coarse_masks
from tests.fixtures.http_server import serve_directory
from tests.fixtures.mask_configs import mask_config
from tests.integration.stack import png_bytes
from worker.jobs import mask_labels, predict_chunk

pytestmark = pytest.mark.unit

CONFIG = mask_config(' model_mask_mode="clip-es" model_score_threshold="0"')
SIZES = {"a.png": (61, 83), "b.png": (120, 90)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve_directory(tmp_path_factory.mktemp("img")) as s:
        for seed, (name, (height, width)) in enumerate(SIZES.items()):
            s.put(name, png_bytes(height, width, seed + 5))
        yield s


def job(tiny_runtime, server, config=CONFIG, names=tuple(SIZES)) -> dict:
    controls = [c.to_payload() for c in parse_label_config(config).plan.controls]
    tasks = [{"id": i + 1, "data": {"image": f"/{name}"}} for i, name in enumerate(names)]
    return build_payloads(
        controls, tasks, SourceRef(server.url, "k", KeyPlace.PAYLOAD), "voc", tiny_runtime.model_key, 10
    )[0]


@pytest.fixture(scope="module")
def result(tiny_runtime, server):
    payload = job(tiny_runtime, server)
    assert payload["schema"] == MASKS_SCHEMA
    return tiny_runtime.run(predict_chunk, payload)


def test_masks_only_where_asked_in_plain_json_at_the_image_size(result):
    assert json.loads(json.dumps(result)) == result
    for task, (height, width) in zip(result["tasks"], SIZES.values(), strict=True):
        outputs = task["outputs"]
        assert "masks" not in outputs["tags"]
        for name in ("mask", "box", "poly"):
            masks = outputs[name]["masks"]
            assert (masks["width"], masks["height"]) == (width, height)
            for entry in masks["masks"]:
                mask = rle_decode(entry["rle"])
                assert mask.shape == (height, width)
                assert all(r["area"] > 0 for r in entry["regions"])
        assert outputs["mask"]["masks"]["mode"] == "coarse" and outputs["poly"]["masks"]["mode"] == "clip-es"
        # Regions only for the labels the backend keeps: TagCLIP's tags, or every label at threshold 0.
        assert [m["label"] for m in outputs["mask"]["masks"]["masks"]] == outputs["mask"]["tags"]
        assert [m["label"] for m in outputs["poly"]["masks"]["masks"]] == ["Cat", "Dog", "Car"]
        assert outputs["box"] == outputs["mask"]  # same classes, same mask settings: shared


@pytest.mark.parametrize("index", range(len(SIZES)), ids=list(SIZES))
def test_masks_equal_the_engine_api(result, tiny_runtime, server, index):
    """Every task's scores, tags and masks (run lengths, regions, scores) are the engine API's, value for value."""
    image = load_image(server.root.joinpath(list(SIZES)[index]).read_bytes())
    classes = [ClassSpec("Cat", ("cat", "kitten")), ClassSpec("Dog"), ClassSpec("Car")]
    tiny_runtime.engine.set_classes(classes, background="voc")
    prediction = tiny_runtime.engine.predict([image])[0]
    outputs = result["tasks"][index]["outputs"]
    assert outputs["mask"]["scores"] == [round(float(s), 6) for s in prediction.scores]
    assert outputs["mask"]["tags"] == list(prediction.tags)
    assert outputs["mask"]["masks"] == coarse_masks(prediction, prediction.tags, MaskConfig(mode="coarse")).to_json()
    segmenter = Segmenter(tiny_runtime.engine.clip, MaskConfig(background="voc"), tiny_runtime.engine.config.preprocess)
    assert outputs["poly"]["masks"] == segmenter.segment(image, classes).to_json()


def test_one_prediction_and_one_mask_per_task_for_controls_that_share_them(tiny_runtime, server, monkeypatch):
    calls = {"predict": 0, "segment": 0}
    predict = tiny_runtime.engine.predict

    def counting_predict(images, *args, **kwargs):
        calls["predict"] += len(images)
        return predict(images, *args, **kwargs)

    segment = Segmenter.segment

    def counting_segment(self, *args, **kwargs):
        calls["segment"] += 1
        return segment(self, *args, **kwargs)

    monkeypatch.setattr(tiny_runtime.engine, "predict", counting_predict)
    monkeypatch.setattr(Segmenter, "segment", counting_segment)
    clip_es_twice = CONFIG.replace('<BrushLabels name="mask"', '<BrushLabels name="mask" model_mask_mode="clip-es"')
    clip_es_twice = clip_es_twice.replace(' model_score_threshold="0"', "")
    tiny_runtime.run(predict_chunk, job(tiny_runtime, server, clip_es_twice))
    assert calls == {"predict": 2, "segment": 2}  # 4 controls, 2 images; brush and polygon share clip-es masks


def test_mask_labels_follow_the_backend_selection(tiny_runtime, server):
    image = load_image(server.root.joinpath("b.png").read_bytes())
    tiny_runtime.engine.set_classes(["Cat", "Dog", "Car"], background="voc")
    prediction = tiny_runtime.engine.predict([image])[0]
    assert mask_labels(prediction, None) == prediction.tags
    assert mask_labels(prediction, 0.0) == ("Cat", "Dog", "Car")
    top = float(np.max(prediction.scores))
    assert mask_labels(prediction, round(top, 6)) == (prediction.labels[int(np.argmax(prediction.scores))],)
    assert mask_labels(prediction, 1.0) == () or top >= 1.0


def test_without_region_controls_the_payload_stays_schema_1_and_masks_need_schema_2(tiny_runtime, server):
    choices_only = job(tiny_runtime, server, CONFIG.split("<BrushLabels")[0] + "</View>")
    assert choices_only["schema"] == SCHEMA and "masks" not in choices_only["controls"][0]
    result = tiny_runtime.run(predict_chunk, choices_only)
    assert all("masks" not in t["outputs"]["tags"] for t in result["tasks"])
    payload = job(tiny_runtime, server)
    payload["schema"] = SCHEMA  # an old backend's schema: a masks field is not read
    assert all(c.masks is None for c in parse_payload(payload).controls)


@pytest.mark.parametrize(
    "masks, message",
    [
        ({"mode": "grabcut", "min_region_area": 0}, "mode"),
        ({"mode": "coarse", "min_region_area": -1}, "min_region_area"),
        ({"mode": "coarse", "min_region_area": 0, "threshold": 2}, "threshold"),
        ("coarse", "must be an object"),
    ],
)
def test_bad_mask_specs_raise(tiny_runtime, server, masks, message):
    payload = job(tiny_runtime, server)
    payload["controls"][1]["masks"] = masks
    with pytest.raises(PayloadError, match=message):
        parse_payload(payload)
