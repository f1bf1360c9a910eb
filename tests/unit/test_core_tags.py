"""tagclip_core.tags: the relative-threshold tag rule, in float32 like the reference."""

from __future__ import annotations

import numpy as np
import pytest

from tagclip_core.tags import relative_tags, relative_threshold, tag_labels

pytestmark = pytest.mark.unit


def test_threshold_is_min_plus_rel_times_range() -> None:
    # min 0.1, max 0.9: 0.1 + 0.5 * 0.8 = 0.5
    scores = np.array([0.9, 0.2, 0.1], dtype=np.float32)
    assert relative_threshold(scores, 0.5).dtype == np.float32
    assert relative_threshold(scores, 0.5) == pytest.approx(0.5)
    np.testing.assert_array_equal(relative_tags(scores, 0.5), [True, False, False])


def test_threshold_is_strict() -> None:
    # min 0, max 1, rel 0.5: threshold 0.5 exactly; 0.5 itself is not a tag.
    scores = np.array([0.0, 0.5, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(relative_tags(scores, 0.5), [False, False, True])


def test_float32_arithmetic_as_the_reference() -> None:
    # In float32 the threshold is float32(0.35) + 0.5 * (float32(0.95) - float32(0.35)) == float32(0.65), so
    # 0.65 is not above it; float64 arithmetic on the decimal values gives 0.6499999999999999 and tags it.
    scores = np.array([0.65, 0.95, 0.35])
    np.testing.assert_array_equal(relative_tags(scores, 0.5), [False, True, False])
    decimal_threshold = 0.35 + 0.5 * (0.95 - 0.35)
    assert decimal_threshold < 0.65  # so float64 arithmetic would tag 0.65


def test_argmax_fallback_when_all_scores_are_equal() -> None:
    scores = np.array([0.3, 0.3, 0.3], dtype=np.float32)
    np.testing.assert_array_equal(relative_tags(scores, 0.5), [True, False, False])
    np.testing.assert_array_equal(relative_tags(scores, 0.5, argmax_fallback=False), [False, False, False])


def test_rel_one_keeps_only_the_fallback() -> None:
    scores = np.array([0.2, 0.7, 0.7], dtype=np.float32)
    np.testing.assert_array_equal(relative_tags(scores, 1.0), [False, True, False])


def test_rows_are_independent() -> None:
    scores = np.array([[0.9, 0.2, 0.1], [0.6, 0.8, 0.1], [0.4, 0.4, 0.4]], dtype=np.float32)
    expected = [[True, False, False], [True, True, False], [True, False, False]]
    np.testing.assert_array_equal(relative_tags(scores, 0.5), expected)
    assert relative_threshold(scores, 0.5).shape == (3, 1)


def test_cocostuff_threshold() -> None:
    # min 0.1, max 0.6: 0.1 + 0.1 * 0.5 = 0.15
    scores = np.array([0.6, 0.16, 0.14, 0.1], dtype=np.float32)
    np.testing.assert_array_equal(relative_tags(scores, 0.1), [True, True, False, False])


def test_tag_labels_in_label_order() -> None:
    assert tag_labels(["cat", "dog", "person"], np.array([0.6, 0.1, 0.8], dtype=np.float32), 0.5) == ("cat", "person")


@pytest.mark.parametrize(
    "scores,rel,match",
    [
        (np.zeros(0, dtype=np.float32), 0.5, "C >= 1"),
        (np.zeros((2, 2, 2), dtype=np.float32), 0.5, r"\[N, C\]"),
        (np.array([0.1, np.nan], dtype=np.float32), 0.5, "finite"),
        (np.array([0.1, 0.2], dtype=np.float32), 1.5, "1.5"),
        (np.array([0.1, 0.2], dtype=np.float32), -0.1, "-0.1"),
    ],
)
def test_bad_input(scores: np.ndarray, rel: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        relative_tags(scores, rel)


def test_tag_labels_checks_lengths() -> None:
    with pytest.raises(ValueError, match="2 labels for 3 scores"):
        tag_labels(["a", "b"], np.array([0.1, 0.2, 0.3], dtype=np.float32), 0.5)
