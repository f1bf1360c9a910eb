"""`tagclip report`'s memory section: on a project's reviewed examples, TagCLIP alone against TagCLIP with the
memory, per label, by k-fold cross-validation (backend.memory.scoring.cross_validate): each fold is predicted
with a memory, and a calibration, made of the other folds only. numpy only; needs no model (the memory holds
each reviewed image's embedding and TagCLIP scores).

Per label, over the held-out predictions: precision, recall and F1 of the labels each side would suggest
(TagCLIP's tags, or its top label for a single choice; the memory's tags, or its top label), and AP of the
scores each side ranks by (TagCLIP's scores; the adapted scores). Definitions as in review.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from backend.converters import ControlPlan
from backend.memory.examples import Example, memory_arrays
from backend.memory.scoring import HeldOut, ScoringConfig, cross_validate, single_choice

from .review import f1_score, label_ap, ratio

# Folds of the cross-validation (fewer when there are fewer examples).
DEFAULT_FOLDS = 5


@dataclass(frozen=True)
class Side:
    """One side's numbers for a label (or a control: micro P/R/F1 and mAP)."""

    precision: float | None
    recall: float | None
    f1: float | None
    ap: float | None


@dataclass(frozen=True)
class LabelComparison:
    label: str
    support: int  # reviewed examples with this label
    alone: Side
    memory: Side


@dataclass(frozen=True)
class ControlComparison:
    name: str
    tag: str
    single: bool
    examples: int
    folds: int
    labels: tuple[LabelComparison, ...]
    alone: Side  # micro precision, recall, F1; mean AP over labels with positives
    memory: Side


@dataclass(frozen=True)
class MemoryReport:
    generation: int
    examples: int
    controls: tuple[ControlComparison, ...]


def memory_report(
    examples: Sequence[Example],
    controls: Sequence[ControlPlan],
    generation: int,
    folds: int = DEFAULT_FOLDS,
    scoring: ScoringConfig | None = None,
) -> MemoryReport:
    """The comparison on every control with at least 2 examples whose stored labels match the control's."""
    out = []
    for control in controls:
        memory = memory_arrays(examples, control.name, None, control.labels)
        if memory.size < 2:
            continue
        held = cross_validate(memory, control.labels, folds, scoring or ScoringConfig())
        out.append(compare(control, held, min(max(2, folds), memory.size)))
    return MemoryReport(generation, len(examples), tuple(out))


def compare(control: ControlPlan, held: HeldOut, folds: int) -> ControlComparison:
    alone_tags = single_choice(held.alone_scores) if control.single else held.alone_tags
    memory_tags = single_choice(held.memory_scores) if control.single else held.memory_tags
    labels = tuple(
        LabelComparison(
            label=label,
            support=int(held.truth[:, j].sum()),
            alone=_side(held.truth[:, j], alone_tags[:, j], held.alone_scores[:, j]),
            memory=_side(held.truth[:, j], memory_tags[:, j], held.memory_scores[:, j]),
        )
        for j, label in enumerate(control.labels)
    )
    return ControlComparison(
        name=control.name,
        tag=control.tag,
        single=control.single,
        examples=len(held.truth),
        folds=folds,
        labels=labels,
        alone=_micro(held.truth, alone_tags, [x.alone.ap for x in labels]),
        memory=_micro(held.truth, memory_tags, [x.memory.ap for x in labels]),
    )


def _side(truth: np.ndarray, chosen: np.ndarray, scores: np.ndarray) -> Side:
    tp, fp, fn = int((truth & chosen).sum()), int((~truth & chosen).sum()), int((truth & ~chosen).sum())
    return Side(ratio(tp, tp + fp), ratio(tp, tp + fn), f1_score(tp, fp, fn), label_ap(scores, truth))


def _micro(truth: np.ndarray, chosen: np.ndarray, aps: list[float | None]) -> Side:
    tp, fp, fn = int((truth & chosen).sum()), int((~truth & chosen).sum()), int((truth & ~chosen).sum())
    known = [a for a in aps if a is not None]
    return Side(ratio(tp, tp + fp), ratio(tp, tp + fn), f1_score(tp, fp, fn), float(np.mean(known)) if known else None)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_memory_report(report: MemoryReport) -> str:
    lines = [
        f"memory of reviewed examples: {report.examples} example(s), generation {report.generation}; TagCLIP alone "
        "vs with the memory, by cross-validation on them"
    ]
    if not report.controls:
        lines.append("  (fewer than 2 examples with the current labels in every learning control: nothing to compare)")
    header = f"{'label':<24}{'supp':>6}" + "".join(
        f"{m + ' ' + s:>10}" for m in ("P", "R", "F1", "AP") for s in ("alone", "memory")
    )
    for control in report.controls:
        kind = "single" if control.single else "multiple"
        lines += [
            "",
            f"{control.tag} {control.name} ({kind}): {control.examples} examples, {control.folds} folds",
            header,
        ]
        rows = [(x.label[:23], str(x.support), x.alone, x.memory) for x in control.labels]
        rows.append(("micro / mAP", "", control.alone, control.memory))
        for name, support, alone, memory in rows:
            values = [
                (alone.precision, memory.precision),
                (alone.recall, memory.recall),
                (alone.f1, memory.f1),
                (alone.ap, memory.ap),
            ]
            lines.append(f"{name:<24}{support:>6}" + "".join(f"{_fmt(a):>10}{_fmt(b):>10}" for a, b in values))
    return "\n".join(lines)
