"""The curated export: snapshot tasks -> records, CSV and COCO; brush masks decoded and re-encoded as COCO RLE."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle

from tagclip_cli.dataset import (
    coco_rle,
    file_name_of,
    latest_annotation,
    read_config,
    records,
    spreadsheet_safe,
    to_coco,
    to_csv,
)

pytestmark = pytest.mark.unit

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="tags" toName="image" choice="multiple"><Choice value="Cat"/><Choice value="Dog"/></Choices>'
    '<Taxonomy name="kind" toName="image"><Choice value="Animal"><Choice value="Pet"/></Choice></Taxonomy>'
    '<BrushLabels name="mask" toName="image"><Label value="Cat"/></BrushLabels>'
    '<RectangleLabels name="box" toName="image"><Label value="Dog"/></RectangleLabels>'
    "</View>"
)


def decode_coco_rle(rle: dict) -> np.ndarray:
    height, width = rle["size"]
    flat = np.zeros(height * width, dtype=bool)
    position, value = 0, False
    for count in rle["counts"]:
        flat[position : position + count] = value
        position, value = position + count, not value
    return flat.reshape((height, width), order="F")


@pytest.mark.parametrize("seed", range(5))
def test_coco_rle_round_trips(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((7, 5)) < 0.5
    rle = coco_rle(mask)
    assert rle["size"] == [7, 5] and sum(rle["counts"]) == 35
    assert np.array_equal(decode_coco_rle(rle), mask)


def _snapshot(mask: np.ndarray) -> list[dict]:
    height, width = mask.shape
    result = [
        {"from_name": "tags", "to_name": "image", "type": "choices", "value": {"choices": ["Cat", "Dog"]}},
        {"from_name": "kind", "to_name": "image", "type": "taxonomy", "value": {"taxonomy": [["Animal", "Pet"]]}},
        {
            "from_name": "mask",
            "to_name": "image",
            "type": "brushlabels",
            "original_width": width,
            "original_height": height,
            "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": ["Cat"]},
        },
        {
            "from_name": "box",
            "to_name": "image",
            "type": "rectanglelabels",
            "original_width": width,
            "original_height": height,
            "value": {"x": 10, "y": 20, "width": 50, "height": 25, "rotation": 0, "rectanglelabels": ["Dog"]},
        },
    ]
    old = {"id": 1, "was_cancelled": False, "updated_at": "2026-01-01T00:00:00Z", "result": []}
    new = {"id": 2, "was_cancelled": False, "updated_at": "2026-01-02T00:00:00Z", "result": result, "completed_by": 3}
    skipped = {"id": 3, "was_cancelled": True, "updated_at": "2026-01-03T00:00:00Z", "result": []}
    return [
        {"id": 11, "data": {"image": "/data/upload/1/a.png"}, "annotations": [old, new, skipped]},
        {"id": 12, "data": {"image": "s3://bucket/b.jpg"}, "annotations": [skipped]},
    ]


def test_records_take_the_latest_submitted_annotation_with_image_reference_and_masks():
    mask = np.zeros((40, 60), dtype=bool)
    mask[5:15, 20:50] = True
    tasks = _snapshot(mask)
    assert latest_annotation(tasks[0])["id"] == 2 and latest_annotation(tasks[1]) is None
    config = read_config(CONFIG)
    (row,) = records(tasks, config)
    assert row["task"] == 11 and row["image"] == "/data/upload/1/a.png" and (row["width"], row["height"]) == (60, 40)
    assert row["tags"] == {"tags": ["Cat", "Dog"], "kind": ["Animal > Pet"]}
    (brush,) = row["masks"]
    assert brush["label"] == "Cat" and brush["area"] == 300 and brush["bbox"] == [20, 5, 30, 10]
    assert np.array_equal(decode_coco_rle(brush["rle"]), mask)
    corners = [[6.0, 8.0], [36.0, 8.0], [36.0, 18.0], [6.0, 18.0]]
    assert row["boxes"] == [{"control": "box", "label": "Dog", "bbox": [6.0, 8.0, 30.0, 10.0], "points": corners}]
    assert row["skipped_regions"] == []
    assert row["annotation"]["id"] == 2 and row["annotation"]["completed_by"] == 3

    table = list(csv.reader(io.StringIO(to_csv([row], config))))
    assert table[0] == ["task", "image", "tags", "kind", "masks", "boxes", "polygons", "annotation_id", "completed_by"]
    assert table[1] == ["11", "/data/upload/1/a.png", "Cat;Dog", "Animal > Pet", "1", "1", "0", "2", "3"]

    coco = to_coco([row], config)
    names = {(c["supercategory"], c["name"]): c["id"] for c in coco["categories"]}
    assert coco["images"] == [
        {"id": 11, "file_name": "a.png", "width": 60, "height": 40, "coco_url": "/data/upload/1/a.png"}
    ]
    assert {(x["image_id"], x["category_id"]) for x in coco["image_labels"]} == {
        (11, names[("tags", "Cat")]),
        (11, names[("tags", "Dog")]),
        (11, names[("kind", "Animal > Pet")]),
    }
    segment, box = coco["annotations"]
    assert segment["category_id"] == names[("mask", "Cat")] and segment["area"] == 300
    assert np.array_equal(decode_coco_rle(segment["segmentation"]), mask)
    assert box["category_id"] == names[("box", "Dog")] and box["bbox"] == [6.0, 8.0, 30.0, 10.0] and box["area"] == 300


def test_labels_come_from_the_backend_reading_of_the_config():
    """A leafsOnly taxonomy has only its leaves as labels (as the backend predicts them), and the record's image
    is the Image object's, even when another object with a $value comes first."""
    config = (
        '<View><Text name="caption" value="$caption"/><Image name="image" value="$image"/>'
        '<Taxonomy name="kind" toName="image" leafsOnly="true">'
        '<Choice value="Animal"><Choice value="Pet"/><Choice value="Wild"/></Choice></Taxonomy></View>'
    )
    parsed = read_config(config)
    (control,) = parsed.controls
    assert control.labels == ("Animal > Pet", "Animal > Wild")
    task = {
        "id": 1,
        "data": {"caption": "a caption", "image": "/data/upload/1/a.png"},
        "annotations": [{"id": 5, "result": [], "updated_at": "2026-01-01"}],
    }
    (row,) = records([task], parsed)
    assert row["image"] == "/data/upload/1/a.png" and row["images"] == {"image": "/data/upload/1/a.png"}
    coco = to_coco([row], parsed)
    assert [c["name"] for c in coco["categories"]] == ["Animal > Pet", "Animal > Wild"]


def test_coco_skips_a_tag_no_longer_in_the_config():
    mask = np.zeros((4, 6), dtype=bool)
    tasks = _snapshot(mask)
    tasks[0]["annotations"][1]["result"][0]["value"]["choices"] = ["Cat", "Hamster"]  # Hamster was removed
    rows = records(tasks, read_config(CONFIG))
    coco = to_coco(rows, read_config(CONFIG))
    names = {c["id"]: (c["supercategory"], c["name"]) for c in coco["categories"]}
    assert sorted(names[x["category_id"]] for x in coco["image_labels"]) == [
        ("kind", "Animal > Pet"),
        ("tags", "Cat"),
    ]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda r: r["value"].update(rle=r["value"]["rle"][:9]), id="cut-short"),
        pytest.param(lambda r: r["value"].update(rle=[255] * 12 + r["value"]["rle"][12:]), id="huge-count"),
        pytest.param(lambda r: r["value"].update(rle="not a list"), id="not-a-list"),
        pytest.param(lambda r: r.update(original_width=7), id="wrong-size"),
        pytest.param(lambda r: r["value"].pop("rle"), id="no-rle"),
    ],
)
def test_a_malformed_brush_region_is_skipped_counted_and_the_rest_exported(damage, caplog):
    mask = np.zeros((40, 60), dtype=bool)
    mask[5:15, 20:50] = True
    tasks = _snapshot(mask)
    result = tasks[0]["annotations"][1]["result"]
    damage(result[2])
    config = read_config(CONFIG)
    (row,) = records(tasks, config)
    assert row["masks"] == [] and len(row["boxes"]) == 1 and row["tags"]["tags"] == ["Cat", "Dog"]
    (skipped,) = row["skipped_regions"]
    assert skipped["control"] == "mask" and skipped["type"] == "brushlabels" and skipped["reason"]
    assert "skipped brushlabels region" in caplog.text
    coco = to_coco([row], config)
    assert len(coco["annotations"]) == 1  # the box
    assert to_csv([row], config).splitlines()[1].split(",")[4:7] == ["0", "1", "0"]


def test_malformed_rectangles_and_polygons_are_skipped_too():
    tasks = _snapshot(np.zeros((4, 6), dtype=bool))
    result = tasks[0]["annotations"][1]["result"]
    result[3]["value"]["x"] = "left"
    result.append(
        {"from_name": "box", "to_name": "image", "type": "rectanglelabels", "value": {"rectanglelabels": ["Dog"]}}
    )
    (row,) = records(tasks, read_config(CONFIG))
    assert row["boxes"] == [] and len(row["skipped_regions"]) == 2 and len(row["masks"]) == 1


def test_a_region_on_another_image_is_not_put_on_the_records_image():
    config = read_config(
        '<View><Image name="image" value="$image"/><Image name="other" value="$other"/>'
        '<RectangleLabels name="box" toName="image,other"><Label value="Dog"/></RectangleLabels></View>'
    )
    value = {"x": 10, "y": 10, "width": 10, "height": 10, "rectanglelabels": ["Dog"]}
    regions = [
        {"from_name": "box", "to_name": name, "type": "rectanglelabels", "value": value, "original_width": 100,
         "original_height": 100}
        for name in ("image", "other")
    ]  # fmt: skip
    task = {"id": 1, "data": {"image": "a.png", "other": "b.png"}, "annotations": [{"id": 1, "result": regions}]}
    (row,) = records([task], config)
    assert len(row["boxes"]) == 1 and "other" in row["skipped_regions"][0]["reason"]


def test_a_rotated_rectangle_gets_the_box_around_its_corners():
    tasks = _snapshot(np.zeros((40, 60), dtype=bool))
    tasks[0]["annotations"][1]["result"][3]["value"].update(x=50, y=25, width=10, height=25, rotation=90)
    (row,) = records(tasks, read_config(CONFIG))
    # 6x10 pixels turned 90 degrees clockwise about its top-left corner (30, 10): it now spans x 20..30, y 10..16.
    (box,) = row["boxes"]
    assert box["bbox"] == pytest.approx([20.0, 10.0, 10.0, 6.0])
    assert np.allclose(box["points"], [[30, 10], [30, 16], [20, 16], [20, 10]])


@pytest.mark.parametrize("cell", ["=1+2", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_csv_cells_a_spreadsheet_would_run_are_escaped(cell):
    assert spreadsheet_safe(cell) == "'" + cell
    assert spreadsheet_safe(-3) == -3 and spreadsheet_safe("Cat") == "Cat"
    tasks = _snapshot(np.zeros((4, 6), dtype=bool))
    tasks[0]["data"]["image"] = cell
    tasks[0]["annotations"][1]["result"][0]["value"]["choices"] = [cell]
    table = list(csv.reader(io.StringIO(to_csv(records(tasks, read_config(CONFIG)), read_config(CONFIG)))))
    assert table[1][1] == "'" + cell and table[1][2] == "'" + cell


@pytest.mark.parametrize(
    ("ref", "name"),
    [
        ("/data/upload/1/a.png", "a.png"),
        ("/data/local-files/?d=../../etc/passwd", "image"),
        ("../../secret.png", "secret.png"),
        ("s3://bucket/dir/x.jpg?sig=1", "x.jpg"),
        ("..", "image"),
        ("C:\\images\\b.jpg", "b.jpg"),
        (None, "image"),
    ],
)
def test_coco_file_name_is_a_plain_name(ref, name):
    assert file_name_of(ref) == name
    tasks = _snapshot(np.zeros((4, 6), dtype=bool))
    tasks[0]["data"]["image"] = ref
    coco = to_coco(records(tasks, read_config(CONFIG)), read_config(CONFIG))
    assert coco["images"][0]["file_name"] == name and coco["images"][0]["coco_url"] == ref
