"""`tagclip report`'s numbers: a small case computed by hand, AP against tagclip_core.metrics, the threshold
search against brute force and against the backend's own label selection, and the config edit."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from backend.converters.base import ClassDef, ControlOutput, ControlPlan, select_labels
from tagclip_cli.dataset import read_config
from tagclip_cli.report import format_report, improving_thresholds, with_thresholds
from tagclip_cli.report_html import render
from tagclip_cli.review import best_threshold, build_report, floor_threshold, label_ap

pytestmark = pytest.mark.unit

VERSION = "tagclip-ViT-B-16-000000000000"
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="tags" toName="image" choice="multiple"><Choice value="A"/><Choice value="B"/></Choices>'
    "</View>"
)


def _task(task_id: int, truth: list[str], suggested: list[str], scores: dict[str, float] | None, **extra) -> dict:
    region = {"from_name": "tags", "to_name": "image", "type": "choices", "value": {"choices": suggested}}
    if scores is not None:
        region["label_scores"] = scores
        region["score"] = float(np.mean([scores[x] for x in suggested])) if suggested else 0.0
    annotation = {
        "id": 100 + task_id,
        "was_cancelled": False,
        "updated_at": "2026-01-01T00:00:00Z",
        "result": [{"from_name": "tags", "to_name": "image", "type": "choices", "value": {"choices": truth}}],
    }
    return {
        "id": task_id,
        "data": {"image": f"/data/upload/1/{task_id}.png"},
        "annotations": [annotation],
        "predictions": [{"id": 200 + task_id, "model_version": VERSION, "result": [region], "score": 0.5}],
        **extra,
    }


# The hand-computed case (see the comments for each number).
HAND = [
    _task(1, ["A"], ["A"], {"A": 0.9, "B": 0.2}),  # accepted unchanged
    _task(2, ["A", "B"], ["A"], {"A": 0.8, "B": 0.4}),
    _task(3, ["B"], ["A", "B"], {"A": 0.6, "B": 0.7}),
    _task(4, [], ["B"], {"A": 0.1, "B": 0.5}),
]


def test_report_matches_the_hand_computed_case():
    report = build_report(HAND, read_config(CONFIG))
    assert report.model_version == VERSION
    assert (report.reviewed, report.compared, report.with_label_scores) == (4, 4, 4)
    # Only task 1 keeps the suggestion: 1 / 4.
    assert report.accepted_unchanged == 1 and report.acceptance_rate == 0.25
    (control,) = report.controls
    a, b = control.labels
    # A: truth (1,1,0,0), suggested (1,1,1,0): TP 2, FP 1, FN 0; P 2/3, R 1, F1 0.8.
    assert (a.support, a.suggested, a.tp, a.fp, a.fn) == (2, 3, 2, 1, 0)
    assert a.precision == pytest.approx(2 / 3) and a.recall == 1.0 and a.f1 == pytest.approx(0.8)
    # A's scores rank tasks 1, 2, 3, 4; positives at ranks 1 and 2: AP = (1/1 + 2/2) / 2 = 1.
    assert a.ap == pytest.approx(1.0)
    # B: truth (0,1,1,0), suggested (0,0,1,1): TP 1, FP 1, FN 1; P = R = F1 = 0.5.
    assert (b.tp, b.fp, b.fn) == (1, 1, 1) and b.precision == 0.5 and b.recall == 0.5 and b.f1 == 0.5
    # B's scores rank tasks 3 (.7), 4 (.5), 2 (.4), 1 (.2); positives at ranks 1 and 3: AP = (1 + 2/3) / 2.
    assert b.ap == pytest.approx(5 / 6)
    # A at t = .8 predicts tasks 1, 2: F1 1.0 (the best; t = .6 gives 0.8).
    assert (a.threshold, a.threshold_f1) == (0.8, 1.0)
    # B at t = .4 predicts tasks 2, 3, 4: TP 2, FP 1: F1 0.8 (t = .7: 2/3, t = .5: 0.5, t = .2: 2/3).
    assert b.threshold == 0.4 and b.threshold_f1 == pytest.approx(0.8)
    # Pooled over A and B: TP 3, FP 2, FN 1 at the suggestions: P .6, R .75, F1 2/3; mAP (1 + 5/6) / 2.
    assert control.micro_precision == pytest.approx(0.6) and control.micro_recall == pytest.approx(0.75)
    assert control.micro_f1 == pytest.approx(2 / 3) and control.mean_ap == pytest.approx(11 / 12)
    # One threshold for both labels: t = .7 predicts A on 1, 2 and B on 3: TP 3, FP 0, FN 1: F1 6/7.
    assert control.threshold == 0.7 and control.threshold_f1 == pytest.approx(6 / 7)
    assert control.accepted == 1


def test_report_without_label_scores_falls_back_to_region_scores():
    tasks = [_task(1, ["A"], ["A"], None), _task(2, ["B"], ["A"], None)]
    for task in tasks:
        task["predictions"][0]["result"][0]["score"] = 0.5
    report = build_report(tasks, read_config(CONFIG))
    (control,) = report.controls
    assert report.with_label_scores == 0
    assert control.threshold is None and control.labels[0].threshold is None
    assert control.labels[0].ap == pytest.approx(1.0)  # A: the positive task scores 0.5, the negative 0.5 too
    assert control.labels[1].ap == pytest.approx(0.5)  # B: scores 0 everywhere; ties rank by task order


def test_report_uses_the_given_version_and_ignores_unreviewed_and_cancelled():
    other = _task(5, ["A"], ["B"], {"A": 0.1, "B": 0.9})
    other["predictions"][0]["model_version"] = "old"
    cancelled = _task(6, ["A"], ["A"], {"A": 0.9, "B": 0.1})
    cancelled["annotations"][0]["was_cancelled"] = True
    unreviewed = _task(7, ["A"], ["A"], {"A": 0.9, "B": 0.1})
    unreviewed["annotations"] = []
    tasks = [*HAND, other, cancelled, unreviewed]
    report = build_report(tasks, read_config(CONFIG))
    assert report.model_version == VERSION and report.reviewed == 5 and report.compared == 4
    assert report.versions_seen == {VERSION: 4, "old": 1}
    assert build_report(tasks, read_config(CONFIG), "old").compared == 1


def test_label_ap_is_tagclip_core_average_precision_per_label():
    from tagclip_core.metrics import average_precision as reference

    rng = np.random.default_rng(0)
    scores = rng.random((40, 6)).round(2)  # rounding makes ties
    labels = rng.random((40, 6)) < 0.3
    labels[:, 5] = False  # a label without positives has no AP
    expected = reference(scores, labels)
    for j in range(6):
        ours = label_ap(scores[:, j], labels[:, j])
        assert (ours is None and np.isnan(expected[j])) or ours == pytest.approx(expected[j], abs=1e-12)


def _f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    tp = int((predicted & truth).sum())
    return 2 * tp / (predicted.sum() + truth.sum()) if predicted.sum() + truth.sum() else 0.0


def test_best_threshold_is_the_brute_force_maximum():
    rng = np.random.default_rng(1)
    for _ in range(50):
        scores = rng.random(25).round(1)
        truth = rng.random(25) < 0.4
        if not truth.any():
            continue
        t, f1 = best_threshold(scores, truth, int(truth.sum()))
        brute = {c: _f1(scores >= c, truth) for c in np.unique(scores)}
        best = max(brute.values())
        assert f1 == pytest.approx(best)
        assert t == max(c for c, v in brute.items() if v == pytest.approx(best))  # ties: the higher t


@pytest.mark.parametrize("single", [False, True])
def test_control_threshold_is_what_the_backend_would_select_at_it(single):
    """The F1 the report promises for a threshold is the F1 of the backend's own select_labels with it."""
    labels = ["A", "B", "C"]
    rng = np.random.default_rng(2 if single else 3)
    tasks = []
    for i in range(30):
        scores = {x: round(float(rng.random()), 2) for x in labels}
        truth = [x for x in labels if rng.random() < 0.4]
        suggested = [max(scores, key=scores.get)]
        tasks.append(_task(i + 1, truth, suggested, scores))
    choice = "single" if single else "multiple"
    config = CONFIG.replace('choice="multiple"', f'choice="{choice}"').replace(
        '<Choice value="B"/>', '<Choice value="B"/><Choice value="C"/>'
    )
    (control,) = build_report(tasks, read_config(config)).controls
    plan = ControlPlan(
        "Choices", "tags", "image", "image", tuple(ClassDef(x, (x,), (x,)) for x in labels), single, control.threshold
    )
    tp = fp = fn = 0
    for task in tasks:
        region = task["predictions"][0]["result"][0]
        output = ControlOutput(tuple(labels), tuple(region["label_scores"][x] for x in labels), ())
        chosen = {label for label, _ in select_labels(output, plan)}
        truth = set(task["annotations"][0]["result"][0]["value"]["choices"])
        tp, fp, fn = tp + len(chosen & truth), fp + len(chosen - truth), fn + len(truth - chosen)
    assert control.threshold_f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_thresholds_written_into_the_label_config():
    config = CONFIG.replace("<View>", "<View><!-- keep me -->")
    edited = with_thresholds(config, {"tags": 0.35})
    assert 'model_score_threshold="0.35"' in edited and "keep me" in edited
    assert read_config(edited).controls[0].labels == ("A", "B")
    assert floor_threshold(0.1234567) == 0.123456
    report = build_report(HAND, read_config(CONFIG))
    # 6/7 at t = .7 beats the 2/3 of the suggestions: written, rounded down.
    assert improving_thresholds(report) == {"tags": 0.7}


def test_table_json_and_html_carry_the_numbers():
    report = build_report(HAND, read_config(CONFIG))
    text = format_report(report)
    assert "accepted unchanged: 1 of 4 (25.0 %)" in text and "0.833" in text and "model_score_threshold=0.7" in text
    html = render(report, 7)
    assert html.count("<rect") == 8 and "<script" not in html and "25.0 %" in html
    data = json.loads(json.dumps(dataclasses.asdict(report)))
    assert data["controls"][0]["labels"][1]["ap"] == pytest.approx(5 / 6) and data["acceptance_rate"] == 0.25
