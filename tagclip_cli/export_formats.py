"""Writers of a curated dataset folder, one per format. Each takes the exported items (a record of
tagclip_cli.dataset in the stored image's pixels, its split, its stored image) and writes its files under DIR,
after removing what an earlier run of the same format wrote there. The images are already in
DIR/images/<split>/.

    hf     images/<split>/metadata.jsonl: file_name, task, width, height, tags (every whole-image label), and
           masks / boxes / polygons where the config has them. `datasets.load_dataset("imagefolder",
           data_dir=DIR)` reads it, with splits train, validation, test.
    coco   annotations/instances_<split>.json: images (file_name relative to images/<split>/), categories,
           annotations (RLE masks, boxes, polygons) and `image_labels` for whole-image tags.
    yolo   labels/<split>/<image stem>.txt and data.yaml: detection (class cx cy w h), or segmentation
           (class x1 y1 x2 y2 ...) when the config has polygons or brushes; normalised coordinates.
    csv    <split>.csv: image (relative to DIR), task, one 0/1 column per whole-image label.
    jsonl  <split>.jsonl: the same as JSON lines.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.labelconfig import ParsedConfig

from .dataset import csv_writer, to_coco, whole_image_controls
from .export_images import IMAGES_DIR, StoredImage
from .splits import SPLIT_NAMES

REGION_KINDS = ("masks", "boxes", "polygons")
# Region control tag -> the record field its regions are in.
KIND_OF_TAG = {"BrushLabels": "masks", "RectangleLabels": "boxes", "PolygonLabels": "polygons"}
HF_METADATA = "metadata.jsonl"
ANNOTATIONS_DIR = "annotations"
LABELS_DIR = "labels"
YOLO_YAML = "data.yaml"
# Columns of the csv/jsonl tables before the label columns.
TABLE_KEYS = ("image", "task")
# Decimals of YOLO's normalised coordinates.
YOLO_DIGITS = 6
# Polygon simplification of a brush mask's outline for YOLO (fraction of the outline's length).
YOLO_MASK_EPSILON = 0.002


@dataclass(frozen=True)
class DatasetItem:
    """One exported task."""

    record: Mapping[str, Any]  # tagclip_cli.dataset record, coordinates in the stored image's pixels
    split: str
    image: StoredImage

    @property
    def path(self) -> str:
        """The image file relative to the dataset folder."""
        return f"{IMAGES_DIR}/{self.split}/{self.image.file}"


def by_split(items: Iterable[DatasetItem]) -> dict[str, list[DatasetItem]]:
    """Items per split, in split order, tasks ascending; splits without items left out."""
    groups: dict[str, list[DatasetItem]] = {name: [] for name in SPLIT_NAMES}
    for item in sorted(items, key=lambda i: i.record["task"]):
        groups[item.split].append(item)
    return {name: group for name, group in groups.items() if group}


def region_kinds(config: ParsedConfig) -> tuple[str, ...]:
    """The record fields (masks, boxes, polygons) the config's region controls fill, in that order."""
    present = {KIND_OF_TAG[c.tag] for c in config.controls if c.tag in KIND_OF_TAG}
    return tuple(kind for kind in REGION_KINDS if kind in present)


def image_tags(record: Mapping[str, Any]) -> list[str]:
    """Every whole-image label of a record, controls in order, without repeats."""
    return list(dict.fromkeys(label for labels in record["tags"].values() for label in labels))


def write_dataset(fmt: str, root: Path, items: Sequence[DatasetItem], config: ParsedConfig) -> list[str]:
    """Write `fmt` under `root`; returns warnings for the user."""
    writers = {"hf": write_hf, "coco": write_coco, "yolo": write_yolo, "csv": write_csv, "jsonl": write_jsonl}
    return writers[fmt](root, items, config)


def write_text_file(path: Path, text: str) -> None:
    """Write a text file whole (a temporary file renamed), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".partial-{path.name}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


# --- Hugging Face imagefolder ---
def write_hf(root: Path, items: Sequence[DatasetItem], config: ParsedConfig) -> list[str]:
    _remove(root / IMAGES_DIR / split / HF_METADATA for split in SPLIT_NAMES)
    splits = by_split(items)
    rows = {split: [_hf_row(item, config) for item in group] for split, group in splits.items()}
    warnings = []
    for column, empty in _hf_columns_empty_in_some_split(rows).items():
        warnings.append(
            f"hf: {column} left out of metadata.jsonl: split(s) {', '.join(empty)} have none while others do, and "
            "the loader needs the same columns in every split (the other formats keep them)"
        )
        for group in rows.values():
            for row in group:
                row.pop(column)
    for split, group in rows.items():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in group)
        write_text_file(root / IMAGES_DIR / split / HF_METADATA, text)
    return warnings


def _hf_row(item: DatasetItem, config: ParsedConfig) -> dict[str, Any]:
    record = item.record
    row: dict[str, Any] = {
        "file_name": item.image.file,
        "task": int(record["task"]),
        "width": int(item.image.width),
        "height": int(item.image.height),
    }
    if whole_image_controls(config):
        row["tags"] = image_tags(record)
    for kind in region_kinds(config):
        row[kind] = [_hf_region(kind, region) for region in record[kind]]
    return row


def _hf_region(kind: str, region: Mapping[str, Any]) -> dict[str, Any]:
    """A region with fixed types (floats for coordinates) so every split's metadata has the same schema."""
    out: dict[str, Any] = {"control": str(region["control"]), "label": str(region["label"])}
    if kind == "masks":
        rle = region["rle"]
        counts = [int(c) for c in rle["counts"]]
        out["rle"] = {"size": [int(v) for v in rle["size"]], "counts": counts}
        out["bbox"] = [float(v) for v in region["bbox"]]
        out["area"] = int(region["area"])
    elif kind == "boxes":
        out["bbox"] = [float(v) for v in region["bbox"]]
        out["points"] = [[float(x), float(y)] for x, y in region["points"]]
    else:
        out["points"] = [[float(x), float(y)] for x, y in region["points"]]
    return out


def _hf_columns_empty_in_some_split(rows: Mapping[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    """List columns that are empty in every row of some split but not of another, with those splits: the JSON
    reader would type them differently per split, and the imagefolder loader refuses splits whose features
    differ."""
    if len(rows) < 2:
        return {}
    columns = [k for k, v in next(iter(rows.values()))[0].items() if isinstance(v, list)]
    found = {}
    for column in columns:
        empty = [split for split, group in rows.items() if not any(row[column] for row in group)]
        if empty and len(empty) < len(rows):
            found[column] = empty
    return found


# --- COCO ---
def write_coco(root: Path, items: Sequence[DatasetItem], config: ParsedConfig) -> list[str]:
    folder = root / ANNOTATIONS_DIR
    _remove(folder / f"instances_{split}.json" for split in SPLIT_NAMES)
    for split, group in by_split(items).items():
        rows = [item.record for item in group]
        coco = to_coco(rows, config, file_names={item.record["task"]: item.image.file for item in group})
        coco["info"] = {
            "description": f"tagclip export: reviewed Label Studio annotations, split {split}",
            "image_root": f"{IMAGES_DIR}/{split}",
        }
        write_text_file(folder / f"instances_{split}.json", json.dumps(coco, ensure_ascii=False))
    return []


# --- YOLO ---
def yolo_classes(config: ParsedConfig) -> list[str]:
    """YOLO class names: the labels of the region controls, config order, one class per distinct label."""
    return list(dict.fromkeys(label for c in config.controls if c.tag in KIND_OF_TAG for label in c.labels))


def yolo_task(config: ParsedConfig) -> str:
    """ "segment" when the config has polygons or brushes, else "detect"."""
    return "segment" if {"masks", "polygons"} & set(region_kinds(config)) else "detect"


def write_yolo(root: Path, items: Sequence[DatasetItem], config: ParsedConfig) -> list[str]:
    _remove([root / LABELS_DIR, root / YOLO_YAML])
    classes = yolo_classes(config)
    index = {label: i for i, label in enumerate(classes)}
    task = yolo_task(config)
    warnings = []
    splits = by_split(items)
    for split, group in splits.items():
        written: dict[str, int] = {}
        for item in group:
            stem = Path(item.image.file).stem
            if stem in written:  # one label file per image: the lowest task id keeps it
                warnings.append(
                    f"yolo: task {item.record['task']} has the same image as task {written[stem]}; "
                    f"its regions are not in {LABELS_DIR}/{split}/{stem}.txt"
                )
                continue
            written[stem] = item.record["task"]
            lines = _yolo_lines(item, index, task)
            write_text_file(root / LABELS_DIR / split / f"{stem}.txt", "".join(line + "\n" for line in lines))
    write_text_file(root / YOLO_YAML, _yolo_yaml(root, splits, classes, task))
    return warnings


def _yolo_yaml(root: Path, splits: Mapping[str, Any], classes: Sequence[str], task: str) -> str:
    import yaml

    data: dict[str, Any] = {"path": str(root.resolve())}
    for split in SPLIT_NAMES:
        if split in splits:
            data[split] = f"{IMAGES_DIR}/{split}"
    # YOLO trainers require a val entry: without a val split, they validate on train.
    data.setdefault("val", data.get("train", f"{IMAGES_DIR}/train"))
    data["task"] = task
    data["nc"] = len(classes)
    data["names"] = dict(enumerate(classes))
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _yolo_lines(item: DatasetItem, index: Mapping[str, int], task: str) -> list[str]:
    width, height = item.image.width, item.image.height
    record = item.record
    lines = []
    for box in record["boxes"]:
        if box["label"] not in index:
            continue
        if task == "detect":
            x, y, w, h = box["bbox"]
            values = [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]
        else:
            values = _normalised(box["points"], width, height)
        lines.append(_yolo_line(index[box["label"]], values))
    for polygon in record["polygons"]:
        if polygon["label"] in index:
            lines.append(_yolo_line(index[polygon["label"]], _normalised(polygon["points"], width, height)))
    for mask in record["masks"]:
        if mask["label"] in index:
            for points in mask_polygons(mask["rle"]):
                lines.append(_yolo_line(index[mask["label"]], _normalised(points, width, height)))
    return lines


def mask_polygons(rle: Mapping[str, Any]) -> list[list[tuple[int, int]]]:
    """The outlines (pixels) of a mask's connected regions: YOLO segmentation has polygons, not masks."""
    from tagclip_core.geometry import mask_regions, rle_decode

    mask = rle_decode(rle)
    _, regions = mask_regions(mask, mask.astype("float32"), min_area=1, polygon_epsilon=YOLO_MASK_EPSILON)
    return [list(region.polygon) for region in regions]


def _normalised(points: Sequence[Sequence[float]], width: int, height: int) -> list[float]:
    return [v for x, y in points for v in (x / width, y / height)]


def _yolo_line(class_id: int, values: Sequence[float]) -> str:
    clipped = (min(1.0, max(0.0, float(v))) for v in values)
    return " ".join([str(class_id), *(f"{v:.{YOLO_DIGITS}f}" for v in clipped)])


# --- classification tables ---
def label_columns(config: ParsedConfig) -> list[tuple[str, str, str]]:
    """(control, label, column) per whole-image label. The column is the label, or "control:label" where the
    label is in several controls or is the name of a fixed column."""
    pairs = [(c.name, label) for c in whole_image_controls(config) for label in c.labels]
    counts: dict[str, int] = {}
    for _, label in pairs:
        counts[label] = counts.get(label, 0) + 1
    return [
        (control, label, label if counts[label] == 1 and label not in TABLE_KEYS else f"{control}:{label}")
        for control, label in pairs
    ]


def table_rows(items: Sequence[DatasetItem], config: ParsedConfig) -> Iterable[dict[str, Any]]:
    columns = label_columns(config)
    for item in items:
        tags = item.record["tags"]
        row: dict[str, Any] = {"image": item.path, "task": int(item.record["task"])}
        row.update({column: int(label in tags.get(control, [])) for control, label, column in columns})
        yield row


def write_csv(root: Path, items: Sequence[DatasetItem], config: ParsedConfig) -> list[str]:
    _remove(root / f"{split}.csv" for split in SPLIT_NAMES)
    header = [*TABLE_KEYS, *(column for _, _, column in label_columns(config))]
    for split, group in by_split(items).items():
        buffer = io.StringIO()
        writer = csv_writer(buffer)
        writer.writerow(header)
        for row in table_rows(group, config):
            writer.writerow([row[key] for key in header])
        write_text_file(root / f"{split}.csv", buffer.getvalue())
    return _no_labels_warning(config, "csv")


def write_jsonl(root: Path, items: Sequence[DatasetItem], config: ParsedConfig) -> list[str]:
    _remove(root / f"{split}.jsonl" for split in SPLIT_NAMES)
    for split, group in by_split(items).items():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in table_rows(group, config))
        write_text_file(root / f"{split}.jsonl", text)
    return _no_labels_warning(config, "jsonl")


def _no_labels_warning(config: ParsedConfig, fmt: str) -> list[str]:
    if whole_image_controls(config):
        return []
    return [f"{fmt}: the label config has no Choices or Taxonomy, so the table has no label columns"]
