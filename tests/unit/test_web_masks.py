"""Masks through the Flask app in embedded mode with the REAL engine on a tiny random-weight checkpoint:
Image + Choices + BrushLabels + RectangleLabels + PolygonLabels, images from a real local HTTP server."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.label_interface import LabelInterface

from backend.web.app import create_app
from tests.fixtures.http_server import serve_directory
from tests.fixtures.mask_configs import mask_config
from tests.integration.stack import png_bytes

pytestmark = pytest.mark.unit

CONFIG = mask_config()
CHOICES_ONLY = CONFIG.split("<BrushLabels")[0] + "</View>"
# (height, width): odd sizes, portrait and landscape.
SIZES = [(75, 101), (131, 97), (64, 160)]
REGION_TYPES = {"mask": "brushlabels", "box": "rectanglelabels", "poly": "polygonlabels"}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    with serve_directory(tmp_path_factory.mktemp("images")) as server:
        for i, (height, width) in enumerate(SIZES):
            server.put(f"img{i}.png", png_bytes(height, width, seed=20 + i))
        yield server


@pytest.fixture(scope="module")
def client(tiny_client):
    return tiny_client


def setup(client, images, config=CONFIG, **extra_params) -> str:
    body = {"project": "5.1700000000", "schema": config, "hostname": images.url, "access_token": "k"}
    response = client.post("/setup", json={**body, "extra_params": extra_params})
    assert response.status_code == 200, response.json
    return response.json["model_version"]


def predict(client, config=CONFIG) -> list[dict]:
    tasks = [{"id": 10 + i, "data": {"image": f"/img{i}.png"}} for i in range(len(SIZES))]
    response = client.post("/predict", json={"tasks": tasks, "project": "5.1700000000", "label_config": config})
    assert response.status_code == 200, response.json
    return response.json["results"]


def by_control(result: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for region in result["result"]:
        out.setdefault(region["from_name"], []).append(region)
    return out


def check_regions(results: list[dict], version: str, config: str = CONFIG) -> None:
    """Valid predictions; brush masks 0/255 at the image size; regions only for the predicted tags."""
    interface = LabelInterface(config)
    for result, (height, width) in zip(results, SIZES, strict=True):
        assert result["model_version"] == version
        assert interface.validate_prediction({"result": result["result"]}, return_errors=True) == []
        regions = by_control(result)
        (choices,) = regions["tags"]
        tags = set(choices["value"]["choices"])
        assert tags, "TagCLIP's relative rule keeps at least one tag"
        assert regions.get("mask"), "every tag has a mask region unless another tag wins all its pixels"
        for name, kind in REGION_TYPES.items():
            for region in regions.get(name, []):
                assert region["type"] == kind and region["to_name"] == "image" and 0 <= region["score"] <= 1
                assert (region["original_width"], region["original_height"]) == (width, height)
                (label,) = region["value"][kind]
                assert label in tags, f"{name}: region for {label!r}, which is not a predicted tag {tags}"
        for region in regions["mask"]:
            alpha = decode_rle(region["value"]["rle"]).reshape(height, width, 4)[:, :, 3]
            assert set(np.unique(alpha)) == {0, 255}
        for region in regions.get("box", []):
            value = region["value"]
            assert 0 <= value["x"] <= value["x"] + value["width"] <= 100 + 1e-6
            assert 0 <= value["y"] <= value["y"] + value["height"] <= 100 + 1e-6 and value["width"] > 0
        for region in regions.get("poly", []):
            points = region["value"]["points"]
            assert len(points) >= 3 and all(0 <= c <= 100 for p in points for c in p)
        assert {r["value"]["brushlabels"][0] for r in regions["mask"]} == {
            r["value"]["rectanglelabels"][0] for r in regions["box"]
        }  # both coarse by default: the same masks, one brush per label, one box per connected region


def test_coarse_masks_by_default(client, images):
    version = setup(client, images)
    check_regions(predict(client), version)


def test_clip_es_from_extra_params_with_its_own_version(client, images):
    coarse = setup(client, images)
    version = setup(client, images, mask_mode="clip-es")
    assert version != coarse
    results = predict(client)
    check_regions(results, version)
    coarse_results = (setup(client, images), predict(client))[1]
    assert [r["result"] for r in results] != [r["result"] for r in coarse_results]


def test_min_region_area_from_extra_params_drops_small_regions(client, images):
    setup(client, images)
    small = predict(client)
    version = setup(client, images, min_region_area=10**6)  # larger than every image: every region dropped
    large = predict(client)
    assert all(set(by_control(r)) == {"tags"} for r in large) and all(r["model_version"] == version for r in large)
    assert [by_control(r)["tags"] for r in large] == [by_control(r)["tags"] for r in small]


def test_masks_off_for_the_project_gives_no_regions_and_the_choices_only_version(client, images):
    version = setup(client, images, mask_mode="off")
    assert version == setup(client, images, config=CHOICES_ONLY)
    setup(client, images, mask_mode="off")
    results = predict(client)
    assert all([r["type"] for r in result["result"]] == ["choices"] for result in results)
    assert all(result["model_version"] == version for result in results)


def test_masks_off_for_one_control_by_attribute(client, images):
    config = CONFIG.replace('<PolygonLabels name="poly"', '<PolygonLabels name="poly" model_masks="false"')
    version = setup(client, images, config=config)
    results = predict(client, config)
    assert all("poly" not in by_control(r) for r in results)
    check_regions(results, version, config)


@pytest.mark.parametrize(
    "extra_params, message",
    [
        ({"mask_mode": "grabcut"}, "mask_mode"),
        ({"mask_mode": 1}, "mask_mode"),
        ({"min_region_area": -5}, "min_region_area"),
        ({"min_region_area": 2.5}, "min_region_area"),
        ({"min_region_area": True}, "min_region_area"),
    ],
)
def test_bad_mask_extra_params_get_400(client, images, extra_params, message):
    body = {"project": "6.1", "schema": CONFIG, "extra_params": extra_params}
    response = client.post("/setup", json=body)
    assert response.status_code == 400 and message in response.json["error"]


def test_bad_mask_attribute_gets_422(client):
    config = CONFIG.replace('<BrushLabels name="mask"', '<BrushLabels name="mask" model_mask_mode="grabcut"')
    response = client.post("/setup", json={"project": "6.1", "schema": config})
    assert response.status_code == 422 and "model_mask_mode" in response.json["error"]


@pytest.fixture(scope="module")
def clip_es_client(tiny_settings):
    """A backend whose TAGCLIP_MASK_MODE is clip-es (the operator's default for every project)."""
    app = create_app(dataclasses.replace(tiny_settings, mask_mode="clip-es", min_region_area=3))
    yield app.test_client()
    app.extensions["tagclip"].dispatcher.close()


def test_backend_wide_mask_mode_is_the_default_and_projects_override_it(client, clip_es_client, images):
    # The backend default gives what extra_params gives on a default backend: same version, same regions.
    version = setup(clip_es_client, images)
    assert version == setup(client, images, mask_mode="clip-es", min_region_area=3)
    results = predict(clip_es_client)
    check_regions(results, version)
    assert [r["result"] for r in results] == [r["result"] for r in predict(client)]
    # A project's extra_params still win: coarse here is the default backend's coarse.
    assert setup(clip_es_client, images, mask_mode="coarse", min_region_area=0) == setup(client, images)
    off = setup(clip_es_client, images, mask_mode="off")
    assert off == setup(client, images, config=CHOICES_ONLY)
