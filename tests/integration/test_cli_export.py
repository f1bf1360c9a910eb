"""`tagclip export` of a dataset folder against a real Label Studio 1.23.2: a project of uploaded images with
reviewed Choices, BrushLabels and RectangleLabels annotations (and stored predictions), exported in each
format by the real command (a subprocess), each read back by its library: Hugging Face `datasets`, pycocotools
(every mask decoded and compared with the annotator's brush RLE as Label Studio stores it), YOLO label files,
CSV and JSON lines. A task whose image is gone is listed with its reason; a rerun after deleting a few images
downloads only those; `--view` exports only the view's tasks."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from tests.fixtures.images import synthetic_pixels

from .stack import ROOT, base_env, png_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

W, H = 64, 48
N_IMAGES = 12
LABELS = ["Cat", "Dog", "Car"]
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="tags" toName="image" choice="multiple">'
    + "".join(f'<Choice value="{x}"/>' for x in LABELS)
    + "</Choices>"
    '<BrushLabels name="mask" toName="image"><Label value="Cat"/><Label value="Dog"/></BrushLabels>'
    '<RectangleLabels name="box" toName="image"><Label value="Car"/><Label value="Dog"/></RectangleLabels>'
    "</View>"
)
VERSION = "tagclip-test-v1"


def drawn_mask(i: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[3 + i : 15 + i, 5 + 2 * i : 30 + 2 * i] = 255
    return mask


def annotation(i: int) -> list[dict]:
    """Task i's review: tags; a brush mask on even tasks, a box on tasks divisible by 3."""
    tags = [LABELS[i % 3]] + (["Dog"] if i % 4 == 0 and LABELS[i % 3] != "Dog" else [])
    result = [{"from_name": "tags", "to_name": "image", "type": "choices", "value": {"choices": tags}}]
    if i % 2 == 0:
        value = {"format": "rle", "rle": mask2rle(drawn_mask(i)), "brushlabels": ["Cat"]}
        result.append(
            {"from_name": "mask", "to_name": "image", "type": "brushlabels", "original_width": W,
             "original_height": H, "image_rotation": 0, "value": value}
        )  # fmt: skip
    if i % 3 == 0:
        value = {"x": 10.0 + i, "y": 20.0, "width": 30.0, "height": 25.0, "rotation": 0, "rectanglelabels": ["Car"]}
        result.append(
            {"from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": W,
             "original_height": H, "image_rotation": 0, "value": value}
        )  # fmt: skip
    return result


def suggestion(i: int) -> list[str]:
    """The stored prediction's tags: right on half the tasks, one label off on the others."""
    return [LABELS[i % 3]] if i % 2 == 0 else [LABELS[(i + 1) % 3]]


@pytest.fixture(scope="module")
def project(label_studio):
    """Uploaded images, each task reviewed; one more task whose image is not there; predictions on all."""
    project = label_studio.create_project("TagCLIP dataset export", CONFIG)
    files = [(f"photo{i:02d}.png", png_bytes(H, W, seed=700 + i)) for i in range(N_IMAGES)]
    tasks = label_studio.upload_images(project, files)
    upload_url = label_studio.api("GET", f"/api/tasks/{tasks[0]}").json()["data"]["image"]
    missing_url = upload_url.rsplit("/", 1)[0] + "/gone.png"
    (missing,) = label_studio.api(
        "POST", f"/api/projects/{project}/import?return_task_ids=true", json=[{"image": missing_url}]
    ).json()["task_ids"]
    for i, task in enumerate([*tasks, missing]):
        label_studio.api("POST", f"/api/tasks/{task}/annotations", json={"result": annotation(i)})
        result = [{"from_name": "tags", "to_name": "image", "type": "choices", "value": {"choices": suggestion(i)}}]
        label_studio.api("POST", "/api/predictions", json={"task": task, "model_version": VERSION, "result": result})
    return {"id": project, "tasks": tasks, "missing": missing, "pixels": {t: 700 + i for i, t in enumerate(tasks)}}


@pytest.fixture(scope="module")
def env(label_studio):
    return {**base_env(), "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token}


def export(env, project: int, out: Path, fmt: str, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "tagclip_cli.main", "export", "--project", str(project), "--out", str(out)]
    return subprocess.run(
        [*argv, "--format", fmt, *extra], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def stored_masks(label_studio, project) -> dict[int, np.ndarray]:
    """Each task's brush mask as Label Studio stores the annotator's RLE (alpha > 0)."""
    out = {}
    for task in project["tasks"]:
        (stored,) = label_studio.api("GET", f"/api/tasks/{task}/annotations").json()
        for region in stored["result"]:
            if region["type"] == "brushlabels":
                pixels = decode_rle(region["value"]["rle"]).reshape(H, W, 4)
                out[task] = pixels[:, :, 3] > 0
    return out


@pytest.fixture(scope="module")
def dataset(project, env, tmp_path_factory):
    """The folder after an hf export: the first run downloads every image."""
    out = tmp_path_factory.mktemp("dataset") / "curated"
    result = export(env, project["id"], out, "hf", "--split", "0.5,0.25,0.25", "--seed", "1")
    return out, result


def test_hf_export_downloads_splits_and_loads(dataset, project, label_studio):
    import datasets
    from pycocotools import mask as mask_utils

    out, result = dataset
    assert result.returncode == 1, result.stderr  # one task's image is gone: listed, the rest exported
    # Label Studio 1.23.2 answers a missing upload with HTTP 500.
    assert f"task {project['missing']}: GET {label_studio.url}/data/upload/" in result.stderr
    assert "gone.png answered HTTP 500" in result.stderr
    summary = json.loads((out / "export.json").read_text())
    assert summary["tasks"] == N_IMAGES and summary["images"] == {
        "files": N_IMAGES,
        "downloaded": N_IMAGES,
        "reused": 0,
        "failed": 1,
    }
    assert [f["task"] for f in summary["failed"]] == [project["missing"]] and "gone.png" in summary["failed"][0][
        "image"
    ]
    splits = summary["splits"]  # stratified: near the fractions, not exactly them
    assert sum(splits.values()) == N_IMAGES and splits["train"] >= 5 and min(splits["val"], splits["test"]) >= 2
    assert summary["model_versions"] == {VERSION: N_IMAGES}  # over the exported tasks

    loaded = datasets.load_dataset("imagefolder", data_dir=str(out))
    assert {k: len(v) for k, v in loaded.items()} == {
        "train": splits["train"],
        "validation": splits["val"],
        "test": splits["test"],
    }
    masks = stored_masks(label_studio, project)
    for split in loaded.values():
        for row in split:
            i = project["tasks"].index(row["task"])
            assert np.array_equal(np.asarray(row["image"]), synthetic_pixels(H, W, project["pixels"][row["task"]]))
            assert row["tags"] == annotation(i)[0]["value"]["choices"]
            assert len(row["masks"]) == (i % 2 == 0) and len(row["boxes"]) == (i % 3 == 0)
            for mask in row["masks"]:
                decoded = mask_utils.decode(mask_utils.frPyObjects(mask["rle"], H, W)).astype(bool)
                assert np.array_equal(decoded, masks[row["task"]])


def test_the_dataset_card_counts_labels_and_reviews(dataset, project):
    out, _ = dataset
    card = (out / "README.md").read_text()
    assert f"Label Studio project {project['id']}" in card and "iterative stratification" in card
    assert f"`{VERSION}` ({N_IMAGES} task(s))" in card
    exported = range(N_IMAGES)
    for label in LABELS:
        truth = [label in annotation(i)[0]["value"]["choices"] for i in exported]
        suggested = [label in suggestion(i) for i in exported]
        accepted = sum(t and s for t, s in zip(truth, suggested, strict=True))
        removed = sum(s and not t for t, s in zip(truth, suggested, strict=True))
        added = sum(t and not s for t, s in zip(truth, suggested, strict=True))
        assert f"| tags | {label} | {sum(suggested)} | {accepted} | {removed} | {added} |" in card
    unchanged = sum(set(suggestion(i)) == set(annotation(i)[0]["value"]["choices"]) for i in exported)
    assert f"{unchanged} accepted unchanged, {N_IMAGES - unchanged} changed" in card
    assert "| Cat (masks) |" in card and "| Car (boxes) |" in card


def test_coco_export_loads_and_every_mask_equals_the_annotators(dataset, project, env, label_studio):
    from pycocotools.coco import COCO

    out, _ = dataset
    result = export(env, project["id"], out, "coco", "--split", "0.5,0.25,0.25", "--seed", "1", "--quiet")
    assert result.returncode == 1 and f"{N_IMAGES} already there" in result.stderr
    masks = stored_masks(label_studio, project)
    decoded = 0
    for split in ("train", "val", "test"):
        coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
        categories = {c["id"]: (c["supercategory"], c["name"]) for c in coco.loadCats(coco.getCatIds())}
        for image in coco.loadImgs(coco.getImgIds()):
            assert (out / "images" / split / image["file_name"]).is_file() and "/" not in image["file_name"]
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]])):
                mask = coco.annToMask(ann).astype(bool)
                if categories[ann["category_id"]] == ("mask", "Cat"):
                    assert np.array_equal(mask, masks[image["id"]])
                    decoded += 1
                else:
                    assert categories[ann["category_id"]] == ("box", "Car") and mask.any()
    assert decoded == len(masks) == N_IMAGES // 2


def test_yolo_export_parses_as_the_format_specifies(dataset, project, env):
    out, _ = dataset
    result = export(env, project["id"], out, "yolo", "--split", "0.5,0.25,0.25", "--seed", "1", "--quiet")
    assert result.returncode == 1, result.stderr
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["task"] == "segment" and data["names"] == {0: "Cat", 1: "Dog", 2: "Car"}
    summary = json.loads((out / "export.json").read_text())
    seen = 0
    for split in ("train", "val", "test"):
        for image in sorted((Path(data["path"]) / data[split]).glob("*.png")):
            rows = (out / "labels" / split / f"{image.stem}.txt").read_text().splitlines()
            for row in rows:
                values = [float(v) for v in row.split()]
                assert int(values[0]) in data["names"] and len(values) % 2 == 1 and len(values) >= 7
                assert all(0 <= v <= 1 for v in values[1:])
            seen += 1
    assert seen == summary["images"]["files"] == N_IMAGES


def test_csv_and_jsonl_have_a_0_1_column_per_label(dataset, project, env):
    out, _ = dataset
    for fmt in ("csv", "jsonl"):
        result = export(env, project["id"], out, fmt, "--split", "0.5,0.25,0.25", "--seed", "1", "--quiet")
        assert result.returncode == 1, result.stderr
    rows = []
    for split in ("train", "val", "test"):
        with (out / f"{split}.csv").open(newline="") as f:
            rows += list(csv.DictReader(f))
        lines = [json.loads(x) for x in (out / f"{split}.jsonl").read_text().splitlines()]
        assert [x["task"] for x in lines] == [int(r["task"]) for r in rows[-len(lines) :]]
    assert len(rows) == N_IMAGES
    for row in rows:
        i = project["tasks"].index(int(row["task"]))
        assert {x: int(row[x]) for x in LABELS} == {x: int(x in annotation(i)[0]["value"]["choices"]) for x in LABELS}
        assert (out / row["image"]).is_file()


def test_a_rerun_after_deleting_images_downloads_only_those(dataset, project, env):
    out, _ = dataset
    files = sorted((out / "images").glob("*/*.png"))
    deleted, kept = files[:3], files[3:]
    before = {p: p.stat().st_mtime_ns for p in kept}
    for path in deleted:
        path.unlink()
    result = export(env, project["id"], out, "hf", "--split", "0.5,0.25,0.25", "--seed", "1", "--quiet")
    assert result.returncode == 1, result.stderr
    assert "images: 3 downloaded, 9 already there, 1 failed" in result.stderr
    summary = json.loads((out / "export.json").read_text())
    assert summary["images"]["downloaded"] == 3 and summary["images"]["reused"] == N_IMAGES - 3
    assert all(p.is_file() for p in deleted)  # restored where they were (same split, same name)
    assert {p: p.stat().st_mtime_ns for p in kept} == before  # the others were not written again


def test_view_exports_only_its_tasks(project, env, label_studio, tmp_path):
    chosen = project["tasks"][:4]
    filters = {
        "conjunction": "and",
        "items": [
            {
                "filter": "filter:tasks:id",
                "operator": "in",
                "type": "Number",
                "value": {"min": min(chosen), "max": max(chosen)},
            }
        ],
    }
    view = label_studio.api(
        "POST", "/api/dm/views", json={"project": project["id"], "data": {"filters": filters}}
    ).json()["id"]
    result = export(env, project["id"], tmp_path / "view", "jsonl", "--view", str(view), "--split", "1,0,0")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in (tmp_path / "view" / "train.jsonl").read_text().splitlines()]
    assert [x["task"] for x in lines] == chosen


def test_without_images_writes_the_records_with_references(project, env, tmp_path):
    out = tmp_path / "records.jsonl"
    result = export(env, project["id"], out, "jsonl", "--no-images")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == N_IMAGES + 1 and all(r["image"].startswith("/data/upload/") for r in rows)
    refused = export(env, project["id"], tmp_path / "x", "yolo", "--no-images")
    assert refused.returncode == 2 and "needs the images" in refused.stderr
