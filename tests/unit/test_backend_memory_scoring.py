"""The memory's numerics (backend.memory.scoring), checked against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backend.memory.scoring import (
    NEUTRAL,
    Calibration,
    Memory,
    ScoringConfig,
    adapt,
    affinity,
    best_threshold,
    calibrate,
    combine,
    cross_validate,
    leave_one_out_votes,
    relevance,
    single_choice,
    tagclip_tags,
    vote,
)
from tagclip_core.tags import relative_tags

pytestmark = pytest.mark.unit


def _unit(*angles_deg: float) -> np.ndarray:
    """2-D unit vectors at the given angles: cos between two of them is cos(angle difference)."""
    radians = np.deg2rad(np.array(angles_deg, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def _memory(embeddings: np.ndarray, labels, scores, tasks=None) -> Memory:
    labels = np.array(labels, dtype=bool)
    tasks = np.arange(len(labels)) if tasks is None else np.array(tasks)
    return Memory(np.asarray(embeddings, np.float32), labels, np.array(scores, np.float32), tasks.astype(np.int64))


def test_relevance_is_tagclips_min_max_scale():
    np.testing.assert_allclose(relevance(np.array([[0.2, 0.6, 0.4]])), [[0.0, 1.0, 0.5]])
    assert relevance(np.array([[0.3, 0.3]])).tolist() == [[0.0, 0.0]]  # all equal: nothing stands out
    # TagCLIP's rule (score > min + 0.5 (max - min)) is relevance > NEUTRAL.
    scores = np.array([[0.1, 0.52, 0.9, 0.49]], dtype=np.float32)
    assert np.array_equal(relevance(scores) > NEUTRAL, relative_tags(scores, 0.5))


def test_affinity_is_one_for_the_same_image_and_decays_with_beta():
    e = _unit(0.0, 60.0)  # cos = 0.5
    weights = affinity(e[:1], e, beta=2.0)
    np.testing.assert_allclose(weights, [[1.0, math.exp(-2.0 * 0.5)]], rtol=1e-6)


def test_vote_is_the_signed_weighted_mean_and_fades_far_from_the_memory():
    labels = np.array([[True, False], [False, False]])
    near = vote(np.array([[1.0, math.exp(-1.0)]]), labels)
    # label 0: (1 - e^-1) / (1 + e^-1) = tanh(1/2); label 1: both vote against it: -1.
    np.testing.assert_allclose(near, [[math.tanh(0.5), -1.0]], rtol=1e-9)
    far = vote(np.array([[0.1, 0.1]]), np.array([[True], [True]]))
    np.testing.assert_allclose(far, [[0.2]])  # total weight 0.2 < 1: the vote shrinks to 0.2, not 1


def test_combine_blends_relevance_with_the_vote_mapped_to_0_1():
    assert combine(np.array(0.8), np.array(0.5), 0.5) == pytest.approx(0.5 * 0.8 + 0.5 * 0.75)
    assert combine(np.array(0.3), np.array(0.0), 0.9) == pytest.approx(0.1 * 0.3 + 0.9 * NEUTRAL)
    assert combine(np.array(0.3), np.array(1.0), 0.0) == pytest.approx(0.3)


def test_adapt_by_hand():
    """One reviewed image with label A (B never reviewed positive). The same image again: r = (0, 1),
    weight 1, vote (+1, -1); A: 0.25 * 0 + 0.75 * 1 = 0.75 > 0.5 is tagged; B keeps TagCLIP's score scale
    (r = 1) and TagCLIP's tag."""
    memory = _memory(_unit(0.0), [[True, False]], [[0.2, 0.3]], tasks=[7])
    calibration = Calibration(("A", "B"), alpha=0.75, beta=10.0, seen=(True, False), thresholds=(None, None))
    scores, tags = adapt(calibration, memory, _unit(0.0), np.array([[0.1, 0.3]]), np.array([[False, True]]))
    np.testing.assert_allclose(scores, [[0.75, 1.0]])
    assert tags.tolist() == [[True, True]]
    # The same task predicted again: its own example does not vote; the vote is 0 and A stays below the line.
    scores, tags = adapt(calibration, memory, _unit(0.0), np.array([[0.1, 0.3]]), np.array([[False, True]]), [7])
    np.testing.assert_allclose(scores, [[0.75 * NEUTRAL, 1.0]])
    assert tags.tolist() == [[False, True]]
    # A calibrated threshold replaces the NEUTRAL line: 0.75 >= 0.8 fails.
    strict = Calibration(("A", "B"), 0.75, 10.0, (True, False), (0.8, None))
    assert adapt(strict, memory, _unit(0.0), np.array([[0.1, 0.3]]), np.array([[False, True]]))[1].tolist() == [
        [False, True]
    ]


def test_adapt_without_positives_or_examples_returns_tagclips_output_unchanged():
    scores, tags = np.array([[0.1, 0.3]]), np.array([[False, True]])
    nothing = Calibration(("A", "B"), 0.9, 10.0, (False, False), (None, None))
    memory = _memory(_unit(0.0), [[False, False]], [[0.2, 0.3]])
    out_scores, out_tags = adapt(nothing, memory, _unit(0.0), scores, tags)
    assert np.array_equal(out_scores, scores) and np.array_equal(out_tags, tags)
    empty = Memory(np.zeros((0, 2), np.float32), np.zeros((0, 2), bool), np.zeros((0, 2), np.float32), np.zeros(0))
    active = Calibration(("A", "B"), 0.9, 10.0, (True, False), (None, None))
    out_scores, out_tags = adapt(active, empty, _unit(0.0), scores, tags)
    assert np.array_equal(out_scores, scores) and np.array_equal(out_tags, tags)


def test_leave_one_out_votes_by_hand():
    """e0 = e1, e2 orthogonal; labels (1, 1, 0); beta 1. Row 0 sees row 1 (w 1) and row 2 (w e^-1):
    (1 - e^-1) / (1 + e^-1) = tanh(1/2). Row 2 sees rows 0 and 1 (w e^-1 each, total < 1): 2 e^-1."""
    memory = _memory(_unit(0.0, 0.0, 90.0), [[True], [True], [False]], [[0.0], [0.0], [0.0]])
    votes = leave_one_out_votes(memory, np.arange(3), beta=1.0, block_rows=2)
    np.testing.assert_allclose(votes[:, 0], [math.tanh(0.5), math.tanh(0.5), 2 * math.exp(-1.0)], rtol=1e-6)


def _clustered(seed: int = 0, per_cluster: int = 6):
    """Two tight clusters of near-duplicates (within 2 degrees), 80 degrees apart; cluster 0 is "A", cluster 1
    is "B". TagCLIP's scores say the opposite (B high on cluster 0), so only the memory can get them right."""
    rng = np.random.default_rng(seed)
    angles = np.concatenate([rng.uniform(0, 2, per_cluster), rng.uniform(80, 82, per_cluster)])
    labels = [[True, False]] * per_cluster + [[False, True]] * per_cluster
    scores = [[0.2, 0.8]] * per_cluster + [[0.8, 0.2]] * per_cluster
    return _memory(_unit(*angles), labels, scores)


def test_calibration_picks_the_memory_where_neighbours_know_better():
    calibration = calibrate(_clustered(), ("A", "B"), ScoringConfig(min_support=3))
    assert calibration.alpha >= 0.5  # the vote must outweigh TagCLIP's (wrong) relevance
    assert calibration.objective == pytest.approx(1.0)
    # Ties go to the least change: no smaller alpha, and no smaller beta with this alpha, reaches AP 1.
    weaker = calibrate(_clustered(), ("A", "B"), ScoringConfig(alphas=(calibration.alpha,), betas=(1.0,)))
    assert calibration.beta == 1.0 or weaker.objective < 1.0
    assert calibration.seen == (True, True) and all(t is not None for t in calibration.thresholds)
    scores, tags = adapt(calibration, _clustered(), _unit(1.0), np.array([[0.2, 0.8]]), np.array([[False, True]]))
    assert tags.tolist() == [[True, False]]  # the near-duplicate of cluster 0 gets A, against TagCLIP


def test_calibration_keeps_tagclip_where_neighbours_carry_no_information():
    """One label per image, which TagCLIP's scores rank perfectly but the embeddings do not follow: alpha 0 wins."""
    rng = np.random.default_rng(3)
    first = rng.random(12) < 0.5
    first[0], first[1] = True, False
    labels = np.stack([first, ~first], axis=1)
    scores = np.where(labels, 0.9, 0.1) + rng.uniform(0, 0.01, labels.shape)
    memory = _memory(_unit(*rng.uniform(0, 360, 12)), labels, scores)
    calibration = calibrate(memory, ("A", "B"), ScoringConfig(betas=(1.0, 30.0)))
    assert calibration.alpha == 0.0
    assert calibration.objective == pytest.approx(1.0)


def test_thresholds_need_the_minimum_support_and_unseen_labels_get_none():
    memory = _clustered(per_cluster=2)  # 2 positives per label
    assert calibrate(memory, ("A", "B"), ScoringConfig(min_support=3)).thresholds == (None, None)
    assert all(t is not None for t in calibrate(memory, ("A", "B"), ScoringConfig(min_support=2)).thresholds)
    only_a = _memory(_unit(0, 1, 2), [[True, False]] * 3, [[0.5, 0.4]] * 3)
    calibration = calibrate(only_a, ("A", "B"), ScoringConfig(min_support=1))
    assert calibration.seen == (True, False) and calibration.thresholds[1] is None


def test_an_empty_or_single_example_memory_calibrates_to_nothing():
    empty = Memory(np.zeros((0, 2), np.float32), np.zeros((0, 1), bool), np.zeros((0, 1), np.float32), np.zeros(0))
    assert not calibrate(empty, ("A",)).active
    one = _memory(_unit(0.0), [[True]], [[0.5]])
    calibration = calibrate(one, ("A",))
    assert calibration.active and calibration.alpha == 0.0 and calibration.thresholds == (None,)


def test_best_threshold_is_the_brute_force_maximum():
    rng = np.random.default_rng(5)
    for _ in range(20):
        scores = np.round(rng.random(15), 1)
        truth = rng.random(15) < 0.4
        positives = int(truth.sum()) + 1  # one positive no candidate covers
        t, f1 = best_threshold(scores, truth, positives)
        brute = max(
            (2 * int((truth & (scores >= c)).sum()) / (int((scores >= c).sum()) + positives), c)
            for c in sorted(set(scores.tolist()), reverse=True)
        )
        assert f1 == pytest.approx(brute[0]) and t == pytest.approx(brute[1])


def test_calibration_round_trips_through_json():
    calibration = Calibration(("A", "B"), 0.5, 30.0, (True, False), (0.61, None), 12, 0.8)
    assert Calibration.from_json(calibration.to_json()) == calibration


def test_cross_validation_predicts_each_fold_from_the_others_only():
    memory = _clustered(per_cluster=5)
    held = cross_validate(memory, ("A", "B"), folds=5, config=ScoringConfig(min_support=2))
    assert held.truth.shape == held.memory_scores.shape == (10, 2)
    assert np.array_equal(held.alone_tags, relative_tags(memory.scores, 0.5))
    assert np.array_equal(held.alone_scores, memory.scores.astype(np.float64))
    assert np.array_equal(held.memory_tags, held.truth)  # the clusters are learnable from the other folds
    # Two examples that share nothing with the rest: each is predicted without itself, so TagCLIP's tags stay.
    lonely = _memory(_unit(0.0, 90.0), [[True, False], [False, True]], [[0.2, 0.8], [0.8, 0.2]])
    lonely_held = cross_validate(lonely, ("A", "B"), folds=2)
    assert np.array_equal(lonely_held.memory_tags, lonely_held.alone_tags)


def test_tagclip_tags_and_single_choice():
    scores = np.array([[0.1, 0.3, 0.2], [0.5, 0.5, 0.5]], dtype=np.float32)
    assert tagclip_tags(scores).tolist() == [[False, True, False], [True, False, False]]
    assert single_choice(np.array([[0.2, 0.9, 0.1]])).tolist() == [[False, True, False]]
