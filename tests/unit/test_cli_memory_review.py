"""`tagclip report`'s memory section (tagclip_cli.memory_review): TagCLIP alone vs with the memory, per label, by
cross-validation on stored examples; its text and HTML."""

from __future__ import annotations

import numpy as np
import pytest

from backend.converters.base import ClassDef, ControlPlan
from backend.memory.examples import ControlReview, Example
from tagclip_cli.memory_review import format_memory_report, memory_report
from tagclip_cli.report_html import render
from tagclip_cli.review import Report

pytestmark = pytest.mark.unit

LABELS = ("A", "B")


def control(single: bool = False) -> ControlPlan:
    classes = tuple(ClassDef(x, (x.lower(),), (x,)) for x in LABELS)
    return ControlPlan("Choices", "tags", "image", "image", classes, single, None)


def examples(per_cluster: int = 6) -> list[Example]:
    """Two tight clusters: cluster 0 is reviewed "A", cluster 1 "B"; TagCLIP's scores say the opposite."""
    rng = np.random.default_rng(0)
    out = []
    for task in range(2 * per_cluster):
        cluster = task // per_cluster
        angle = np.deg2rad(rng.uniform(0, 2) + 80 * cluster)
        vector = np.array([np.cos(angle), np.sin(angle), 0.0], dtype=np.float32)
        positive = ("A",) if cluster == 0 else ("B",)
        scores = (0.2, 0.8) if cluster == 0 else (0.8, 0.2)
        review = ControlReview("fp", LABELS, positive, scores)
        out.append(Example(task + 1, 100 + task, "t", f"sha{task}", vector.astype(np.float16), {"tags": review}))
    return out


def test_the_memory_side_wins_where_neighbours_know_better():
    report = memory_report(examples(), [control()], generation=3, folds=3)
    assert report.examples == 12 and report.generation == 3
    (comparison,) = report.controls
    assert comparison.examples == 12 and comparison.folds == 3
    by_label = {x.label: x for x in comparison.labels}
    assert by_label["A"].support == 6 and by_label["B"].support == 6
    assert by_label["A"].alone.f1 == 0.0 and by_label["A"].memory.f1 == pytest.approx(1.0)
    assert comparison.memory.ap == pytest.approx(1.0) and comparison.alone.ap < 0.6
    assert comparison.memory.f1 > comparison.alone.f1


def test_single_choice_compares_top_labels():
    (comparison,) = memory_report(examples(), [control(single=True)], generation=1, folds=2).controls
    assert comparison.single and comparison.alone.precision == 0.0 and comparison.memory.precision == pytest.approx(1.0)


def test_too_few_or_other_labels_give_no_section():
    assert memory_report(examples()[:1], [control()], 0).controls == ()
    other = ControlPlan("Choices", "tags", "image", "image", (ClassDef("C", ("c",), ("C",)),), False, None)
    assert memory_report(examples(), [other], 0).controls == ()


def test_text_and_html():
    report = memory_report(examples(), [control()], generation=3, folds=3)
    text = format_memory_report(report)
    assert "12 example(s), generation 3" in text and "F1 memory" in text and "micro / mAP" in text
    empty = Report(None, 0, 0, 0, 0, None, ())
    page = render(empty, 4, report)
    assert "Memory of reviewed examples" in page and "<td>A</td><td>6</td>" in page
    assert "Memory of reviewed examples" not in render(empty, 4)
