"""tagclip_core.metrics: AP, mAP and overall F1 as the reference computes them, on cases worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tagclip_core.metrics import average_precision, f1_at_relative_threshold, mean_average_precision

pytestmark = pytest.mark.unit

# Three images x three classes; class 2 has no positive image.
SCORES = np.array(
    [
        [0.9, 0.2, 0.1],
        [0.6, 0.8, 0.1],
        [0.3, 0.6, 0.7],
    ],
    dtype=np.float32,
)
LABELS = np.array(
    [
        [1, 0, 0],
        [0, 1, 0],
        [1, 1, 0],
    ]
)


def test_average_precision_by_hand() -> None:
    """Class 0: ranking img0 (0.9, +), img1 (0.6, -), img2 (0.3, +): precisions at the positives 1/1 and
    2/3, AP = (1 + 2/3) / 2 = 5/6.
    Class 1: ranking img1 (0.8, +), img2 (0.6, +), img0 (0.2, -): precisions 1/1 and 2/2, AP = 1.
    Class 2: no positive image: NaN.
    """
    ap = average_precision(SCORES, LABELS)
    assert ap.shape == (3,)
    assert ap[0] == pytest.approx(5 / 6)
    assert ap[1] == pytest.approx(1.0)
    assert np.isnan(ap[2])


def test_mean_average_precision_both_conventions() -> None:
    """Skipping the empty class: (5/6 + 1) / 2 = 11/12. The reference's torch.mean keeps the empty class at 0:
    (5/6 + 1 + 0) / 3 = 11/18."""
    assert mean_average_precision(SCORES, LABELS) == pytest.approx(11 / 12)
    assert mean_average_precision(SCORES, LABELS, skip_empty=False) == pytest.approx(11 / 18)
    with_positives = np.array([[0.9, 0.2], [0.6, 0.8], [0.3, 0.6]])
    labels = LABELS[:, :2]
    assert mean_average_precision(with_positives, labels) == mean_average_precision(
        with_positives, labels, skip_empty=False
    )


def test_last_ranked_positive() -> None:
    """Scores (0.1, 0.2, 0.3, 0.4) with only the lowest positive: rank 4, AP = 1/4."""
    ap = average_precision(np.array([[0.1], [0.2], [0.3], [0.4]]), np.array([[1], [0], [0], [0]]))
    assert ap[0] == pytest.approx(0.25)


def test_negative_one_labels_are_negatives() -> None:
    ap = average_precision(np.array([[0.9], [0.5]]), np.array([[-1], [1]]))
    assert ap[0] == pytest.approx(0.5)


def test_ties_are_ranked_by_image_index() -> None:
    """Tied scores: the earlier image ranks first. Positive first: AP 1; positive second: AP 1/2."""
    scores = np.array([[0.5], [0.5]])
    assert average_precision(scores, np.array([[1], [0]]))[0] == pytest.approx(1.0)
    assert average_precision(scores, np.array([[0], [1]]))[0] == pytest.approx(0.5)


def test_f1_at_relative_threshold_by_hand() -> None:
    """Relative 0.5 per image:
    img0 (0.9, 0.2, 0.1): threshold 0.5, tags {0}; labels {0}: TP 1.
    img1 (0.6, 0.8, 0.1): threshold 0.45, tags {0, 1}; labels {1}: TP 1, FP 1.
    img2 (0.3, 0.6, 0.7): threshold 0.5, tags {1, 2}; labels {0, 1}: TP 1, FP 1, FN 1.
    TP 3, FP 2, FN 1: P = 3/5, R = 3/4, F1 = 2 * 0.6 * 0.75 / 1.35 = 2/3.
    """
    result = f1_at_relative_threshold(SCORES, LABELS, rel=0.5)
    assert (result.true_positives, result.false_positives, result.false_negatives) == (3, 2, 1)
    assert result.precision == pytest.approx(0.6)
    assert result.recall == pytest.approx(0.75)
    assert result.f1 == pytest.approx(2 / 3)


def test_f1_without_fallback_as_the_reference() -> None:
    """An image with equal scores gets no tag in the reference's F1 (no argmax fallback): only FN 1.
    With the fallback the first class is tagged: TP 1."""
    scores = np.array([[0.4, 0.4]])
    labels = np.array([[1, 0]])
    reference = f1_at_relative_threshold(scores, labels)
    assert (reference.true_positives, reference.false_negatives, reference.f1) == (0, 1, 0.0)
    with_fallback = f1_at_relative_threshold(scores, labels, argmax_fallback=True)
    assert with_fallback.true_positives == 1
    assert with_fallback.f1 == pytest.approx(1.0)


@pytest.mark.parametrize(
    "scores,labels,match",
    [
        (np.zeros((2, 3)), np.zeros((3, 2)), r"labels of shape \(3, 2\)"),
        (np.zeros(3), np.zeros(3), r"\[N, C\]"),
        (np.zeros((0, 3)), np.zeros((0, 3)), "N, C >= 1"),
        (np.array([[np.inf]]), np.array([[1]]), "finite"),
    ],
)
def test_bad_input(scores: np.ndarray, labels: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        average_precision(scores, labels)


def test_map_without_any_positive() -> None:
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(np.array([[0.1, 0.2]]), np.array([[0, 0]]))
    assert mean_average_precision(np.array([[0.1, 0.2]]), np.array([[0, 0]]), skip_empty=False) == 0.0
