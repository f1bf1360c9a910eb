"""Train/val/test splits of a curated dataset: near-duplicate images grouped, then the groups split by
multi-label iterative stratification (Sechidis et al., ECML PKDD 2011, as implemented by the
`iterative-stratification` package), seeded.

* Near duplicates: two images whose 64-bit difference hashes (dHash, `imagehash`) differ in at most
  `max_distance` bits are one group, transitively (union-find); identical files always are. A group never
  straddles two splits, so a training image has no near-copy in val or test.
* Stratification: each group is one sample whose label vector is the union of its tasks' labels, plus one
  "has this kind of annotation" column per kind (tags, masks, boxes, polygons), so that each split gets its
  share of every label and of every kind. A split with a fraction of 0 gets nothing.
* Coverage: where stratification leaves a non-empty split without any example of a kind that others have,
  a group holding that kind moves there from the split that has most of them (if that split keeps one):
  per-split files then describe every kind (the Hugging Face loader needs the same columns in each split).

numpy, imagehash and iterative-stratification (scikit-learn); no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SPLIT_NAMES = ("train", "val", "test")
# Bits of a 64-bit dHash two images may differ in and still be near duplicates.
DEFAULT_MAX_DISTANCE = 6
_HASH_BITS = 64
# Rows of the pairwise distance matrix computed at once (memory: block x n bytes).
_BLOCK = 256


@dataclass(frozen=True)
class SplitConfig:
    """How to split."""

    # Fractions of train, val and test (they sum to 1).
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # Seed of the stratification's tie-breaking.
    seed: int = 0
    # Near-duplicate distance in dHash bits; a negative value groups only identical files.
    max_distance: int = DEFAULT_MAX_DISTANCE


@dataclass(frozen=True)
class Sample:
    """One exported task as the splitter sees it."""

    task: int
    # The image file's content hash (identical files share it) and its 64-bit dHash, as 16 hex digits.
    content: str
    dhash: str
    # Labels as (control, label) pairs, and the kinds of annotation it has ("tags", "masks", ...).
    labels: frozenset[tuple[str, str]]
    kinds: frozenset[str]


def parse_fractions(text: str) -> tuple[float, float, float]:
    """ "0.8,0.1,0.1" (or "80,10,10": normalised) -> three fractions summing to 1; raises ValueError."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != len(SPLIT_NAMES):
        raise ValueError(f"expected three numbers train,val,test, got {text!r}")
    values = [float(p) for p in parts]
    if any(not np.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"fractions must be >= 0 with a positive sum, got {text!r}")
    total = sum(values)
    train, val, test = (v / total for v in values)
    return train, val, test


def dhash_hex(image: object) -> str:
    """The 64-bit difference hash of a PIL image, 16 hex digits."""
    import imagehash

    return str(imagehash.dhash(image, hash_size=8))


def near_duplicate_groups(samples: Sequence[Sample], max_distance: int) -> list[list[int]]:
    """Indices of `samples` grouped: same content, or dHashes within `max_distance` bits (transitively).
    Groups are ordered by their first index, members ascending."""
    parent = list(range(len(samples)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    first_of: dict[str, int] = {}
    for i, sample in enumerate(samples):
        union(i, first_of.setdefault(sample.content, i))
    if max_distance >= 0 and len(samples) > 1:
        for i, j in _close_pairs([s.dhash for s in samples], max_distance):
            union(i, j)
    groups: dict[int, list[int]] = {}
    for i in range(len(samples)):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def _close_pairs(hashes: Sequence[str], max_distance: int) -> list[tuple[int, int]]:
    """Pairs (i < j) of 64-bit hex hashes at Hamming distance <= max_distance."""
    packed = np.frombuffer(b"".join(bytes.fromhex(h.rjust(16, "0")) for h in hashes), dtype=np.uint8)
    bits = np.unpackbits(packed).reshape(len(hashes), _HASH_BITS).astype(np.int16)
    pairs = []
    for start in range(0, len(hashes), _BLOCK):
        block = bits[start : start + _BLOCK]
        # Hamming distance = bits set in one and not the other, from two matrix products.
        distance = block @ (1 - bits).T + (1 - block) @ bits.T
        rows, cols = np.nonzero(distance <= max_distance)
        pairs += [(start + int(r), int(c)) for r, c in zip(rows, cols, strict=True) if start + int(r) < int(c)]
    return pairs


def assign_splits(samples: Sequence[Sample], config: SplitConfig) -> dict[int, str]:
    """task -> split name, for every sample."""
    if not samples:
        return {}
    groups = near_duplicate_groups(samples, config.max_distance)
    active = [i for i, fraction in enumerate(config.fractions) if fraction > 0]
    if len(active) == 1:
        return {s.task: SPLIT_NAMES[active[0]] for s in samples}
    matrix, kind_columns = _group_matrix(samples, groups)
    ratios = np.array([config.fractions[i] for i in active], dtype=np.float64)
    folds = _stratify(matrix, ratios / ratios.sum(), config.seed)
    folds = _cover_kinds(folds, matrix[:, kind_columns], len(active))
    out: dict[int, str] = {}
    for group, fold in zip(groups, folds, strict=True):
        for index in group:
            out[samples[index].task] = SPLIT_NAMES[active[int(fold)]]
    return out


def _group_matrix(samples: Sequence[Sample], groups: Sequence[Sequence[int]]) -> tuple[np.ndarray, list[int]]:
    """bool [groups, labels + kinds]: a group has a label (or kind) when any of its samples has; and the column
    indices of the kinds."""
    labels = sorted({label for s in samples for label in s.labels})
    kinds = sorted({kind for s in samples for kind in s.kinds})
    columns = {("label", *label): i for i, label in enumerate(labels)}
    columns.update({("kind", kind): len(labels) + i for i, kind in enumerate(kinds)})
    matrix = np.zeros((len(groups), len(columns)), dtype=bool)
    for row, group in enumerate(groups):
        for index in group:
            sample = samples[index]
            for label in sample.labels:
                matrix[row, columns[("label", *label)]] = True
            for kind in sample.kinds:
                matrix[row, columns[("kind", kind)]] = True
    return matrix, [columns[("kind", kind)] for kind in kinds]


def _stratify(matrix: np.ndarray, ratios: np.ndarray, seed: int) -> np.ndarray:
    """Fold index per row of a bool label matrix, by iterative stratification of the rows in a seeded random
    order (the algorithm takes samples in order and breaks only ties at random, so the order is what the seed
    changes, as in the package's own shuffling splitters)."""
    from iterstrat.ml_stratifiers import IterativeStratification

    random_state = np.random.RandomState(seed)
    order = random_state.permutation(len(matrix))
    folds = np.empty(len(matrix), dtype=np.int64)
    folds[order] = IterativeStratification(matrix[order], ratios, random_state)
    return folds


def _cover_kinds(folds: np.ndarray, kinds: np.ndarray, n_folds: int) -> np.ndarray:
    """Move groups so that every non-empty fold has at least one group of each kind, where the fold holding most
    of that kind can spare one. kinds: bool [groups, kinds]."""
    folds = folds.copy()
    for column in range(kinds.shape[1]):
        has = kinds[:, column]
        for fold in range(n_folds):
            if not (folds == fold).any() or (has & (folds == fold)).any():
                continue
            counts = np.bincount(folds[has], minlength=n_folds)
            donor = int(np.argmax(counts))
            in_donor = folds == donor
            # A donor group whose every kind the donor fold still has elsewhere; the one with fewest kinds.
            spare = [
                g
                for g in np.flatnonzero(has & in_donor)
                if all((kinds[:, k] & in_donor).sum() > 1 for k in np.flatnonzero(kinds[g]))
            ]
            if spare:
                folds[min(spare, key=lambda g: (int(kinds[g].sum()), int(g)))] = fold
    return folds


def split_counts(assignment: Mapping[int, str]) -> dict[str, int]:
    """Tasks per split, in split order, for the splits that have any."""
    return {name: n for name in SPLIT_NAMES if (n := sum(1 for s in assignment.values() if s == name))}
