"""Splits of the curated export: fractions, seeded multi-label stratification, near duplicates in one split, and
every kind of annotation present in every split where it can be."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from tagclip_cli.splits import (
    Sample,
    SplitConfig,
    assign_splits,
    dhash_hex,
    near_duplicate_groups,
    parse_fractions,
    split_counts,
)
from tests.fixtures.images import synthetic_pixels

pytestmark = pytest.mark.unit

LABELS = ["cat", "dog", "car", "tree", "rare"]


def random_samples(n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        labels = {("tags", x) for x in LABELS[:4] if rng.random() < 0.35}
        if i % 25 == 0:
            labels.add(("tags", "rare"))
        samples.append(Sample(i, f"c{i}", f"{rng.getrandbits(64):016x}", frozenset(labels), frozenset({"tags"})))
    return samples


def label_share(samples: list[Sample], splits: dict[int, str]) -> dict[str, dict[str, float]]:
    totals = Counter(x for s in samples for _, x in s.labels)
    per_split = {name: Counter() for name in ("train", "val", "test")}
    for s in samples:
        per_split[splits[s.task]].update(x for _, x in s.labels)
    return {name: {x: counts[x] / totals[x] for x in totals} for name, counts in per_split.items()}


def test_parse_fractions():
    assert parse_fractions("0.8,0.1,0.1") == pytest.approx((0.8, 0.1, 0.1))
    assert parse_fractions("70, 20, 10") == pytest.approx((0.7, 0.2, 0.1))
    for bad in ("0.5,0.5", "a,b,c", "-1,1,1", "0,0,0", "nan,1,1"):
        with pytest.raises(ValueError):
            parse_fractions(bad)


def test_stratified_split_gives_every_label_its_share_and_is_seeded():
    samples = random_samples(400)
    splits = assign_splits(samples, SplitConfig((0.7, 0.2, 0.1), seed=3))
    assert split_counts(splits) == {"train": 280, "val": 80, "test": 40}
    shares = label_share(samples, splits)
    for label in LABELS[:4]:
        assert shares["train"][label] == pytest.approx(0.7, abs=0.03)
        assert shares["val"][label] == pytest.approx(0.2, abs=0.03)
    # The rare label (16 tasks) is in every split.
    assert all(shares[name]["rare"] > 0 for name in ("train", "val", "test"))
    assert assign_splits(samples, SplitConfig((0.7, 0.2, 0.1), seed=3)) == splits
    assert assign_splits(samples, SplitConfig((0.7, 0.2, 0.1), seed=4)) != splits


def test_stratification_beats_a_random_split_on_label_balance():
    """Iterative stratification keeps label shares closer to the fractions than a plain seeded shuffle."""
    samples = random_samples(120, seed=7)
    stratified = label_share(samples, assign_splits(samples, SplitConfig((0.6, 0.2, 0.2), seed=0)))
    errors_stratified, errors_random = [], []
    for seed in range(10):
        order = list(range(len(samples)))
        random.Random(seed).shuffle(order)
        shuffled = {samples[i].task: ("train" if r < 72 else "val" if r < 96 else "test") for r, i in enumerate(order)}
        shares = label_share(samples, shuffled)
        errors_random.append(sum(abs(shares["val"][x] - 0.2) for x in LABELS))
    errors_stratified.append(sum(abs(stratified["val"][x] - 0.2) for x in LABELS))
    assert errors_stratified[0] < np.mean(errors_random)


def test_a_zero_fraction_gets_nothing_and_one_split_needs_no_stratification():
    samples = random_samples(50)
    splits = assign_splits(samples, SplitConfig((0.9, 0.1, 0.0)))
    assert set(splits.values()) == {"train", "val"} and split_counts(splits)["val"] == 5
    assert set(assign_splits(samples, SplitConfig((0.0, 0.0, 1.0))).values()) == {"test"}
    assert assign_splits([], SplitConfig()) == {}


def _photo(seed: int) -> Image.Image:
    return Image.fromarray(synthetic_pixels(96, 128, seed))


def test_near_duplicates_share_a_split():
    """A re-encoded, slightly brightened and resized copy of an image hashes within a few bits; other images do
    not; the copies end in one split."""
    base = _photo(1)
    copies = [
        ImageEnhance.Brightness(base).enhance(1.08),
        base.resize((100, 75)),
    ]
    hashes = [dhash_hex(base), *(dhash_hex(c) for c in copies), *(dhash_hex(_photo(s)) for s in range(2, 40))]
    samples = [
        Sample(i, f"file{i}", h, frozenset({("tags", LABELS[i % 4])}), frozenset({"tags"}))
        for i, h in enumerate(hashes)
    ]
    groups = near_duplicate_groups(samples, max_distance=6)
    assert [0, 1, 2] in groups and sum(len(g) for g in groups) == len(samples)
    assert all(len(g) == 1 for g in groups if g != [0, 1, 2])
    for seed in range(5):
        splits = assign_splits(samples, SplitConfig((0.4, 0.3, 0.3), seed=seed))
        assert splits[0] == splits[1] == splits[2]
    # -1: only identical files are grouped.
    assert near_duplicate_groups(samples, max_distance=-1) == [[i] for i in range(len(samples))]


def test_identical_files_are_one_group_whatever_the_hash_distance():
    samples = [Sample(i, "same" if i in (3, 9) else f"f{i}", f"{i:016x}", frozenset(), frozenset()) for i in range(12)]
    groups = near_duplicate_groups(samples, max_distance=-1)
    assert [3, 9] in groups and len(groups) == 11


def test_every_split_gets_each_kind_of_annotation_where_it_can():
    """Masks on 3 of 30 tasks, all labelled alike: stratification alone may leave val or test without one; the
    coverage pass moves one there (each split's files then describe masks)."""
    samples = [
        Sample(
            i,
            f"f{i}",
            f"{random.Random(i).getrandbits(64):016x}",
            frozenset({("tags", "cat")}),
            frozenset({"tags", "masks"} if i in (0, 1, 2) else {"tags"}),
        )
        for i in range(30)
    ]
    for seed in range(5):
        splits = assign_splits(samples, SplitConfig((0.8, 0.1, 0.1), seed=seed))
        assert {splits[i] for i in (0, 1, 2)} == {"train", "val", "test"}
