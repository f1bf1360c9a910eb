"""A Label Studio export snapshot (JSON) -> a curated dataset: one record per reviewed task, from its latest
submitted (not cancelled) annotation, with the image reference. Pure functions of plain data; no torch.

Record (JSON lines):
    {"task": id, "image": ref, "images": {object name: ref},
     "tags": {control: [label, ...]},                   # Choices values; Taxonomy paths joined with " > "
     "masks": [{"control", "label", "rle": {"size": [h, w], "counts": [...]}, "bbox": [x, y, w, h], "area"}],
     "boxes": [{"control", "label", "bbox": [x, y, w, h], "points": [[x, y] x 4]}],  # pixels; points: corners
     "polygons": [{"control", "label", "points": [[x, y], ...]}],      # pixels
     "width": w | null, "height": h | null,
     "annotation": {"id", "completed_by", "updated_at", "lead_time"},
     "skipped_regions": [{"control", "type", "id", "reason"}]}   # regions that could not be read

Masks are COCO's uncompressed RLE (column-major runs starting with 0), decoded from Label Studio's brush RLE.
A rotated rectangle's bbox is the axis-aligned box around its corners (Label Studio turns it about its top-left
corner). Regions are read for the record's image only (the config's first Image object). A region that cannot
be read (a malformed brush RLE, missing coordinates) is skipped with a warning and listed in `skipped_regions`;
the rest of the task is exported.

COCO output: images (`file_name` a plain file name, never a path; the reference in `coco_url`), categories (one
per control and label), annotations (masks, boxes, polygons) and `image_labels` [{"image_id", "category_id"}]
for whole-image tags, which COCO has no field for. CSV cells that a spreadsheet would read as a formula are
escaped (see `spreadsheet_safe`).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

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
# What reading a malformed region raises (missing keys, wrong types, bad numbers, a short RLE bit stream).
REGION_ERRORS = (KeyError, ValueError, TypeError, IndexError, AttributeError, OverflowError)
# A brush mask larger than this many pixels is refused before decoding (tagclip_core.images' default limit).
MAX_MASK_PIXELS = 100_000_000
# Label Studio's brush RLE: 32 bits of value count, then 5 bits of word size.
_RLE_COUNT_BITS = 32
_RGBA = 4
# First characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class RegionError(ValueError):
    """A result region that cannot be read: it is skipped, the rest of the task is exported."""


def read_config(label_config: str) -> ParsedConfig:
    """A label config read as the backend reads it (backend.labelconfig): `.controls` are every control the
    converters read (predicted or not), `.images` maps each Image object to its task data key."""
    return parse_label_config(label_config)


def whole_image_controls(config: ParsedConfig) -> tuple[ControlPlan, ...]:
    return tuple(c for c in config.controls if c.tag in WHOLE_IMAGE_TAGS)


# --- masks ---
def brush_mask(region: Mapping[str, Any]) -> np.ndarray:
    """A brush region's mask, bool [H, W], decoded from Label Studio's RLE (RGBA; alpha > 0 is the mask).

    Raises RegionError when the RLE does not describe an RGBA image of the region's size (checked on its header
    before decoding, so a corrupt count cannot allocate gigabytes)."""
    from label_studio_sdk.converter.brush import bytes2bit, decode_rle

    width, height = int(region["original_width"]), int(region["original_height"])
    if width <= 0 or height <= 0 or width * height > MAX_MASK_PIXELS:
        raise RegionError(f"brush size {width}x{height} is not a usable image size")
    rle = region["value"]["rle"]
    if not isinstance(rle, list) or not rle:
        raise RegionError("brush RLE is not a list of numbers")
    header = bytes2bit(rle[: _RLE_COUNT_BITS // 8])
    declared = int(header[:_RLE_COUNT_BITS], 2) if len(header) >= _RLE_COUNT_BITS else -1
    if declared != width * height * _RGBA:
        raise RegionError(f"brush RLE holds {declared} values, expected {width}x{height}x{_RGBA}")
    pixels = decode_rle(rle)
    return pixels.reshape(height, width, _RGBA)[:, :, 3] > 0


def coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE of a bool [H, W] mask (the neutral run-length form of tagclip_core.geometry)."""
    return rle_encode(mask)


def mask_bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


# --- records ---
def task_record(
    task: Mapping[str, Any], config: ParsedConfig, size: tuple[int, int] | None = None
) -> dict[str, Any] | None:
    """The dataset record of one task, or None when it has no submitted annotation.

    size: (width, height) of the image as downloaded; region coordinates (percentages) are turned into pixels of
    that size, and a brush mask of another size is skipped. Without it, the sizes the annotation carries are used.
    """
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
        "width": size[0] if size else None,
        "height": size[1] if size else None,
        "annotation": {
            "id": annotation.get("id"),
            "completed_by": _user(annotation.get("completed_by")),
            "updated_at": annotation.get("updated_at") or annotation.get("created_at"),
            "lead_time": annotation.get("lead_time"),
        },
        "skipped_regions": [],
    }
    image_name = next(iter(images), None)
    for region in result:
        if region.get("type") not in REGION_TYPES:
            continue
        try:
            _add_region(record, region, image_name, size)
        except (RegionError, *REGION_ERRORS) as error:
            _skip_region(record, region, error)
    return record


def _skip_region(record: dict[str, Any], region: Mapping[str, Any], error: Exception) -> None:
    reason = str(error) if isinstance(error, RegionError) else f"{type(error).__name__}: {error}"
    skipped = {"control": region.get("from_name"), "type": region.get("type"), "id": region.get("id")}
    log.warning(
        "task %s: skipped %s region %s of control %s: %s",
        record["task"],
        skipped["type"],
        skipped["id"],
        skipped["control"],
        reason,
    )
    record["skipped_regions"].append({**skipped, "reason": reason})


def _add_region(
    record: dict[str, Any], region: Mapping[str, Any], image_name: str | None, size: tuple[int, int] | None
) -> None:
    """Append one region's entries (one per label) to the record; raises on a region that cannot be read."""
    to_name = region.get("to_name")
    if image_name is not None and to_name not in (None, image_name):
        raise RegionError(f"drawn on image {to_name!r}; the dataset holds {image_name!r}")
    kind = region["type"]
    value = region.get("value") or {}
    stored = (region.get("original_width"), region.get("original_height"))
    width, height = size or stored
    if not width or not height:
        raise RegionError("no image size (original_width/original_height)")
    width, height = int(width), int(height)
    if size is None:
        record["width"], record["height"] = width, height
    if kind == "brushlabels":
        if value.get("format", "rle") != "rle":
            raise RegionError(f"brush format {value.get('format')!r} is not rle")
        mask = brush_mask(region)
        if mask.shape != (height, width):
            raise RegionError(f"brush mask is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}")
        entry = {"rle": coco_rle(mask), "bbox": mask_bbox(mask), "area": int(mask.sum())}
        target = "masks"
    elif kind == "rectanglelabels":
        corners = rectangle_corners(value, width, height)
        entry = {"bbox": points_bbox(corners), "points": corners}
        target = "boxes"
    else:
        points = [[_coordinate(px, width), _coordinate(py, height)] for px, py in value["points"]]
        if len(points) < 3:
            raise RegionError(f"polygon has {len(points)} point(s)")
        entry, target = {"points": points}, "polygons"
    for label in region_labels(region) or [""]:
        record[target].append({"control": region.get("from_name"), "label": label, **entry})


def _coordinate(percent: Any, extent: int) -> float:
    value = float(percent)
    if not math.isfinite(value):
        raise RegionError(f"coordinate {percent!r} is not a number")
    return round(value * extent / _PERCENT, 2)


def rectangle_corners(value: Mapping[str, Any], width: int, height: int) -> list[list[float]]:
    """The four corners (pixels) of a Label Studio rectangle, turned by `rotation` degrees about its top-left."""
    x, y = _coordinate(value["x"], width), _coordinate(value["y"], height)
    w, h = _coordinate(value["width"], width), _coordinate(value["height"], height)
    angle = math.radians(float(value.get("rotation") or 0.0))
    cos, sin = math.cos(angle), math.sin(angle)
    offsets = ((0.0, 0.0), (w, 0.0), (w, h), (0.0, h))
    return [[round(x + dx * cos - dy * sin, 2), round(y + dx * sin + dy * cos, 2)] for dx, dy in offsets]


def points_bbox(points: Sequence[Sequence[float]]) -> list[float]:
    """[x, y, w, h] around the points."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]


def _user(value: Any) -> Any:
    if isinstance(value, Mapping):
        return value.get("email") or value.get("id")
    return value


def records(tasks: Iterable[Mapping[str, Any]], config: ParsedConfig) -> list[dict[str, Any]]:
    out = [task_record(t, config) for t in tasks if isinstance(t, Mapping)]
    return sorted((r for r in out if r is not None), key=lambda r: r["task"] or 0)


# --- formats ---
def spreadsheet_safe(cell: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a string starting with =, +, -, @, tab or CR gets a leading
    apostrophe (OWASP's advice against CSV injection); numbers and other strings are unchanged."""
    if isinstance(cell, str) and cell.startswith(FORMULA_PREFIXES):
        return "'" + cell
    return cell


def csv_writer(buffer: io.StringIO) -> Any:
    """A csv writer whose rows are escaped with `spreadsheet_safe`; rows end in CRLF (RFC 4180), which also makes
    the writer quote a field holding a carriage return."""
    writer = csv.writer(buffer, lineterminator="\r\n")

    class SafeWriter:
        def writerow(self, row: Iterable[Any]) -> None:
            writer.writerow([spreadsheet_safe(cell) for cell in row])

    return SafeWriter()


def to_csv(rows: Sequence[Mapping[str, Any]], config: ParsedConfig) -> str:
    """One row per task: image, one column per whole-image control (labels joined by "; "), region counts."""
    controls = [c.name for c in whole_image_controls(config)]
    buffer = io.StringIO()
    writer = csv_writer(buffer)
    writer.writerow(["task", "image", *controls, "masks", "boxes", "polygons", "annotation_id", "completed_by"])
    for row in rows:
        tags = [";".join(row["tags"].get(c, [])) for c in controls]
        counts = [len(row["masks"]), len(row["boxes"]), len(row["polygons"])]
        annotation = row["annotation"]
        writer.writerow([row["task"], row["image"], *tags, *counts, annotation["id"], annotation["completed_by"]])
    return buffer.getvalue()


def file_name_of(ref: Any) -> str:
    """A plain file name for an image reference: the last segment of its path, without any directory, so a
    reader joining it to its image folder never leaves that folder ("image" when nothing usable is left)."""
    path = unquote(urlsplit(str(ref or "")).path)
    name = posixpath.basename(path.replace("\\", "/"))
    name = re.sub(r"[\x00-\x1f]", "", name).strip()
    return name if name not in ("", ".", "..") else "image"


def coco_categories(config: ParsedConfig) -> tuple[list[dict[str, Any]], dict[tuple[str, str], int]]:
    """COCO categories, one per (control, label) of the config, and their ids."""
    categories: list[dict[str, Any]] = []
    category_ids: dict[tuple[str, str], int] = {}
    for control in config.controls:
        for label in control.labels:
            category_ids[(control.name, label)] = len(categories) + 1
            categories.append({"id": len(categories) + 1, "name": label, "supercategory": control.name})
    return categories, category_ids


def to_coco(
    rows: Sequence[Mapping[str, Any]], config: ParsedConfig, file_names: Mapping[int, str] | None = None
) -> dict[str, Any]:
    """COCO of the records; `file_names` (task -> local file name) replaces the name made from the reference."""
    categories, category_ids = coco_categories(config)
    images, annotations, image_labels = [], [], []
    for row in rows:
        image_id = row["task"]
        name = (file_names or {}).get(image_id) or file_name_of(row["image"])
        images.append(
            {
                "id": image_id,
                "file_name": name,
                "width": row["width"],
                "height": row["height"],
                "coco_url": row["image"],
            }
        )
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
        polygon = region.get("points") or _box_corners(region["bbox"])
        return {**out, "bbox": region["bbox"], "area": polygon_area(polygon), "segmentation": [_flat(polygon)]}
    points = region["points"]
    return {**out, "segmentation": [_flat(points)], "bbox": points_bbox(points), "area": polygon_area(points)}


def polygon_area(points: Sequence[Sequence[float]]) -> float:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return round(0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(points)))), 2)


def _box_corners(bbox: Sequence[float]) -> list[list[float]]:
    x, y, w, h = bbox
    return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]


def _flat(points: Sequence[Sequence[float]]) -> list[float]:
    return [float(c) for p in points for c in p]
