"""The model's predictions against reviewed annotations, per whole-image control (Choices, Taxonomy):
per-label precision, recall, F1 and AP, the share of suggestions accepted unchanged, and the absolute score
threshold that maximises F1 (per label, and per control: what `model_score_threshold` on the control does).
numpy only (no torch).

Definitions, over the reviewed tasks that have a prediction of the model version:
* truth: the labels of the task's latest submitted annotation; suggested: the labels of the prediction.
* precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2TP / (2TP + FP + FN) (= 2PR / (P + R), and 0
  when a label with positives is never suggested); None where the denominator is 0.
* AP: rank tasks by the label's score (descending, ties by task order); AP = mean over positive tasks of
  the precision at their rank (tagclip_core.metrics.average_precision's definition).
* Scores: the prediction's per-label scores (`label_scores`, written by /predict and the bulk path); without them, a
  suggested label scores the region's score and the others 0 (AP and thresholds are then coarse).
* Suggested threshold t: the score at which predicting "score >= t" (multi-label), or "the top label, if its
  score >= t" (single choice), gives the best F1; ties go to the higher t. Only tasks with per-label
  scores count.
* Accepted unchanged: every control's labels in the annotation equal the prediction's.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.converters import LABEL_SCORES_KEY, ControlPlan
from backend.labelconfig import ParsedConfig
from backend.memory.scoring import best_threshold  # the memory's thresholds use the same search
from tagclip_core.metrics import average_precision

from .dataset import latest_annotation, tags_of, whole_image_controls


@dataclass(frozen=True)
class LabelMetrics:
    label: str
    support: int  # reviewed tasks with this label
    suggested: int  # tasks the model suggested it for
    tp: int
    fp: int
    fn: int
    precision: float | None
    recall: float | None
    f1: float | None
    ap: float | None
    threshold: float | None  # the score threshold maximising this label's F1
    threshold_f1: float | None


@dataclass(frozen=True)
class ControlReport:
    name: str
    tag: str
    single: bool
    labels: tuple[LabelMetrics, ...]
    micro_precision: float | None
    micro_recall: float | None
    micro_f1: float | None
    mean_ap: float | None  # over labels with at least one positive
    threshold: float | None  # one model_score_threshold for the control, maximising its pooled F1
    threshold_f1: float | None
    accepted: int  # tasks whose labels for this control were kept unchanged


@dataclass(frozen=True)
class Report:
    model_version: str | None
    reviewed: int  # tasks with a submitted annotation
    compared: int  # of those, with a prediction of the model version
    with_label_scores: int  # of those, whose prediction carries per-label scores
    accepted_unchanged: int
    acceptance_rate: float | None
    controls: tuple[ControlReport, ...]
    versions_seen: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Pair:
    """One reviewed task: its annotation's labels and the prediction's labels and scores, per control."""

    truth: Mapping[str, list[str]]
    suggested: Mapping[str, list[str]]
    scores: Mapping[str, Mapping[str, float]]
    scored: Mapping[str, bool]  # control -> the prediction carries every label's score for it

    @property
    def has_scores(self) -> bool:
        return all(self.scored.values())


# --- collecting pairs ---
def prediction_of(task: Mapping[str, Any], model_version: str) -> Mapping[str, Any] | None:
    """The task's (oldest) prediction of `model_version`, as a full object (export snapshot)."""
    predictions = [p for p in task.get("predictions") or [] if isinstance(p, Mapping)]
    found = [p for p in predictions if p.get("model_version") == model_version]
    return min(found, key=lambda p: p.get("id") or 0) if found else None


def most_common_version(tasks: Sequence[Mapping[str, Any]]) -> tuple[str | None, dict[str, int]]:
    """The model version found on most reviewed tasks, and the count per version."""
    counts: Counter[str] = Counter()
    for task in tasks:
        if latest_annotation(task) is None:
            continue
        versions = {p.get("model_version") for p in task.get("predictions") or [] if isinstance(p, Mapping)}
        counts.update(v for v in versions if v)
    return (counts.most_common(1)[0][0] if counts else None), dict(counts)


def pair_of(task: Mapping[str, Any], prediction: Mapping[str, Any], controls: Sequence[ControlPlan]) -> Pair:
    annotation = latest_annotation(task) or {}
    regions = [r for r in prediction.get("result") or [] if isinstance(r, Mapping)]
    suggested = tags_of(regions, controls)
    scores: dict[str, dict[str, float]] = {}
    scored: dict[str, bool] = {}
    for control in controls:
        region = next((r for r in regions if r.get("from_name") == control.name), None)
        per_label = region.get(LABEL_SCORES_KEY) if region is not None else None
        scored[control.name] = isinstance(per_label, Mapping)
        if isinstance(per_label, Mapping):
            scores[control.name] = {str(k): float(v) for k, v in per_label.items()}
        else:  # no per-label scores: a suggested label scores the region's score, the others 0
            score = float(region.get("score") or 0.0) if region is not None else 0.0
            scores[control.name] = {label: score for label in suggested[control.name]}
    truth = tags_of([r for r in annotation.get("result") or [] if isinstance(r, Mapping)], controls)
    return Pair(truth, suggested, scores, scored)


# --- metrics ---
def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def f1_score(tp: int, fp: int, fn: int) -> float | None:
    return ratio(2 * tp, 2 * tp + fp + fn)


def label_ap(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """AP of one label (tagclip_core.metrics.average_precision): scores, truth [N]; None without positives."""
    if not truth.any():
        return None
    return float(average_precision(scores[:, None], truth[:, None])[0])


def control_report(control: ControlPlan, pairs: Sequence[Pair]) -> ControlReport:
    single = control.single
    labels = list(control.labels)
    n = len(pairs)
    truth = np.zeros((n, len(labels)), dtype=bool)
    suggested = np.zeros_like(truth)
    scores = np.zeros((n, len(labels)), dtype=np.float64)
    for i, pair in enumerate(pairs):
        for j, label in enumerate(labels):
            truth[i, j] = label in pair.truth.get(control.name, [])
            suggested[i, j] = label in pair.suggested.get(control.name, [])
            scores[i, j] = pair.scores.get(control.name, {}).get(label, 0.0)
    scored = np.array([p.scored.get(control.name, False) for p in pairs], dtype=bool)
    per_label = tuple(
        _label_metrics(label, j, truth, suggested, scores, scored, single) for j, label in enumerate(labels)
    )
    tp, fp, fn = (sum(getattr(m, k) for m in per_label) for k in ("tp", "fp", "fn"))
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    aps = [m.ap for m in per_label if m.ap is not None]
    threshold, threshold_f1 = _control_threshold(truth[scored], scores[scored], single)
    accepted = sum(1 for p in pairs if set(p.truth.get(control.name, [])) == set(p.suggested.get(control.name, [])))
    return ControlReport(
        name=control.name,
        tag=control.tag,
        single=single,
        labels=per_label,
        micro_precision=precision,
        micro_recall=recall,
        micro_f1=f1_score(tp, fp, fn),
        mean_ap=float(np.mean(aps)) if aps else None,
        threshold=threshold,
        threshold_f1=threshold_f1,
        accepted=accepted,
    )


def _label_metrics(
    label: str, j: int, truth: np.ndarray, suggested: np.ndarray, scores: np.ndarray, scored: np.ndarray, single: bool
) -> LabelMetrics:
    y, s = truth[:, j], suggested[:, j]
    tp, fp, fn = int((y & s).sum()), int((~y & s).sum()), int((y & ~s).sum())
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    y_scored, scores_scored = truth[scored, j], scores[scored]
    if single:
        top = scores_scored.argmax(axis=1) == j if len(scores_scored) else np.zeros(0, dtype=bool)
        threshold, threshold_f1 = best_threshold(scores_scored[top, j], y_scored[top], int(y_scored.sum()))
    else:
        threshold, threshold_f1 = best_threshold(scores_scored[:, j], y_scored, int(y_scored.sum()))
    return LabelMetrics(
        label=label,
        support=int(y.sum()),
        suggested=int(s.sum()),
        tp=tp,
        fp=fp,
        fn=fn,
        precision=precision,
        recall=recall,
        f1=f1_score(tp, fp, fn),
        ap=label_ap(scores[:, j], y),
        threshold=threshold,
        threshold_f1=threshold_f1,
    )


def _control_threshold(truth: np.ndarray, scores: np.ndarray, single: bool) -> tuple[float | None, float | None]:
    """One threshold for the whole control (pooled F1 over its labels)."""
    if truth.size == 0:
        return None, None
    if single:
        top = scores.argmax(axis=1)
        rows = np.arange(len(top))
        return best_threshold(scores[rows, top], truth[rows, top], int(truth.sum()))
    return best_threshold(scores.ravel(), truth.ravel(), int(truth.sum()))


def build_report(
    tasks: Sequence[Mapping[str, Any]],
    config: ParsedConfig,
    model_version: str | None = None,
) -> Report:
    """The report over an export snapshot's tasks (with full predictions)."""
    chosen, seen = most_common_version(tasks)
    version = model_version or chosen
    controls = whole_image_controls(config)
    reviewed = [t for t in tasks if latest_annotation(t) is not None]
    pairs = []
    for task in reviewed:
        prediction = prediction_of(task, version) if version else None
        if prediction is not None:
            pairs.append(pair_of(task, prediction, controls))
    reports = tuple(control_report(c, pairs) for c in controls)
    accepted = sum(
        1 for p in pairs if all(set(p.truth.get(c.name, [])) == set(p.suggested.get(c.name, [])) for c in controls)
    )
    return Report(
        model_version=version,
        reviewed=len(reviewed),
        compared=len(pairs),
        with_label_scores=sum(1 for p in pairs if p.has_scores),
        accepted_unchanged=accepted,
        acceptance_rate=ratio(accepted, len(pairs)),
        controls=reports,
        versions_seen=seen,
    )


def floor_threshold(value: float, digits: int = 6) -> float:
    """A threshold rounded down (scores are stored with 6 decimals), so every score it was chosen for still
    passes it."""
    scale = 10**digits
    return math.floor(value * scale) / scale
