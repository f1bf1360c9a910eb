"""The memory's numerics: how reviewed examples change one control's scores and tags. numpy only, pure.

For one whole-image control with C labels, a memory of K reviewed examples holds their CLIP embeddings
E [K, D] (L2-normalised), the reviewer's labels Y [K, C] (bool) and TagCLIP's own scores S [K, C].
For a query image with embedding q [D] and TagCLIP scores s [C]:

* relevance  r_c = (s_c - min s) / (max s - min s), in [0, 1] (0 when all scores are equal). TagCLIP's tag rule
  is r_c > 0.5 (tag_rel_threshold), so 0.5 is where TagCLIP draws its line (`NEUTRAL`).
* affinity   w_k = exp(-beta (1 - q . e_k)): 1 for the same image, smaller for less similar ones (Tip-Adapter).
* vote       v_c = sum_k w_k (2 Y_kc - 1) / max(1, sum_k w_k), in [-1, 1]: reviewed images vote for the labels
  they have and against those they lack; far from every reviewed image (sum w < 1) the vote fades to 0.
* combined   m_c = (1 - alpha) r_c + alpha (v_c + 1) / 2, in [0, 1]: a vote of 0 maps to NEUTRAL, so where the
  memory knows nothing the line stays TagCLIP's.
* tag        m_c >= t_c, the label's calibrated threshold; m_c > NEUTRAL for a label with too few reviewed
  positives to calibrate one (fewer than `min_support`).

A label no reviewed example has (no positive in the memory) keeps TagCLIP's behaviour: its tag is TagCLIP's and
its score is r_c (the scale the combined scores share, so a single-choice control compares like with like).
An empty memory, or one without any positive, changes nothing: the scores and tags are TagCLIP's own.

alpha and beta are chosen per control on the memory alone, by leave-one-out: each of the newest
`max_queries` examples is scored from all the others, and the pair with the best mean AP over labels wins
(ties go to the smaller alpha, then the smaller beta: the least change). The thresholds are the best-F1
thresholds on those leave-one-out scores. Nothing is ever chosen on the image being predicted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tagclip_core.metrics import average_precision
from tagclip_core.tags import relative_tags

# Relevance at which TagCLIP's relative rule (tag_rel_threshold 0.5) tags a label.
NEUTRAL = 0.5
# Objectives closer than this count as a tie (then the smaller alpha, then the smaller beta wins).
_TIE = 1e-9


@dataclass(frozen=True)
class ScoringConfig:
    """The search space and limits of the calibration."""

    # Blend weights of the memory's vote tried by leave-one-out (0 = TagCLIP's relevance alone).
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9)
    # Sharpness of the affinity tried by leave-one-out (larger = only very similar images vote).
    betas: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
    # Reviewed positives a label needs for a threshold of its own; below it the NEUTRAL line applies.
    min_support: int = 3
    # TagCLIP's relative tag threshold (EngineConfig's tag_rel_threshold), for the TagCLIP-alone tags.
    rel_threshold: float = 0.5
    # Newest examples scored by leave-one-out (bounds the calibration's cost for a large memory).
    max_queries: int = 2000
    # Query rows per block when computing affinities (bounds memory: block x K floats).
    block_rows: int = 1024


@dataclass(frozen=True)
class Calibration:
    """What a control's memory adds, chosen on the memory alone."""

    labels: tuple[str, ...]  # the control's labels, in order
    alpha: float
    beta: float
    seen: tuple[bool, ...]  # per label: at least one reviewed positive
    thresholds: tuple[float | None, ...]  # per label: the calibrated threshold, or None for the NEUTRAL line
    examples: int = 0  # memory size it was chosen on
    objective: float | None = None  # its leave-one-out mean AP

    @property
    def active(self) -> bool:
        """False when it changes nothing (no label has a reviewed positive)."""
        return any(self.seen)

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": list(self.labels),
            "alpha": self.alpha,
            "beta": self.beta,
            "seen": list(self.seen),
            "thresholds": list(self.thresholds),
            "examples": self.examples,
            "objective": self.objective,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        return cls(
            labels=tuple(str(x) for x in data["labels"]),
            alpha=float(data["alpha"]),
            beta=float(data["beta"]),
            seen=tuple(bool(x) for x in data["seen"]),
            thresholds=tuple(None if t is None else float(t) for t in data["thresholds"]),
            examples=int(data.get("examples", 0)),
            objective=None if data.get("objective") is None else float(data["objective"]),
        )


@dataclass(frozen=True)
class Memory:
    """One control's reviewed examples as arrays."""

    embeddings: np.ndarray  # [K, D] float32, L2-normalised
    labels: np.ndarray  # [K, C] bool: the reviewer's labels
    scores: np.ndarray  # [K, C] float32: TagCLIP's scores of each reviewed image
    tasks: np.ndarray  # [K] int64: the reviewed tasks (to leave a task's own example out of its prediction)

    def __post_init__(self) -> None:
        k = len(self.embeddings)
        if not (len(self.labels) == len(self.scores) == len(self.tasks) == k):
            raise ValueError(
                f"memory arrays disagree: {k} embeddings, {len(self.labels)} label rows, "
                f"{len(self.scores)} score rows, {len(self.tasks)} tasks"
            )

    @property
    def size(self) -> int:
        return len(self.embeddings)

    def subset(self, rows: np.ndarray) -> Memory:
        return Memory(self.embeddings[rows], self.labels[rows], self.scores[rows], self.tasks[rows])


# --- the formulas ---
def relevance(scores: np.ndarray) -> np.ndarray:
    """Per-row min-max normalised scores [N, C] -> [0, 1]; a row of equal scores gives 0."""
    values = np.asarray(scores, dtype=np.float64)
    low = values.min(axis=-1, keepdims=True)
    span = values.max(axis=-1, keepdims=True) - low
    return np.divide(values - low, span, out=np.zeros_like(values), where=span > 0)


def affinity(queries: np.ndarray, memory: np.ndarray, beta: float) -> np.ndarray:
    """exp(-beta (1 - cos)) [Q, K] between L2-normalised queries [Q, D] and memory embeddings [K, D]."""
    cosine = np.asarray(queries, dtype=np.float32) @ np.asarray(memory, dtype=np.float32).T
    return np.exp(-beta * (1.0 - cosine.astype(np.float64)))


def vote(weights: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The memory's vote [Q, C] in [-1, 1]: sum_k w_qk (2 y_kc - 1) / max(1, sum_k w_qk)."""
    signed = np.where(np.asarray(labels, dtype=bool), 1.0, -1.0)
    total = np.maximum(1.0, weights.sum(axis=1, keepdims=True))
    return (weights @ signed) / total


def combine(relevance_scores: np.ndarray, votes: np.ndarray, alpha: float) -> np.ndarray:
    """(1 - alpha) r + alpha (v + 1) / 2: TagCLIP's relevance blended with the vote, in [0, 1]."""
    return (1.0 - alpha) * relevance_scores + alpha * (votes + 1.0) / 2.0


def tagclip_tags(scores: np.ndarray, rel: float = 0.5) -> np.ndarray:
    """TagCLIP's own tags [N, C] from its scores (the engine's relative rule, argmax when none passes)."""
    return relative_tags(np.asarray(scores, dtype=np.float32), rel)


def best_threshold(scores: np.ndarray, hits: np.ndarray, positives: int) -> tuple[float | None, float | None]:
    """The threshold t maximising F1 when every item with score >= t is predicted.

    scores, hits [M]: the candidate predictions and whether each is right; positives: all true labels
    (including ones no candidate covers). Ties in F1 go to the higher t. (None, None) without candidates
    or positives.
    """
    if len(scores) == 0 or positives == 0:
        return None, None
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_hits = scores[order], hits[order].astype(np.int64)
    tp = np.cumsum(sorted_hits)
    predicted = np.arange(1, len(sorted_scores) + 1)
    # Only the last item of each run of equal scores is a threshold (score >= t takes the whole run).
    last_of_run = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    tp, predicted, candidates = tp[last_of_run], predicted[last_of_run], sorted_scores[last_of_run]
    f1 = 2 * tp / (predicted + positives)
    best = int(np.argmax(f1))  # first maximum = highest threshold, as candidates descend
    return float(candidates[best]), float(f1[best])


# --- leave-one-out ---
def leave_one_out_votes(memory: Memory, queries: np.ndarray, beta: float, block_rows: int) -> np.ndarray:
    """Votes [Q, C] for the memory rows `queries`, each from every other row (its own weight set to 0)."""
    out = np.empty((len(queries), memory.labels.shape[1]), dtype=np.float64)
    for start in range(0, len(queries), block_rows):
        rows = queries[start : start + block_rows]
        weights = affinity(memory.embeddings[rows], memory.embeddings, beta)
        weights[np.arange(len(rows)), rows] = 0.0
        out[start : start + len(rows)] = vote(weights, memory.labels)
    return out


def mean_ap(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """Mean AP [N, C] over the labels that have both a positive and a negative (None if none has)."""
    usable = truth.any(axis=0) & (~truth).any(axis=0)
    if not usable.any():
        return None
    return float(np.mean(average_precision(scores[:, usable], truth[:, usable])))


def calibrate(memory: Memory, labels: Sequence[str], config: ScoringConfig = ScoringConfig()) -> Calibration:
    """alpha, beta and per-label thresholds for one control, chosen by leave-one-out on `memory` alone."""
    labels = tuple(labels)
    if memory.labels.shape[1:] != (len(labels),):
        raise ValueError(f"memory has {memory.labels.shape[1:]} label columns for {len(labels)} labels")
    seen = tuple(bool(x) for x in memory.labels.any(axis=0)) if memory.size else (False,) * len(labels)
    none = (None,) * len(labels)
    if not any(seen) or memory.size < 2:
        return Calibration(labels, 0.0, min(config.betas), seen, none, memory.size)
    queries = np.arange(max(0, memory.size - config.max_queries), memory.size)
    truth = memory.labels[queries]
    relevant = relevance(memory.scores[queries])
    tried: list[tuple[float, float, float]] = []  # (objective, alpha, beta)
    for beta in config.betas:
        votes = leave_one_out_votes(memory, queries, beta, config.block_rows)
        for alpha in config.alphas:
            objective = mean_ap(combine(relevant, votes, alpha), truth)
            if objective is not None:
                tried.append((objective, alpha, beta))
    if tried:
        top = max(t[0] for t in tried)
        objective, alpha, beta = min((t for t in tried if t[0] >= top - _TIE), key=lambda t: (t[1], t[2]))
    else:  # no label has both a positive and a negative among the queries: thresholds only
        objective, alpha, beta = float("nan"), 0.0, min(config.betas)
    scores = combine(relevant, leave_one_out_votes(memory, queries, beta, config.block_rows), alpha)
    thresholds = []
    for j, is_seen in enumerate(seen):
        positives = int(truth[:, j].sum())
        if not is_seen or positives < config.min_support:
            thresholds.append(None)
            continue
        thresholds.append(best_threshold(scores[:, j], truth[:, j], positives)[0])
    return Calibration(
        labels, alpha, beta, seen, tuple(thresholds), memory.size, None if np.isnan(objective) else objective
    )


# --- prediction ---
def adapt(
    calibration: Calibration,
    memory: Memory,
    embeddings: np.ndarray,
    scores: np.ndarray,
    tags: np.ndarray,
    tasks: Sequence[int | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores [Q, C] and tags [Q, C] of Q images with the memory: embeddings [Q, D], TagCLIP's scores and tags
    [Q, C]. `tasks` are the images' task ids: a task's own reviewed example never votes on it.

    Returns TagCLIP's scores and tags unchanged when the calibration is inactive or the memory is empty."""
    scores = np.asarray(scores, dtype=np.float64)
    tags = np.asarray(tags, dtype=bool)
    if not calibration.active or memory.size == 0:
        return scores, tags
    relevant = relevance(scores)
    weights = affinity(embeddings, memory.embeddings, calibration.beta)
    if tasks is not None:
        own = np.array([-1 if t is None else t for t in tasks], dtype=np.int64)[:, None] == memory.tasks[None, :]
        weights[own] = 0.0
    combined = combine(relevant, vote(weights, memory.labels), calibration.alpha)
    seen = np.array(calibration.seen, dtype=bool)
    thresholds = np.array([NEUTRAL if t is None else t for t in calibration.thresholds], dtype=np.float64)
    calibrated = np.array([t is not None for t in calibration.thresholds], dtype=bool)
    passes = np.where(calibrated, combined >= thresholds, combined > NEUTRAL)
    out_scores = np.where(seen, combined, relevant)
    out_tags = np.where(seen, passes, tags)
    return out_scores, out_tags


# --- cross-validation (tagclip report) ---
@dataclass(frozen=True)
class HeldOut:
    """Every example's scores and tags predicted without its own fold: TagCLIP alone and with the memory."""

    truth: np.ndarray  # [K, C] bool
    alone_scores: np.ndarray  # [K, C] TagCLIP's scores
    alone_tags: np.ndarray  # [K, C] TagCLIP's tags
    memory_scores: np.ndarray  # [K, C]
    memory_tags: np.ndarray  # [K, C]


def cross_validate(
    memory: Memory, labels: Sequence[str], folds: int = 5, config: ScoringConfig = ScoringConfig(), seed: int = 0
) -> HeldOut:
    """k-fold cross-validation on the reviewed examples: each fold is predicted with a memory (and a calibration)
    made of the other folds only."""
    size = memory.size
    if size < 2:
        raise ValueError(f"cross-validation needs at least 2 reviewed examples, got {size}")
    folds = max(2, min(folds, size))
    order = np.random.default_rng(seed).permutation(size)
    fold_of = np.empty(size, dtype=np.int64)
    fold_of[order] = np.arange(size) % folds
    alone_tags = tagclip_tags(memory.scores, config.rel_threshold)
    memory_scores = np.zeros(memory.scores.shape, dtype=np.float64)
    memory_tags = np.zeros(memory.scores.shape, dtype=bool)
    for fold in range(folds):
        held = np.flatnonzero(fold_of == fold)
        train = memory.subset(np.flatnonzero(fold_of != fold))
        calibration = calibrate(train, labels, config)
        scores, tags = adapt(
            calibration, train, memory.embeddings[held], memory.scores[held], alone_tags[held], memory.tasks[held]
        )
        memory_scores[held], memory_tags[held] = scores, tags
    return HeldOut(memory.labels.copy(), memory.scores.astype(np.float64), alone_tags, memory_scores, memory_tags)


def single_choice(scores: np.ndarray) -> np.ndarray:
    """The top label of each row [N, C] as a bool mask (what a single-choice control keeps)."""
    mask = np.zeros(scores.shape, dtype=bool)
    if scores.size:
        mask[np.arange(len(scores)), scores.argmax(axis=1)] = True
    return mask
