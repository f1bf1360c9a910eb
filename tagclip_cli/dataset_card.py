"""The dataset card, DIR/README.md: where the data came from, what is in each split, and how the reviewers
treated the model's suggestions.

Review counts compare each exported task's stored prediction (of the model version found on most reviewed
tasks, as `tagclip report` does; tagclip_cli.review) with its latest submitted annotation, per whole-image
label: suggested (in the prediction), accepted (suggested and kept), removed (suggested, not kept) and added
(kept without being suggested). A suggestion was changed when the reviewer removed or added a label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backend.labelconfig import ParsedConfig

from .dataset import whole_image_controls
from .export_formats import DatasetItem, by_split, image_tags
from .review import most_common_version, pair_of, prediction_of
from .splits import SplitConfig


@dataclass(frozen=True)
class CardSource:
    """Where the export came from."""

    label_studio: str  # URL (never the key)
    project: int
    title: str
    view: int | None
    exported_at: str  # ISO 8601, UTC
    fmt: str


@dataclass
class LabelReview:
    suggested: int = 0
    accepted: int = 0
    removed: int = 0
    added: int = 0


@dataclass
class ReviewSummary:
    model_version: str | None
    versions: dict[str, int]  # model_version -> reviewed tasks with a prediction of it
    compared: int = 0  # exported tasks with a prediction of model_version
    unchanged: int = 0  # of those, every whole-image label as suggested
    labels: dict[tuple[str, str], LabelReview] = field(default_factory=dict)


def review_summary(tasks: Sequence[Mapping[str, Any]], config: ParsedConfig) -> ReviewSummary:
    """Suggestions against reviews over the exported tasks (snapshot tasks with full predictions)."""
    version, versions = most_common_version(tasks)
    controls = whole_image_controls(config)
    summary = ReviewSummary(version, versions)
    summary.labels = {(c.name, label): LabelReview() for c in controls for label in c.labels}
    for task in tasks:
        prediction = prediction_of(task, version) if version else None
        if prediction is None:
            continue
        pair = pair_of(task, prediction, controls)
        summary.compared += 1
        summary.unchanged += all(set(pair.truth[c.name]) == set(pair.suggested[c.name]) for c in controls)
        for control in controls:
            truth, suggested = set(pair.truth[control.name]), set(pair.suggested[control.name])
            for label in truth | suggested:
                counts = summary.labels.setdefault((control.name, label), LabelReview())
                counts.suggested += label in suggested
                counts.accepted += label in suggested and label in truth
                counts.removed += label in suggested and label not in truth
                counts.added += label in truth and label not in suggested
    return summary


def label_counts(items: Sequence[DatasetItem]) -> dict[str, Counter[str]]:
    """split -> label -> tasks with it (whole-image labels, and region labels as "label (kind)")."""
    counts: dict[str, Counter[str]] = {}
    for split, group in by_split(items).items():
        counter: Counter[str] = Counter()
        for item in group:
            counter.update(image_tags(item.record))
            for kind in ("masks", "boxes", "polygons"):
                counter.update({f"{r['label']} ({kind})" for r in item.record[kind]})
        counts[split] = counter
    return counts


def render_card(
    source: CardSource,
    items: Sequence[DatasetItem],
    review: ReviewSummary,
    split_config: SplitConfig,
    failures: int,
    skipped_regions: int,
) -> str:
    splits = by_split(items)
    lines = [
        f"# {source.title or f'Label Studio project {source.project}'}",
        "",
        f"Reviewed annotations of Label Studio project {source.project} at {source.label_studio}"
        + (f", Data Manager view {source.view}" if source.view is not None else "")
        + f", exported by `tagclip export` at {source.exported_at} as `{source.fmt}`.",
        "",
        "## Splits",
        "",
        f"Fractions train/val/test {'/'.join(f'{f:g}' for f in split_config.fractions)}, seed {split_config.seed}, "
        "stratified over the labels (iterative stratification); near-duplicate images (difference hashes within "
        f"{split_config.max_distance} bits) are kept in one split.",
        "",
        "| split | tasks | images |",
        "|---|---:|---:|",
        *(f"| {s} | {len(g)} | {len({i.image.file for i in g})} |" for s, g in splits.items()),
        "",
        f"Tasks whose image could not be fetched: {failures}. Regions that could not be read: {skipped_regions} "
        "(listed in export.json).",
        "",
        "## Label counts per split",
        "",
        *_label_table(label_counts(items), list(splits)),
        "",
        "## Review of the model's suggestions",
        "",
        *_review_lines(review),
        "",
    ]
    return "\n".join(lines)


def _label_table(counts: Mapping[str, Counter[str]], splits: Sequence[str]) -> list[str]:
    labels = sorted({label for counter in counts.values() for label in counter})
    if not labels:
        return ["No labels."]
    header = ["| label | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    return header + [f"| {_cell(x)} | " + " | ".join(str(counts[s][x]) for s in splits) + " |" for x in labels]


def _review_lines(review: ReviewSummary) -> list[str]:
    versions = ", ".join(f"`{v}` ({n} task(s))" for v, n in sorted(review.versions.items())) or "none"
    lines = [f"Model versions with predictions on the reviewed tasks: {versions}.", ""]
    if review.model_version is None or review.compared == 0:
        return [*lines, "No exported task has a stored prediction to compare with."]
    lines += [
        f"Compared: {review.compared} exported task(s) with a prediction of `{review.model_version}`; "
        f"{review.unchanged} accepted unchanged, {review.compared - review.unchanged} changed.",
        "",
        "| control | label | suggested | accepted | removed | added |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (control, label), c in review.labels.items():
        lines.append(f"| {_cell(control)} | {_cell(label)} | {c.suggested} | {c.accepted} | {c.removed} | {c.added} |")
    return lines


def _cell(text: str) -> str:
    """Text for a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")
