"""The dataset folder's formats, each read back by the library its users load it with: Hugging Face `datasets`
(imagefolder, csv, json), pycocotools (every mask decoded), and YOLO label files parsed as the format specifies."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from label_studio_sdk.converter.brush import mask2rle
from PIL import Image

from tagclip_cli.dataset import read_config, task_record
from tagclip_cli.export_formats import DatasetItem, label_columns, write_dataset, yolo_classes
from tagclip_cli.export_images import StoredImage
from tests.fixtures.images import synthetic_pixels

pytestmark = pytest.mark.unit

W, H = 64, 48
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="tags" toName="image" choice="multiple">'
    '<Choice value="Cat"/><Choice value="Dog"/><Choice value="=HYPERLINK(1)"/></Choices>'
    '<BrushLabels name="mask" toName="image"><Label value="Cat"/><Label value="Dog"/></BrushLabels>'
    '<RectangleLabels name="box" toName="image"><Label value="Dog"/><Label value="Car"/></RectangleLabels>'
    "</View>"
)
SPLITS = ["train", "train", "train", "train", "val", "val", "test", "test"]


def brush(mask: np.ndarray, label: str) -> dict:
    return {
        "from_name": "mask",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": W,
        "original_height": H,
        "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]},
    }


def rectangle(x: float, y: float, w: float, h: float, label: str, rotation: float = 0) -> dict:
    value = {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, "rectanglelabels": [label]}
    return {"from_name": "box", "to_name": "image", "type": "rectanglelabels", "value": value}


def choices(*labels: str) -> dict:
    return {"from_name": "tags", "to_name": "image", "type": "choices", "value": {"choices": list(labels)}}


def task_mask(i: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[2 + i : 12 + 2 * i, 3 + i : 20 + i] = True
    mask[30:34, 40 + i : 44 + i] = True  # a second region
    return mask


def build(folder: Path, config_xml: str = CONFIG) -> tuple[list[DatasetItem], dict[int, np.ndarray]]:
    """Eight tasks: each image written to images/<split>/, tags, a brush mask on even tasks, a box on all."""
    config = read_config(config_xml)
    items, masks = [], {}
    for i, split in enumerate(SPLITS):
        pixels = synthetic_pixels(H, W, 100 + i)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        data = buffer.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        image = StoredImage(f"{sha[:32]}.png", sha, "0" * 16, W, H)
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        (folder / "images" / split / image.file).write_bytes(data)
        result = [choices("Cat", "=HYPERLINK(1)") if i % 3 == 0 else choices("Dog")]
        result.append(rectangle(10, 20, 25, 50, "Dog" if i % 2 else "Car", rotation=30 if i == 1 else 0))
        if i % 2 == 0:
            masks[100 + i] = task_mask(i)
            result.append(brush(masks[100 + i], "Cat"))
        task = {
            "id": 100 + i,
            "data": {"image": f"/data/upload/1/{i}.png"},
            "annotations": [{"id": i, "result": result}],
        }
        items.append(DatasetItem(task_record(task, config, size=(W, H)), split, image))
    return items, masks


def decode_rle(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode(mask_utils.frPyObjects(rle, *rle["size"])).astype(bool)


def test_hf_imagefolder_loads_with_splits_tags_masks_and_boxes(tmp_path):
    import datasets

    items, masks = build(tmp_path)
    assert write_dataset("hf", tmp_path, items, read_config(CONFIG)) == []
    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path))
    assert {name: len(split) for name, split in loaded.items()} == {"train": 4, "validation": 2, "test": 2}
    rows = {row["task"]: row for split in loaded.values() for row in split}
    assert sorted(rows) == [item.record["task"] for item in items]
    for item in items:
        row = rows[item.record["task"]]
        assert row["image"].size == (W, H) and (row["width"], row["height"]) == (W, H)
        assert np.array_equal(np.asarray(row["image"]), synthetic_pixels(H, W, item.record["task"]))
        assert row["tags"] == (["Cat", "=HYPERLINK(1)"] if item.record["task"] % 3 == 1 else ["Dog"])
        (box,) = row["boxes"]
        assert box["label"] == ("Dog" if item.record["task"] % 2 else "Car") and len(box["points"]) == 4
        expected = masks.get(item.record["task"])
        assert len(row["masks"]) == (expected is not None)
        if expected is not None:
            assert np.array_equal(decode_rle(row["masks"][0]["rle"]), expected)
    # The rotated box (task 101): its bbox is the box around the turned corners.
    assert rows[101]["boxes"][0]["bbox"] == pytest.approx(_rotated_bbox(6.4, 9.6, 16, 24, 30), abs=0.02)


def _rotated_bbox(x, y, w, h, degrees):
    a = math.radians(degrees)
    xs = [x + dx * math.cos(a) - dy * math.sin(a) for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    ys = [y + dx * math.sin(a) + dy * math.cos(a) for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def test_hf_leaves_out_a_column_one_split_has_none_of(tmp_path):
    """Masks only in train: the JSON reader would type the column differently in val and test, and the loader
    refuses that; the column is left out with a warning, and the dataset loads."""
    import datasets

    items, _ = build(tmp_path)
    items = [
        DatasetItem({**i.record, "masks": []} if i.split != "train" else i.record, i.split, i.image) for i in items
    ]
    (warning,) = write_dataset("hf", tmp_path, items, read_config(CONFIG))
    assert warning.startswith("hf: masks left out of metadata.jsonl: split(s) val, test have none")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path))
    assert "masks" not in loaded["train"].features and "boxes" in loaded["test"].features


def test_coco_loads_with_pycocotools_and_every_mask_decodes(tmp_path):
    from pycocotools.coco import COCO

    items, masks = build(tmp_path)
    write_dataset("coco", tmp_path, items, read_config(CONFIG))
    assert sorted(p.name for p in (tmp_path / "annotations").iterdir()) == [
        "instances_test.json",
        "instances_train.json",
        "instances_val.json",
    ]
    decoded = 0
    for split in ("train", "val", "test"):
        coco = COCO(str(tmp_path / "annotations" / f"instances_{split}.json"))
        names = {c["id"]: (c["supercategory"], c["name"]) for c in coco.loadCats(coco.getCatIds())}
        for image in coco.loadImgs(coco.getImgIds()):
            assert "/" not in image["file_name"] and ".." not in image["file_name"]
            assert (tmp_path / "images" / split / image["file_name"]).is_file()
            for annotation in coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]])):
                mask = coco.annToMask(annotation).astype(bool)
                assert mask.shape == (H, W)
                if names[annotation["category_id"]][0] == "mask":
                    assert np.array_equal(mask, masks[image["id"]])
                    decoded += 1
                else:  # a box: its polygon (turned, for task 101) covers its area, up to the edge pixels
                    _, _, w, h = annotation["bbox"]
                    assert abs(mask.sum() - annotation["area"]) < 2 * (w + h)
        image_labels = json.loads((tmp_path / "annotations" / f"instances_{split}.json").read_text())["image_labels"]
        for entry in image_labels:
            assert names[entry["category_id"]][0] == "tags"
    assert decoded == len(masks)


def parse_yolo(folder: Path) -> tuple[dict, dict[str, dict[str, list[list[float]]]]]:
    """data.yaml and, per split, image file -> label rows, read as the YOLO format specifies: labels/<split>/
    <stem>.txt beside images/<split>/, one object per line, class id then normalised coordinates."""
    data = yaml.safe_load((folder / "data.yaml").read_text())
    root = Path(data["path"])
    out: dict[str, dict[str, list[list[float]]]] = {}
    for split in ("train", "val", "test"):
        if split not in data:
            continue
        images = sorted((root / data[split]).glob("*.png"))
        out[split] = {}
        for image in images:
            label_file = Path(str(image.parent).replace("/images/", "/labels/")) / f"{image.stem}.txt"
            rows = [[float(v) for v in line.split()] for line in label_file.read_text().splitlines() if line.strip()]
            for row in rows:
                assert row[0] == int(row[0]) and 0 <= row[0] < data["nc"]
                assert all(0.0 <= v <= 1.0 for v in row[1:])
            out[split][image.name] = rows
    return data, out


def test_yolo_detection_labels(tmp_path):
    config = CONFIG.replace(
        '<BrushLabels name="mask" toName="image"><Label value="Cat"/><Label value="Dog"/></BrushLabels>', ""
    )
    items, _ = build(tmp_path, config)
    write_dataset("yolo", tmp_path, items, read_config(config))
    data, labels = parse_yolo(tmp_path)
    assert data["task"] == "detect" and data["names"] == {0: "Dog", 1: "Car"} and data["nc"] == 2
    assert data["val"] == "images/val" and data["test"] == "images/test"
    for item in items:
        (row,) = labels[item.split][item.image.file]
        x, y, w, h = item.record["boxes"][0]["bbox"]
        expected = [(x + w / 2) / W, (y + h / 2) / H, w / W, h / H]
        assert row[0] == (0 if item.record["task"] % 2 else 1) and row[1:] == pytest.approx(expected, abs=1e-5)


def test_yolo_segmentation_labels_from_boxes_and_brush_masks(tmp_path):
    items, masks = build(tmp_path)
    write_dataset("yolo", tmp_path, items, read_config(CONFIG))
    data, labels = parse_yolo(tmp_path)
    assert data["task"] == "segment" and data["names"] == {0: "Cat", 1: "Dog", 2: "Car"}
    assert yolo_classes(read_config(CONFIG)) == ["Cat", "Dog", "Car"]
    for item in items:
        rows = labels[item.split][item.image.file]
        boxes = [r for r in rows if r[0] != 0]
        cats = [r for r in rows if r[0] == 0]
        assert len(boxes) == 1 and len(boxes[0]) == 1 + 8  # the rectangle's four corners
        expected = masks.get(item.record["task"])
        assert len(cats) == (0 if expected is None else 2)  # one polygon per connected region of the mask
        if expected is not None:
            import cv2

            drawn = np.zeros((H, W), dtype=np.uint8)
            for row in cats:
                points = np.array(row[1:]).reshape(-1, 2) * [W, H]
                cv2.fillPoly(drawn, [np.round(points).astype(np.int32)], 1)
            overlap = (drawn.astype(bool) & expected).sum() / (drawn.astype(bool) | expected).sum()
            assert overlap > 0.8  # polygons trace the mask's outline (pixel centres)


def test_yolo_keeps_one_label_file_for_tasks_sharing_an_image(tmp_path):
    items, _ = build(tmp_path)
    twin = DatasetItem({**items[1].record, "task": 999}, items[1].split, items[1].image)
    warnings = write_dataset("yolo", tmp_path, [*items, twin], read_config(CONFIG))
    assert warnings == [
        f"yolo: task 999 has the same image as task 101; its regions are not in labels/train/"
        f"{Path(items[1].image.file).stem}.txt"
    ]


def test_csv_and_jsonl_have_one_0_1_column_per_label_and_load(tmp_path):
    import datasets

    items, _ = build(tmp_path)
    config = read_config(CONFIG)
    assert [c for _, _, c in label_columns(config)] == ["Cat", "Dog", "=HYPERLINK(1)"]
    write_dataset("csv", tmp_path, items, config)
    write_dataset("jsonl", tmp_path, items, config)
    with (tmp_path / "train.csv").open(newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["image", "task", "Cat", "Dog", "'=HYPERLINK(1)"]  # escaped for spreadsheets
    assert table[1] == [f"images/train/{items[0].image.file}", "100", "1", "0", "1"]
    assert (tmp_path / table[1][0]).is_file()
    lines = [json.loads(x) for x in (tmp_path / "val.jsonl").read_text().splitlines()]
    assert lines[0] == {
        "image": f"images/val/{items[4].image.file}",
        "task": 104,
        "Cat": 0,
        "Dog": 1,
        "=HYPERLINK(1)": 0,
    }
    for fmt, ext in (("csv", "csv"), ("json", "jsonl")):
        files = {split: str(tmp_path / f"{split}.{ext}") for split in ("train", "val", "test")}
        loaded = datasets.load_dataset(fmt, data_files=files)
        assert {k: len(v) for k, v in loaded.items()} == {"train": 4, "val": 2, "test": 2}
        assert loaded["train"]["Cat"] == [1, 0, 0, 1] and loaded["val"]["task"] == [104, 105]


def test_label_columns_name_a_label_of_two_controls_by_control():
    config = read_config(
        '<View><Image name="image" value="$image"/>'
        '<Choices name="a" toName="image"><Choice value="Cat"/><Choice value="image"/></Choices>'
        '<Choices name="b" toName="image"><Choice value="Cat"/></Choices></View>'
    )
    assert [c for _, _, c in label_columns(config)] == ["a:Cat", "a:image", "b:Cat"]


def test_a_rerun_of_another_split_removes_the_earlier_files(tmp_path):
    items, _ = build(tmp_path)
    config = read_config(CONFIG)
    for fmt in ("hf", "csv", "coco", "yolo"):
        write_dataset(fmt, tmp_path, items, config)
    only_train = [DatasetItem(i.record, "train", i.image) for i in items]
    for fmt in ("hf", "csv", "coco", "yolo"):
        write_dataset(fmt, tmp_path, only_train, config)
    assert not (tmp_path / "val.csv").exists() and not (tmp_path / "images" / "val" / "metadata.jsonl").exists()
    assert [p.name for p in (tmp_path / "annotations").iterdir()] == ["instances_train.json"]
    assert [p.name for p in (tmp_path / "labels").iterdir()] == ["train"]
