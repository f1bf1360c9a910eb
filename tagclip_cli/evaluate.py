"""`tagclip eval --pred results.jsonl --gt labels.jsonl`: mAP, overall F1/P/R and per-label AP.

Predictions and ground truth are matched by image path (after os.path.normpath). Images whose prediction
line is an error, or that have none, are left out and counted; ground-truth labels outside the predicted
class list are ignored with a warning. The metrics are the reference's (tagclip_core.metrics).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import UsageError
from .records import read_jsonl


@dataclass(frozen=True)
class EvalSet:
    """Predictions and ground truth of the images present in both, as arrays."""

    labels: tuple[str, ...]
    images: tuple[str, ...]
    # [N, C] float32 scores, in label order.
    scores: np.ndarray
    # [N, C] bool ground truth.
    truth: np.ndarray
    # Ground-truth images without a prediction line, and those whose prediction failed.
    missing: tuple[str, ...]
    failed: tuple[str, ...]
    # Prediction lines whose image is not in the ground truth.
    unmatched: int
    # Ground-truth labels that are not among the predicted classes (ignored).
    unknown_labels: tuple[str, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, metavar="FILE", help="JSON lines written by `tagclip tag`")
    parser.add_argument("--gt", required=True, metavar="FILE", help='JSON lines {"image": path, "labels": [...]}')
    parser.add_argument("--rel", type=float, default=0.5, help="relative threshold of the tag rule (default 0.5)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.rel <= 1.0:
        raise UsageError(f"--rel must be in [0, 1], got {args.rel}")
    labels, predictions = read_predictions(args.pred)
    eval_set = match(labels, predictions, read_ground_truth(args.gt))
    if eval_set.unknown_labels:
        print(f"warning: ignoring ground-truth labels not predicted: {list(eval_set.unknown_labels)}", file=sys.stderr)
    report = evaluate(eval_set, args.rel)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def read_predictions(path: str) -> tuple[tuple[str, ...], dict[str, dict[str, float] | None]]:
    """The class labels (from the first scored line) and each image's scores (None when it failed)."""
    labels: tuple[str, ...] | None = None
    predictions: dict[str, dict[str, float] | None] = {}
    for where, record in read_jsonl(path):
        key = _image_key(record["image"], where, predictions)
        scores = record.get("scores")
        if record.get("error") is not None or scores is None:
            predictions[key] = None
            continue
        if not isinstance(scores, dict) or not all(isinstance(v, (int, float)) for v in scores.values()):
            raise UsageError(f'{where}: "scores" must map labels to numbers')
        labels = labels or tuple(scores)
        if set(scores) != set(labels):
            raise UsageError(f"{where}: labels {sorted(scores)} differ from the first line's {sorted(labels)}")
        predictions[key] = scores
    if labels is None:
        raise UsageError(f"{path}: no line with scores")
    return labels, predictions


def read_ground_truth(path: str) -> dict[str, tuple[str, ...]]:
    truth: dict[str, tuple[str, ...]] = {}
    for where, record in read_jsonl(path):
        key = _image_key(record["image"], where, truth)
        labels = record.get("labels")
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise UsageError(f'{where}: "labels" must be a list of strings')
        truth[key] = tuple(labels)
    return truth


def match(
    labels: tuple[str, ...], predictions: dict[str, dict[str, float] | None], truth: dict[str, tuple[str, ...]]
) -> EvalSet:
    images = tuple(key for key in truth if predictions.get(key) is not None)
    if not images:
        raise UsageError("no image has both a prediction and ground truth (image paths must match)")
    column = {label: index for index, label in enumerate(labels)}
    scores = np.array([[predictions[key][label] for label in labels] for key in images], dtype=np.float32)
    positives = np.zeros(scores.shape, dtype=bool)
    for row, key in enumerate(images):
        positives[row, [column[label] for label in truth[key] if label in column]] = True
    return EvalSet(
        labels=labels,
        images=images,
        scores=scores,
        truth=positives,
        missing=tuple(key for key in truth if key not in predictions),
        failed=tuple(key for key in truth if key in predictions and predictions[key] is None),
        unmatched=sum(1 for key in predictions if key not in truth),
        unknown_labels=tuple(sorted({label for key in truth for label in truth[key] if label not in column})),
    )


def evaluate(eval_set: EvalSet, rel: float) -> dict[str, Any]:
    """The report as a JSON-ready dict."""
    from tagclip_core.metrics import average_precision, f1_at_relative_threshold

    ap = average_precision(eval_set.scores, eval_set.truth)
    f1 = f1_at_relative_threshold(eval_set.scores, eval_set.truth, rel)
    scored = ap[~np.isnan(ap)]
    return {
        "images": {
            "evaluated": len(eval_set.images),
            "missing_prediction": len(eval_set.missing),
            "failed_prediction": len(eval_set.failed),
            "unmatched_prediction": eval_set.unmatched,
        },
        "map": float(scored.mean()) if scored.size else None,
        "map_reference": float(np.nan_to_num(ap, nan=0.0).mean()),
        "classes_with_positives": int(scored.size),
        "rel": rel,
        "f1": f1.f1,
        "precision": f1.precision,
        "recall": f1.recall,
        "per_label": [
            {"label": label, "ap": None if math.isnan(value) else float(value), "positives": int(count)}
            for label, value, count in zip(eval_set.labels, ap, eval_set.truth.sum(axis=0), strict=True)
        ],
        "unknown_gt_labels": list(eval_set.unknown_labels),
    }


def format_report(report: dict[str, Any]) -> str:
    images = report["images"]
    per_label = report["per_label"]
    map_text = "n/a (no label has a positive image)" if report["map"] is None else f"{report['map']:.6f}"
    lines = [
        f"images: {images['evaluated']} evaluated, {images['missing_prediction']} without prediction, "
        f"{images['failed_prediction']} failed, {images['unmatched_prediction']} predictions not in ground truth",
        f"mAP: {map_text} over {report['classes_with_positives']} labels with positives "
        f"(reference mean over all {len(per_label)} labels: {report['map_reference']:.6f})",
        f"F1: {report['f1']:.6f}, Precision: {report['precision']:.6f}, Recall: {report['recall']:.6f} "
        f"(overall, relative threshold {report['rel']:g})",
        "",
    ]
    width = max(len("label"), *(len(row["label"]) for row in per_label))
    lines.append(f"{'label':<{width}}  {'AP':>8}  {'positives':>9}")
    for row in per_label:
        ap = "-" if row["ap"] is None else f"{row['ap']:.4f}"
        lines.append(f"{row['label']:<{width}}  {ap:>8}  {row['positives']:>9}")
    return "\n".join(lines)


def _image_key(image: str, where: str, seen: dict[str, Any]) -> str:
    key = os.path.normpath(image)
    if key in seen:
        raise UsageError(f"{where}: image {image!r} appears twice")
    return key
