"""A Label Studio export snapshot (JSON) -> a curated dataset: one record per reviewed task, from its latest
submitted (not cancelled) annotation, with the image reference. Pure functions of plain data; no torch.

Record (JSON lines):
    {"task": id, "image": ref, "images": {object name: ref},
     "tags": {control: [label, ...]},                   # Choices values; Taxonomy paths joined with " > "
     "masks": [{"control", "label", "rle": {"size": [h, w], "counts": [...]}, "bbox": [x, y, w, h], "area"}],
     "boxes": [{"control", "label", "bbox": [x, y, w, h]}],          # pixels
     "polygons": [{"control", "label", "points": [[x, y], ...]}],      # pixels
     "width": w | null, "height": h | null,
     "annotation": {"id", "completed_by", "updated_at", "lead_time"}}

Masks are COCO's uncompressed RLE (column-major runs starting with 0), decoded from Label Studio's brush RLE.
COCO output: images, categories (one per control and label), annotations (masks, boxes, polygons) and
`image_labels` [{"image_id", "category_id"}] for whole-image tags, which COCO has no field for.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# Annotations are read as the memory of reviewed examples reads them (re-exported for old imports).
from backend.annotations import latest_annotation, region_labels, tags_of
from backend.converters import ControlPlan
from backend.labelconfig import ParsedConfig, parse_label_config
from tagclip_core.geometry import rle_encode

log = logging.getLogger(__name__)

WHOLE_IMAGE_TAGS = ("Choices", "Taxonomy")
REGION_TYPES = ("brushlabels", "rectanglelabels", "polygonlabels")
_PERCENT = 100.0


def read_config(label_config: str) -> ParsedConfig:
    """A label config read as the backend reads it (backend.labelconfig): `.controls` are every control the
    converters read (predicted or not), `.images` maps each Image object to its task data key."""
    return parse_label_config(label_config)


def whole_image_controls(config: ParsedConfig) -> tuple[ControlPlan, ...]:
    return tuple(c for c in config.controls if c.tag in WHOLE_IMAGE_TAGS)


# --- masks ---
def brush_mask(region: Mapping[str, Any]) -> np.ndarray:
    """A brush region's mask, bool [H, W], decoded from Label Studio's RLE (RGBA; alpha > 0 is the mask)."""
    from label_studio_sdk.converter.brush import decode_rle

    width, height = int(region["original_width"]), int(region["original_height"])
    pixels = decode_rle(region["value"]["rle"])
    return pixels.reshape(height, width, 4)[:, :, 3] > 0


def coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE of a bool [H, W] mask (the neutral run-length form of tagclip_core.geometry)."""
    return rle_encode(mask)


def mask_bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


# --- records ---
def task_record(task: Mapping[str, Any], config: ParsedConfig) -> dict[str, Any] | None:
    """The dataset record of one task, or None when it has no submitted annotation."""
    annotation = latest_annotation(task)
    if annotation is None:
        return None
    data = task.get("data") or {}
    images = {name: data.get(key) for name, key in config.images.items()}
    result = [r for r in annotation.get("result") or [] if isinstance(r, Mapping)]
    record: dict[str, Any] = {
        "task": task.get("id"),
        "image": next(iter(images.values()), None),
        "images": images,
        "tags": tags_of(result, whole_image_controls(config)),
        "masks": [],
        "boxes": [],
        "polygons": [],
        "width": None,
        "height": None,
        "annotation": {
            "id": annotation.get("id"),
            "completed_by": _user(annotation.get("completed_by")),
            "updated_at": annotation.get("updated_at") or annotation.get("created_at"),
            "lead_time": annotation.get("lead_time"),
        },
    }
    for region in result:
        _add_region(record, region)
    return record


def _add_region(record: dict[str, Any], region: Mapping[str, Any]) -> None:
    kind = region.get("type")
    if kind not in REGION_TYPES:
        return
    width, height = region.get("original_width"), region.get("original_height")
    if width and height:
        record["width"], record["height"] = int(width), int(height)
    value = region.get("value") or {}
    for label in region_labels(region) or [""]:
        base = {"control": region.get("from_name"), "label": label}
        if kind == "brushlabels" and width and height and value.get("format", "rle") == "rle":
            mask = brush_mask(region)
            record["masks"].append({**base, "rle": coco_rle(mask), "bbox": mask_bbox(mask), "area": int(mask.sum())})
        elif kind == "rectanglelabels" and width and height:
            x, y = value.get("x", 0) * width / _PERCENT, value.get("y", 0) * height / _PERCENT
            w, h = value.get("width", 0) * width / _PERCENT, value.get("height", 0) * height / _PERCENT
            record["boxes"].append({**base, "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)]})
        elif kind == "polygonlabels" and width and height:
            points = [[round(px * width / _PERCENT, 2), round(py * height / _PERCENT, 2)] for px, py in value["points"]]
            record["polygons"].append({**base, "points": points})


def _user(value: Any) -> Any:
    if isinstance(value, Mapping):
        return value.get("email") or value.get("id")
    return value


def records(tasks: Iterable[Mapping[str, Any]], config: ParsedConfig) -> list[dict[str, Any]]:
    out = [task_record(t, config) for t in tasks if isinstance(t, Mapping)]
    return sorted((r for r in out if r is not None), key=lambda r: r["task"] or 0)


# --- formats ---
def to_csv(rows: Sequence[Mapping[str, Any]], config: ParsedConfig) -> str:
    """One row per task: image, one column per whole-image control (labels joined by "; "), region counts."""
    controls = [c.name for c in whole_image_controls(config)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["task", "image", *controls, "masks", "boxes", "polygons", "annotation_id", "completed_by"])
    for row in rows:
        tags = [";".join(row["tags"].get(c, [])) for c in controls]
        counts = [len(row["masks"]), len(row["boxes"]), len(row["polygons"])]
        annotation = row["annotation"]
        writer.writerow([row["task"], row["image"], *tags, *counts, annotation["id"], annotation["completed_by"]])
    return buffer.getvalue()


def to_coco(rows: Sequence[Mapping[str, Any]], config: ParsedConfig) -> dict[str, Any]:
    categories: list[dict[str, Any]] = []
    category_ids: dict[tuple[str, str], int] = {}
    for control in config.controls:
        for label in control.labels:
            category_ids[(control.name, label)] = len(categories) + 1
            categories.append({"id": len(categories) + 1, "name": label, "supercategory": control.name})
    images, annotations, image_labels = [], [], []
    for row in rows:
        image_id = row["task"]
        images.append({"id": image_id, "file_name": row["image"], "width": row["width"], "height": row["height"]})
        for control, labels in row["tags"].items():
            # A label no longer in the config (removed since it was annotated) has no category: it is skipped.
            known = [category_ids[(control, x)] for x in labels if (control, x) in category_ids]
            image_labels += [{"image_id": image_id, "category_id": category} for category in known]
        for kind in ("masks", "boxes", "polygons"):
            for region in row[kind]:
                category = category_ids.get((region["control"], region["label"]))
                if category is None:
                    continue
                annotations.append(_coco_annotation(len(annotations) + 1, image_id, category, kind, region))
    return {
        "info": {"description": "tagclip export: reviewed Label Studio annotations"},
        "images": images,
        "categories": categories,
        "annotations": annotations,
        "image_labels": image_labels,
    }


def _coco_annotation(ann_id: int, image_id: int, category: int, kind: str, region: Mapping[str, Any]) -> dict:
    out: dict[str, Any] = {"id": ann_id, "image_id": image_id, "category_id": category, "iscrowd": 0}
    if kind == "masks":
        return {**out, "segmentation": region["rle"], "bbox": region["bbox"], "area": region["area"]}
    if kind == "boxes":
        x, y, w, h = region["bbox"]
        return {**out, "bbox": region["bbox"], "area": round(w * h, 2), "segmentation": []}
    points = region["points"]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(points))))
    return {**out, "segmentation": [[c for p in points for c in p]], "bbox": bbox, "area": round(area, 2)}
