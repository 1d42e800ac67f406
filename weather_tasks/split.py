"""Train/val/test assignment: stable, per-class balanced, leak-free.

- An image is keyed by its content hash, so duplicates share one record and one split.
- A split, once assigned, is never changed (the manifest carries it forward).
- The first ingest of a corpus (no manifest yet) is split exactly as the seed did:
  ``splitfolders.ratio(class_folders, seed=123, ratio=...)`` per class.
- Later batches are often 1-5 images, where split-folders' rounding sends all of them to
  train. Each new image instead goes to the split of its class that is furthest below
  its target share (the largest deficit ``ratio * (n + 1) - count``), visiting the batch
  in content-hash order (seeded, as TFX's hash split) so the outcome does not depend on
  listing order. Per-class shares then stay within about one image of the targets.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import splitfolders

log = logging.getLogger(__name__)
SPLIT_NAMES = ("train", "val", "test")


def split_names(ratios: Sequence[float]) -> tuple[str, ...]:
    return SPLIT_NAMES[: len(ratios)]


def warn_if_two_way(ratios: Sequence[float]) -> None:
    if len(ratios) == 2:
        log.warning(
            "split ratio %s has no test split: the val split doubles as the test split, "
            "so evaluation on it is optimistic (it also drives the LR schedule)",
            tuple(ratios),
        )


def bulk_split(
    items: Iterable[tuple[str, str]], ratios: Sequence[float], seed: int
) -> dict[str, str]:
    """The seed's procedure: split-folders over one folder per class. items: (sha256, label)."""
    by_sha: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="weather-split-") as tmp:
        src, out = Path(tmp, "in"), Path(tmp, "out")
        for sha, label in items:
            (src / label).mkdir(parents=True, exist_ok=True)
            (src / label / sha).touch()  # empty stand-ins: only the names are shuffled
        if not src.exists():
            return {}
        splitfolders.ratio(str(src), output=str(out), seed=seed, ratio=tuple(ratios))
        for split in split_names(ratios):
            for path in (out / split).glob("*/*"):
                by_sha[path.name] = split
    return by_sha


def incremental_split(
    items: Iterable[tuple[str, str]],
    counts: Mapping[str, Mapping[str, int]],
    ratios: Sequence[float],
    seed: int,
) -> dict[str, str]:
    """Assign new (sha256, label) items given current ``counts[label][split]``."""
    names = split_names(ratios)
    current = {label: {s: counts.get(label, {}).get(s, 0) for s in names} for label in counts}
    out: dict[str, str] = {}
    for sha, label in sorted(items, key=lambda item: _order_key(item[0], seed)):
        have = current.setdefault(label, dict.fromkeys(names, 0))
        n = sum(have.values()) + 1
        split = max(names, key=lambda s: (ratios[names.index(s)] * n - have[s], -names.index(s)))
        have[split] += 1
        out[sha] = split
    return out


def _order_key(sha: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{sha}".encode()).hexdigest()
