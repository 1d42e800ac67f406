"""Split rules: the seed's split-folders bulk split, stable and balanced incremental splits."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest
import splitfolders  # noqa: F401 - the bulk split must be split-folders itself

from weather_tasks.split import bulk_split, incremental_split

CLASSES = ("shine", "sunrise", "cloudy", "rain")
RATIOS = (0.7, 0.15, 0.15)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_bulk_split_matches_split_folders_per_class() -> None:
    items = [(_sha(f"{c}{i}"), c) for c in CLASSES for i in range(100)]
    out = bulk_split(items, RATIOS, seed=123)
    assert len(out) == 400
    for c in CLASSES:
        got = Counter(out[sha] for sha, label in items if label == c)
        assert got == {"train": 70, "val": 15, "test": 15}
    # deterministic for the same seed, different for another seed
    assert bulk_split(items, RATIOS, seed=123) == out
    assert bulk_split(items, RATIOS, seed=7) != out


def test_bulk_split_two_way_like_the_seed() -> None:
    items = [(_sha(f"x{i}"), "rain") for i in range(10)]
    assert Counter(bulk_split(items, (0.7, 0.3), seed=123).values()) == {"train": 7, "val": 3}


def test_incremental_split_is_order_independent() -> None:
    items = [(_sha(f"n{i}"), CLASSES[i % 4]) for i in range(9)]
    counts = {c: {"train": 7, "val": 1, "test": 2} for c in CLASSES}
    assert incremental_split(items, counts, RATIOS, 123) == incremental_split(
        list(reversed(items)), counts, RATIOS, 123
    )


def _simulate(assign, seed: int, initial_per_class: int = 0) -> dict[str, Counter]:
    """An optional initial corpus (bulk split), then 30 nightly batches of 1-5 images.

    Returns per-class split counts: of the whole dataset, or of the new images alone when
    there is no initial corpus."""
    rnd = random.Random(seed)
    counts: dict[str, Counter] = {c: Counter() for c in CLASSES}
    initial = [(_sha(f"init-{c}-{i}"), c) for c in CLASSES for i in range(initial_per_class)]
    for sha, split in bulk_split(initial, RATIOS, 123).items():
        counts[dict(initial)[sha]][split] += 1
    for night in range(30):
        batch = [
            (_sha(f"{seed}-{night}-{i}"), rnd.choice(CLASSES)) for i in range(rnd.randint(1, 5))
        ]
        for sha, split in assign(batch, counts).items():
            counts[dict(batch)[sha]][split] += 1
    return counts


def _worst_deviation(counts: dict[str, Counter], in_images: bool = False) -> float:
    """Largest |share - target| over classes and splits (or |count - target count|)."""
    worst = 0.0
    for c in CLASSES:
        n = sum(counts[c].values())
        for ratio, split in zip(RATIOS, ("train", "val", "test"), strict=True):
            off = abs(counts[c][split] - ratio * n)
            worst = max(worst, off if in_images else off / n)
    return worst


def _ours(batch, cur):
    return incremental_split(batch, cur, RATIOS, 123)


def _split_folders_per_batch(batch, cur):
    return bulk_split(batch, RATIOS, 123)


@pytest.mark.parametrize("seed", range(10))
def test_tiny_batches_keep_class_ratios_within_3_points(seed: int) -> None:
    # A 40-per-class corpus (as the demo's first night), then 30 nights of 1-5 images.
    assert _worst_deviation(_simulate(_ours, seed, initial_per_class=40)) <= 0.03
    assert _worst_deviation(_simulate(_split_folders_per_batch, seed, 40)) > 0.03


@pytest.mark.parametrize("seed", range(10))
def test_new_images_alone_are_as_balanced_as_whole_images_allow(seed: int) -> None:
    # ~90 new images, ~22 per class: each split is within one image of its exact target
    # (3 points of 16 images is 0.48 of an image, so "within 3 points" cannot be asked here).
    counts = _simulate(_ours, seed)
    assert _worst_deviation(counts, in_images=True) < 1.0
    assert _worst_deviation(_simulate(_split_folders_per_batch, seed), in_images=True) > 3


def test_existing_imbalance_is_corrected() -> None:
    counts = {"rain": {"train": 10, "val": 0, "test": 0}}
    out = incremental_split([(_sha("a"), "rain"), (_sha("b"), "rain")], counts, RATIOS, 123)
    assert sorted(out.values()) == ["test", "val"]
