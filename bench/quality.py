"""Benchmark: how good is the training recipe, and is an option better? Grouped k-fold CV.

Stratified k-fold cross-validation of the project's training recipe on the shared real
photos, with options compared on the same folds (paired):

- **Photos** as ingest would curate them: the label from the file name
  (``weather_tasks.label.label_for_key``), validity by content
  (``weather_tasks.validate.validate_image``: unreadable or odd files are skipped and counted
  by reason, as ingest would quarantine them; GIF, grayscale, palette, RGBA files are trained
  on as the RGB PNG ingest would store, written to a temporary folder), one image per distinct
  content (sha256 of the bytes; the same content under two labels is dropped, as ingest's
  ``conflicting_label``).
- **Folds** stratified by label and grouped by content hash (duplicates never straddle folds),
  deterministic from ``--fold-seed``. The validation set (``--val-fraction`` of each label,
  15 %) is carved from the training folds, never from the held-out fold: it drives the
  learning-rate schedule and picks the checkpoint, so taking it from the held-out fold would
  repeat the seed's optimism. Every option trains on exactly the same folds.
- **Training** is the pipeline's: ``config.from_env()`` (``WEATHER_*`` variables apply) plus
  ``--image-size/--epochs/--batch-size``, plus the option's overrides through
  ``config.override``; ``recipe.build_and_compile`` and ``recipe.fit`` (the seed's
  ReduceLROnPlateau on val accuracy, the best val-accuracy weights restored, precision resolved
  as ``train`` does) on ``data.make_dataset`` pipelines; the held-out fold is scored on the
  float32 copy serving gets, with ``metrics.compute_metrics``.
- **Measured** per (option, fold): held-out accuracy, per-class recall, training minutes in
  wall and CPU time of this process (``recipe.EpochTimer``: the training part of each epoch,
  validation excluded), and a time-to-accuracy curve: held-out accuracy of the current
  weights after every ``--curve-every`` epochs (and the last) against cumulative training
  CPU-minutes. The curve's evaluations are inference only on their own dataset (no dropout,
  no batch-norm update, no optimizer step), so training is the same with or without them;
  they cost extra time (about one held-out prediction per point), which is measured, reported
  as ``curve_eval_*`` and left out of the training minutes.
- **Results**: each fold is one JSON line appended to the results file as soon as it finishes
  (settings, fold, seeds, machine with its CPU flags as detected, versions, dataset counts).
  ``--resume`` skips (option, repeat, fold) already in the file, so a long run continues
  across sessions; commit the file each session. ``--report FILE`` re-prints the summary
  without training.
- **Summary** per option: mean held-out accuracy with a 95 % t-interval over folds (t with
  n-1 degrees of freedom for n fold results; the folds share training data, so this interval
  is optimistic: trust the paired test), per-class recall means, training minutes, throughput.
  Each option against the baseline (the first): the mean paired difference with the
  Nadeau-Bengio corrected resampled t-test (variance of the differences times
  ``1/n + n_test/n_train`` instead of ``1/n``, t with n-1 df; for repeated CV this is Bouckaert
  and Frank's corrected repeated k-fold test), its 95 % interval and p-value, and "adopt?" =
  the interval lies above zero. Then the time-to-accuracy curve per option.

Options: ``--option NAME=setting=value,setting=value`` (repeatable; ``--option base=`` is the
recipe as configured). Any training setting of ``PipelineConfig`` works, e.g.
``--option lr3=learning_rate=0.003 --option pat10=lr_patience=10``; settings added to the
recipe later work the same way with no change here. Values are parsed like their
``WEATHER_*`` variables (so a value cannot contain a comma).

Not a test: prints what it measured, asserts nothing about accuracy or time. ``--self-test``
checks the statistics (fold assignment, t-interval, corrected test) against hand-computed
values in seconds, without TensorFlow.

Sizing. Cost per fit ~ epochs x n_fit / (images per CPU-second) + ~0.5 CPU-min (tracing,
decoding, validation, curve points), with n_fit ~ 0.85 x 848 x (k-1)/k photos (all 848
distinct photos are valid). Measured on this machine (AMD EPYC, 2 CPUs, AVX2/FMA, no AVX-512,
shared, load 3-4.5), Model 3 float32 steady state: 19.8 images per CPU-second at 64 px, 4.3 at
128 px (wall: 17 and 2.5 img/s under that load; a quiet machine gives up to ~2x the CPU rate in
wall time). That is far slower than the ~30 img/s at 128 px measured on the AVX512-BF16 Xeon of
README's bench/train.py numbers: check the CPU line this bench prints.

- Ablation, 3 folds at 64 px, 15 epochs (n_fit ~ 480): ~7 CPU-min per fit, ~21 CPU-min per
  option: ~12-15 min per option on a quiet machine, ~25 min under today's load::

    .venv/bin/python bench/quality.py --folds 3 --image-size 64 --epochs 15 \\
        --option base= --option lr3=learning_rate=0.003 \\
        --out bench/results/quality-ablation-64px.jsonl --resume

- The winner alone, full CV at 128 px (5 folds, n_fit ~ 576; epochs where the ablation's
  time-to-accuracy curve flattens, 40 here): ~90 CPU-min per fit, ~7.5 CPU-hours in all
  (~4.5 h quiet, ~7.5 h loaded); ``--stop-after`` bounds a session, ``--resume`` continues
  it in the next one (commit the file each session)::

    .venv/bin/python bench/quality.py --folds 5 --image-size 128 --epochs 40 \\
        --option WINNER=SETTINGS --curve-every 10 \\
        --out bench/results/quality-cv-128px.jsonl --resume --stop-after 100

Smoke run (tiny, minutes): ``--images 120 --folds 2 --image-size 48 --epochs 2
--curve-every 1 --out /tmp/quality-smoke.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

    from weather_tasks.config import PipelineConfig

MWD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mwd"
RESULTS = Path(__file__).resolve().parent / "results"
RECORD_KIND = "quality-fold"
RECORD_VERSION = 1


# --------------------------------------------------------------------------- statistics


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function, from the regularized incomplete beta function.

    >>> round(t_cdf(0.0, 3), 12)
    0.5
    >>> round(t_cdf(1.0, 1), 12)  # Cauchy: 1/2 + atan(1)/pi
    0.75
    """
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on t_cdf).

    >>> round(t_quantile(0.975, 2), 6)  # sqrt(2 * 0.95**2 / (1 - 0.95**2)), by hand
    4.302653
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-13 * max(1.0, high):
            break
    return (low + high) / 2.0


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b), continued fraction (Numerical Recipes' betacf)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side only
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h / a


@dataclass(frozen=True)
class Interval:
    """A mean with a two-sided confidence interval (and a p-value where it is a test)."""

    mean: float
    low: float
    high: float
    n: int
    p_value: float = float("nan")

    @property
    def above_zero(self) -> bool:
        return self.low > 0.0


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and t-interval over ``values`` (n-1 df): mean +- t * sd / sqrt(n).

    >>> iv = t_interval([0.80, 0.84, 0.82])  # sd 0.02; t(0.975, 2) = 4.302653
    >>> round(iv.low, 4), round(iv.high, 4)
    (0.7703, 0.8697)
    """
    n = len(values)
    mean = statistics.fmean(values) if n else float("nan")
    if n < 2:
        return Interval(mean, float("nan"), float("nan"), n)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def corrected_resampled_t(
    differences: Sequence[float], test_train_ratio: float, confidence: float = 0.95
) -> Interval:
    """Nadeau and Bengio's corrected resampled t-test on paired per-fold differences.

    The folds' training sets overlap, so their differences are positively correlated and the
    naive variance s^2 / n is too small. The correction uses s^2 * (1/n + n_test/n_train),
    with t on n-1 df (Nadeau & Bengio 2003; for r repeats of k-fold CV, n = r * k, as in
    Bouckaert & Frank 2004). ``test_train_ratio``: held-out images / training images of a fit.

    Hand-checked: differences 0.02, 0.04, 0.03 from 3 folds of 100 test / 200 train images:
    mean 0.03, s^2 = 1e-4, corrected variance (1/3 + 1/2) * 1e-4, se = 0.0091287, t = 3.2863
    on 2 df: two-sided p = 1 - t / sqrt(2 + t^2) = 0.0814 and 0.03 +- 4.302653 * se. The naive
    interval (s^2/3) would be [0.0052, 0.0548] and claim an improvement.

    >>> iv = corrected_resampled_t([0.02, 0.04, 0.03], 100 / 200)
    >>> round(iv.low, 4), round(iv.high, 4), round(iv.p_value, 4), iv.above_zero
    (-0.0093, 0.0693, 0.0814, False)
    """
    n = len(differences)
    mean = statistics.fmean(differences) if n else float("nan")
    if n < 2:
        return Interval(mean, float("nan"), float("nan"), n)
    variance = statistics.variance(differences) * (1.0 / n + test_train_ratio)
    se = math.sqrt(variance)
    t_crit = t_quantile(0.5 + confidence / 2.0, n - 1)
    if se == 0.0:  # identical differences on every fold: no spread to test against
        p = 1.0 if mean == 0.0 else 0.0
        return Interval(mean, mean, mean, n, p)
    p = 2.0 * (1.0 - t_cdf(abs(mean) / se, n - 1))
    return Interval(mean, mean - t_crit * se, mean + t_crit * se, n, p)


# --------------------------------------------------------------------------- folds


def _rank(seed: int, salt: str, key: str) -> str:
    """A seeded, stable order of keys (as TFX's hash split): independent of listing order
    and of Python's random module, and unchanged for old keys when new ones arrive."""
    return hashlib.sha256(f"{seed}:{salt}:{key}".encode()).hexdigest()


def assign_folds(items: Sequence[tuple[str, str]], k: int, seed: int) -> dict[str, int]:
    """Stratified group k-fold: ``items`` are (group, label) per image -> fold of each group.

    A group (here: a content hash) goes to one fold whole. Per label, groups are dealt
    largest first (ties in seeded hash order) to the fold with the fewest images of that
    label, then the fewest images in all, then the lowest index: per-label counts differ by
    at most one group's size between folds, and fold sizes stay balanced across labels.

    >>> items = [("a", "x"), ("b", "x"), ("c", "x"), ("d", "y"), ("e", "y"), ("a", "x")]
    >>> folds = assign_folds(items, k=2, seed=0)
    >>> sorted(Counter((folds[g], lab) for g, lab in items).items())  # images per fold
    [((0, 'x'), 2), ((0, 'y'), 1), ((1, 'x'), 2), ((1, 'y'), 1)]
    >>> folds == assign_folds(list(reversed(items)), k=2, seed=0)
    True
    """
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    size: Counter[str] = Counter()
    label_of: dict[str, str] = {}
    for group, label in items:
        if label_of.setdefault(group, label) != label:
            raise ValueError(f"group {group} has two labels ({label_of[group]}, {label})")
        size[group] += 1
    per_label = [[0] * k for _ in range(len(set(label_of.values())))]
    total = [0] * k
    folds: dict[str, int] = {}
    for li, label in enumerate(sorted(set(label_of.values()))):
        groups = sorted((g for g, lab in label_of.items() if lab == label),
                        key=lambda g: (-size[g], _rank(seed, "fold", g)))
        for g in groups:
            fold = min(range(k), key=lambda f: (per_label[li][f], total[f], f))
            folds[g] = fold
            per_label[li][fold] += size[g]
            total[fold] += size[g]
    return folds


def carve_validation(
    items: Sequence[tuple[str, str]], fraction: float, seed: int, salt: str
) -> set[str]:
    """The validation groups carved from training items (group, label): per label,
    round(fraction * n) groups (at least 1 when the label has 2 or more), in seeded hash order.

    >>> items = [(str(i), "x") for i in range(20)] + [("y1", "y"), ("y2", "y")]
    >>> val = carve_validation(items, 0.15, seed=1, salt="fold0")
    >>> len(val), len(val & {"y1", "y2"})  # 3 of 20 x; 1 of 2 y (never all of a label)
    (4, 1)
    """
    by_label: dict[str, list[str]] = defaultdict(list)
    for group, label in dict(items).items():
        by_label[label].append(group)
    chosen: set[str] = set()
    for _label, groups in sorted(by_label.items()):
        n_val = round(fraction * len(groups))
        n_val = min(max(n_val, 1 if len(groups) >= 2 else 0), len(groups) - 1)
        ranked = sorted(groups, key=lambda g: _rank(seed, f"val:{salt}", g))
        chosen.update(ranked[:n_val])
    return chosen


@dataclass(frozen=True)
class Photo:
    """One distinct image: its content hash, label and the file to train on."""

    sha256: str
    label: str
    path: Path


@dataclass(frozen=True)
class FoldSplit:
    """One fold of one repeat: held-out photos, and the training folds cut into fit and val."""

    repeat: int
    fold: int
    fit: tuple[Photo, ...]
    val: tuple[Photo, ...]
    test: tuple[Photo, ...]


def make_folds(photos: Sequence[Photo], k: int, repeats: int, seed: int,
               val_fraction: float) -> list[FoldSplit]:
    """Every (repeat, fold) split: repeat r uses fold seed ``seed + r``."""
    out = []
    items = [(p.sha256, p.label) for p in photos]
    for r in range(repeats):
        folds = assign_folds(items, k, seed + r)
        for f in range(k):
            test = tuple(p for p in photos if folds[p.sha256] == f)
            train = [p for p in photos if folds[p.sha256] != f]
            val_groups = carve_validation([(p.sha256, p.label) for p in train], val_fraction,
                                          seed + r, salt=f"fold{f}")
            out.append(FoldSplit(
                r, f, tuple(p for p in train if p.sha256 not in val_groups),
                tuple(p for p in train if p.sha256 in val_groups), test,
            ))
    return out


def plan_digest(splits: Sequence[FoldSplit]) -> str:
    """sha256 of which image is in which part of which fold (a resumed run must match)."""
    plan = sorted((s.repeat, s.fold, part, p.sha256)
                  for s in splits for part in ("fit", "val", "test")
                  for p in getattr(s, part))
    return hashlib.sha256(json.dumps(plan).encode()).hexdigest()


# --------------------------------------------------------------------------- photos


@dataclass(frozen=True)
class PhotoSet:
    photos: tuple[Photo, ...]
    files: int
    duplicates: int  # extra files with content already seen (ingest: "duplicate")
    skipped: dict[str, int]  # reason -> files, as ingest would quarantine them
    subset: bool  # --images: only a stratified sample was validated and kept

    def as_dict(self) -> dict[str, Any]:
        counts = Counter(p.label for p in self.photos)
        return {"files": self.files, "distinct_valid": len(self.photos),
                "per_class": dict(sorted(counts.items())), "duplicates": self.duplicates,
                "skipped": dict(sorted(self.skipped.items())), "subset": self.subset}


def load_photos(root: Path, cfg: PipelineConfig, converted_dir: Path, limit: int | None,
                seed: int) -> PhotoSet:
    """The photos of ``root`` as ingest would curate them (see the module docstring).

    ``limit``: keep a stratified sample of about that many distinct photos (each label's
    share kept, in seeded hash order); only the sample is validated then.
    """
    from weather_tasks.label import label_for_key
    from weather_tasks.validate import Rejected, validate_image

    skipped: Counter[str] = Counter()
    labels_of: dict[str, set[str]] = defaultdict(set)
    files_of: dict[str, list[Path]] = defaultdict(list)
    files = sorted(p for p in root.iterdir() if p.is_file())
    for path in files:
        labelled = label_for_key(path.name, cfg.classes)
        if labelled.label is None:
            skipped[labelled.reason] += 1
            continue
        data = path.read_bytes()
        if not data:
            skipped["empty"] += 1
            continue
        sha = hashlib.sha256(data).hexdigest()
        labels_of[sha].add(labelled.label)
        files_of[sha].append(path)
    for sha in [s for s, labels in labels_of.items() if len(labels) > 1]:
        skipped["conflicting_label"] += len(files_of.pop(sha))
        del labels_of[sha]
    by_label: dict[str, list[str]] = defaultdict(list)
    for sha, labels in labels_of.items():
        by_label[next(iter(labels))].append(sha)
    total = len(labels_of)
    photos: list[Photo] = []
    duplicates = 0
    for label in cfg.classes:
        ranked = sorted(by_label.get(label, []), key=lambda s: _rank(seed, "subset", s))
        quota = len(ranked) if limit is None else round(limit * len(ranked) / max(total, 1))
        kept = 0
        for sha in ranked:
            if kept >= quota:
                break
            source = files_of[sha][0]
            data = source.read_bytes()
            try:
                valid = validate_image(data, cfg)
            except Rejected as exc:
                skipped[exc.reason] += len(files_of[sha])
                continue
            duplicates += len(files_of[sha]) - 1
            if valid.stored_bytes != data:
                # Ingest stores this one as an RGB PNG (GIF, grayscale, palette, RGBA...):
                # train on those pixels, not on TensorFlow's decoding of the source.
                source = converted_dir / f"{sha}.{valid.stored_ext}"
                source.write_bytes(valid.stored_bytes)
            photos.append(Photo(sha, label, source))
            kept += 1
    return PhotoSet(tuple(photos), len(files), duplicates, dict(skipped), limit is not None)


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Option:
    """A named set of PipelineConfig overrides (raw text, parsed by the config)."""

    name: str
    overrides: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str) -> Option:
        """``NAME=setting=value,setting=value``; ``NAME=`` is no override.

        >>> Option.parse("lr3=learning_rate=0.003,lr_patience=2").overrides
        (('learning_rate', '0.003'), ('lr_patience', '2'))
        >>> Option.parse("base=")
        Option(name='base', overrides=())
        """
        name, sep, rest = text.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            raise ValueError(f"--option {text!r}: expected NAME=setting=value,... (or NAME=)")
        pairs = []
        for part in filter(None, (p.strip() for p in rest.split(","))):
            setting, sep, value = part.partition("=")
            if not sep or not setting.strip():
                raise ValueError(f"--option {text!r}: {part!r} is not setting=value")
            pairs.append((setting.strip(), value.strip()))
        return cls(name, tuple(pairs))

    def apply(self, base: PipelineConfig) -> PipelineConfig:
        """The base config with this option's settings, validated by the config itself."""
        from weather_tasks import config

        unknown = sorted({s for s, _ in self.overrides} - set(config.settings()))
        if unknown:
            raise config.ConfigError(f"option {self.name}: unknown setting(s) "
                                     f"{', '.join(unknown)}")
        changes = {s: config.parse(s, v) for s, v in self.overrides}
        return config.override(base, **changes)


def training_settings(cfg: PipelineConfig) -> dict[str, Any]:
    """The settings that change what a fit produces (declared ``affects_model`` in
    ``weather_tasks.config``; the dataset's own settings are covered by the plan digest):
    recorded with every fold and compared on --resume."""
    from weather_tasks import config

    return config.training_settings(cfg)


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """CPU model and the flags that change training speed, as detected (never assumed)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16",
              "amx_int8")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {"host": socket.gethostname(), "cpu_model": model, "cpus": usable,
            "flags": {f: f in flags for f in wanted}, "platform": platform.platform()}


def cpu_tag(machine: Mapping[str, Any]) -> str:
    """A file-name tag for the machine: CPU model, usable CPUs, the bf16/AMX flags.

    >>> cpu_tag({"cpu_model": "Intel(R) Xeon(R) Platinum 8480+", "cpus": 2,
    ...          "flags": {"avx512_bf16": True, "amx_tile": True, "avx512f": True}})
    'intel-xeon-platinum-8480-2cpu-avx512bf16-amx'
    """
    model = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$", "", machine["cpu_model"].lower())
    slug = re.sub(r"[^a-z0-9]+", "-", model).strip("-")[:40].strip("-")
    flags = machine["flags"]
    extra = ("-avx512bf16" if flags.get("avx512_bf16") else
             "-avx512" if flags.get("avx512f") else "") + ("-amx" if flags.get("amx_tile") else "")
    return f"{slug}-{machine['cpus']}cpu{extra}"


def versions() -> dict[str, str]:
    import keras
    import numpy as np
    import tensorflow as tf

    from weather_tasks import tracking

    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__,
            "weather_tasks": tracking.code_version()}


# --------------------------------------------------------------------------- training


def _held_out_curve_callback(test_ds: Any, labels: Sequence[str], cfg: PipelineConfig,
                             every: int, timer: Any) -> keras.callbacks.Callback:
    """A callback scoring the held-out fold after every ``every``-th epoch and the last.

    Built in a function so the module imports without TensorFlow (``--report``, ``--self-test``).
    """
    import keras

    from weather_tasks import metrics, recipe

    classes, epochs = cfg.classes, cfg.epochs

    class HeldOutCurve(keras.callbacks.Callback):
        """Held-out accuracy of the current weights (not the best checkpoint) against
        cumulative training time. Inference only, on its own dataset: training is unaffected.
        It runs after the epoch's validation, outside the EpochTimer's training part, and its
        own time is measured so it can be left out of the fit totals too."""

        def __init__(self) -> None:
            super().__init__()
            self.points: list[dict[str, float]] = []
            self.wall_seconds = 0.0
            self.cpu_seconds = 0.0

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            done = epoch + 1
            if every <= 0 or (done % every and done != epochs):
                return
            wall, cpu = time.perf_counter(), time.process_time()
            probs = recipe.predict_probabilities(self.model, test_ds, cfg)
            accuracy = metrics.compute_metrics(labels, probs, classes).accuracy
            self.points.append({
                "epoch": done,
                "train_wall_min": sum(timer.train_seconds) / 60.0,
                "train_cpu_min": sum(timer.train_cpu_seconds) / 60.0,
                "accuracy": accuracy,
            })
            self.wall_seconds += time.perf_counter() - wall
            self.cpu_seconds += time.process_time() - cpu

    return HeldOutCurve()


def train_fold(cfg: PipelineConfig, split: FoldSplit, curve_every: int,
               precision: str) -> dict[str, Any]:
    """Fit the recipe on the fold's fit set (val: its carve), score the held-out fold."""
    import keras

    from weather_tasks import data, metrics, recipe

    keras.backend.clear_session()  # a fresh Keras state per fit
    recipe.seed_process(cfg)  # as train.py does, before the datasets (paired across folds)
    pairs = {part: [(str(p.path), p.label) for p in getattr(split, part)]
             for part in ("fit", "val", "test")}
    train_ds = data.make_dataset(pairs["fit"], cfg, training=True)
    val_ds = data.make_dataset(pairs["val"], cfg, training=False)
    test_ds = data.make_dataset(pairs["test"], cfg, training=False)
    test_labels = [label for _, label in pairs["test"]]
    timer = recipe.EpochTimer()
    curve = _held_out_curve_callback(test_ds, test_labels, cfg, curve_every, timer)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp, \
            recipe.precision_policy(precision):
        model = recipe.build_and_compile(cfg)
        fit = recipe.fit(model, cfg, train_ds, val_ds, n_train=len(pairs["fit"]),
                         checkpoint_dir=Path(tmp), timer=timer, callbacks=[curve])
    fit_wall = time.perf_counter() - wall0 - curve.wall_seconds
    fit_cpu = time.process_time() - cpu0 - curve.cpu_seconds
    serving = recipe.float32_copy(model, cfg)  # what evaluate scores: the served weights
    # As the served model predicts (with tta_flip: the mean over the image and its flip).
    held_out = metrics.compute_metrics(test_labels,
                                       recipe.predict_probabilities(serving, test_ds, cfg),
                                       cfg.classes)
    return {
        "accuracy": held_out.accuracy,
        "recall": {c: m.recall for c, m in held_out.per_class.items()},
        "log_loss": held_out.as_dict()["log_loss"],
        "confusion_matrix": held_out.as_dict()["confusion_matrix"],
        "best_epoch": fit.best_epoch,
        "best_val_accuracy": fit.best_val_accuracy,
        "final_val_accuracy": float(fit.history["val_accuracy"][-1]),
        "epochs_run": fit.epochs_run,
        "learning_rates": [float(x) for x in fit.history["learning_rate"]],
        "train_wall_s": sum(timer.train_seconds),
        "train_cpu_s": sum(timer.train_cpu_seconds),
        "fit_wall_s": fit_wall,
        "fit_cpu_s": fit_cpu,
        "curve_eval_wall_s": curve.wall_seconds,
        "curve_eval_cpu_s": curve.cpu_seconds,
        "images_per_second": timer.images_per_second(len(pairs["fit"])),
        "images_per_cpu_second": timer.images_per_cpu_second(len(pairs["fit"])),
        "epoch_train_s": timer.train_seconds,
        "epoch_train_cpu_s": timer.train_cpu_seconds,
        "curve": curve.points,
    }


# --------------------------------------------------------------------------- results file


def read_records(path: Path) -> list[dict[str, Any]]:
    """The fold records of a results file (a line cut by a crash mid-write is skipped)."""
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            print(f"{path}:{n}: not a complete JSON line, skipped", file=sys.stderr)
            continue
        if record.get("kind") == RECORD_KIND:
            out.append(record)
    return out


def append_record(path: Path, record: Mapping[str, Any]) -> None:
    """One line, flushed to disk before the next fit starts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():
            f.seek(f.tell() - 1)
            cut = f.read(1) != "\n"  # a line cut by a crash: keep it apart from ours
        else:
            cut = False
        f.write(("\n" if cut else "") + json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _comparable(record: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """What differs between a recorded fold and what this run would do (setting names).

    Settings only one side knows are not compared: a setting added to the config later must
    default to the old behaviour, so older folds stay comparable (and a deployment setting
    added later cannot block a resume).
    """
    differs = [k for k, v in expected.items() if k != "settings" and record.get(k) != v]
    had, want = record.get("settings", {}), expected["settings"]
    differs += [f"setting {k} ({had[k]!r} there, {want[k]!r} now)"
                for k in sorted(set(had) & set(want)) if had[k] != want[k]]
    return differs


# --------------------------------------------------------------------------- report


def _option_order(records: Sequence[Mapping[str, Any]], baseline: str | None) -> list[str]:
    names = list(dict.fromkeys(r["option"] for r in records))
    if baseline:
        if baseline not in names:
            raise SystemExit(f"baseline {baseline!r} is not in the results ({', '.join(names)})")
        names.remove(baseline)
        names.insert(0, baseline)
    return names


def report(records: Sequence[Mapping[str, Any]], baseline: str | None = None) -> str:
    """The summary of fold records (the same printed at the end of a run and by --report)."""
    if not records:
        return "no fold results yet"
    names = _option_order(records, baseline)
    by_option: dict[str, dict[tuple[int, int], Mapping[str, Any]]] = defaultdict(dict)
    for r in records:
        by_option[r["option"]][(r["repeat"], r["fold"])] = r  # a re-run fold: the last one
    first = records[0]
    classes = list(first["settings"]["classes"])
    k, repeats = first["folds"], first["repeats"]
    lines = [
        f"== held-out accuracy: {k}-fold CV x {repeats} repeat(s), "
        f"{first['dataset']['distinct_valid']} distinct photos, fold seed {first['fold_seed']}, "
        f"train seed {first['settings']['seed']}; {first['machine']['cpu_model']}, "
        f"{first['machine']['cpus']} CPUs ==",
        f"{'option':<12} {'folds':>5} {'accuracy':>8}  {'95% t-interval':<16}"
        + "".join(f" {'rec ' + c[:7]:>11}" for c in classes)
        + f" {'train min':>9} {'CPU min':>8} {'img/s':>6} {'img/CPU-s':>9}  settings",
    ]
    for name in names:
        folds = list(by_option[name].values())
        acc = t_interval([r["accuracy"] for r in folds])
        recall = [statistics.fmean(r["recall"][c] for r in folds) for c in classes]
        interval = (f"[{acc.low:.3f}, {acc.high:.3f}]" if acc.n >= 2 else "(1 fold)")
        overrides = ",".join(f"{s}={v}" for s, v in folds[0]["overrides"]) or "(base)"
        lines.append(
            f"{name:<12} {len(folds):>5} {acc.mean:8.3f}  {interval:<16}"
            + "".join(f" {x:11.3f}" for x in recall)
            + f" {statistics.fmean(r['train_wall_s'] for r in folds) / 60:9.2f}"
            + f" {statistics.fmean(r['train_cpu_s'] for r in folds) / 60:8.2f}"
            + f" {statistics.fmean(r['images_per_second'] for r in folds):6.1f}"
            + f" {statistics.fmean(r['images_per_cpu_second'] for r in folds):9.2f}  {overrides}"
        )
    lines.append(
        "accuracy: the best-val-accuracy weights on the held-out fold; interval: t with n-1 df "
        "over the n fold results, optimistic since the folds share training data (the paired "
        "test below is the one to trust). minutes: mean per fit, training part of the epochs "
        "(validation and curve evaluations excluded); img/s: steady state (epochs after the "
        "first)."
    )
    base = names[0]
    if len(names) > 1:
        lines += ["", f"== vs {base} (paired on the same folds; Nadeau-Bengio corrected "
                  "resampled t-test, variance x (1/n + n_test/n_train), t with n-1 df) ==",
                  f"{'option':<12} {'pairs':>5} {'mean diff':>9}  {'95% interval':<18} "
                  f"{'p':>6}  adopt?"]
        for name in names[1:]:
            keys = sorted(set(by_option[name]) & set(by_option[base]))
            diffs = [by_option[name][key]["accuracy"] - by_option[base][key]["accuracy"]
                     for key in keys]
            if not keys:
                lines.append(f"{name:<12} {0:>5}  no fold in common with {base} yet")
                continue
            ratio = statistics.fmean(by_option[base][key]["n_test"] / (
                by_option[base][key]["n_fit"] + by_option[base][key]["n_val"]) for key in keys)
            test = corrected_resampled_t(diffs, ratio)
            interval = (f"[{test.low:+.3f}, {test.high:+.3f}]" if test.n >= 2
                        else "(needs 2 pairs)")
            adopt = "yes" if test.n >= 2 and test.above_zero else "no"
            lines.append(f"{name:<12} {test.n:>5} {test.mean:+9.3f}  {interval:<18} "
                         f"{test.p_value:6.3f}  {adopt}")
        lines.append("adopt? = the whole interval of the difference is above zero. "
                     "n_train = the training folds (fit + val) of each held-out fold.")
    lines += ["", "== time to accuracy (held-out accuracy of the current weights after epoch e; "
              "mean over folds; x = cumulative training CPU-minutes) =="]
    curves: dict[str, dict[int, list[Mapping[str, float]]]] = {}
    for name in names:
        points: dict[int, list[Mapping[str, float]]] = defaultdict(list)
        for r in by_option[name].values():
            for p in r["curve"]:
                points[int(p["epoch"])].append(p)
        curves[name] = points
    epochs = sorted({e for pts in curves.values() for e in pts})
    if not epochs:
        lines.append("(no curve recorded: --curve-every 0)")
    else:
        lines.append(f"{'epoch':>5}" + "".join(f"  {name[:12]:>12} {'CPU-min':>7} {'acc':>5}"
                                               for name in names))
        for e in epochs:
            row = f"{e:>5}"
            for name in names:
                pts = curves[name].get(e)
                if pts:
                    row += (f"  {'':>12} {statistics.fmean(p['train_cpu_min'] for p in pts):7.2f}"
                            f" {statistics.fmean(p['accuracy'] for p in pts):5.3f}")
                else:
                    row += f"  {'':>12} {'-':>7} {'-':>5}"
            lines.append(row)
        last = epochs[-1]
        lines.append("accuracy per CPU-minute at the last point: " + ", ".join(
            f"{name} {_per_cpu_minute(curves[name][last]) if last in curves[name] else '-'}"
            for name in names))
        evals = [r["curve_eval_wall_s"] for rs in by_option.values() for r in rs.values()]
        fits = [r["fit_wall_s"] for rs in by_option.values() for r in rs.values()]
        lines.append(f"(the curve's evaluations cost {sum(evals) / 60:.1f} wall-minutes in all, "
                     f"{100 * sum(evals) / max(sum(fits), 1e-9):.0f}% on top of the fits; "
                     "excluded from every training time above)")
    return "\n".join(lines)


def _per_cpu_minute(points: Sequence[Mapping[str, float]]) -> str:
    acc = statistics.fmean(p["accuracy"] for p in points)
    cpu = statistics.fmean(p["train_cpu_min"] for p in points)
    return f"{acc / cpu:.3f}" if cpu > 0 else "-"


# --------------------------------------------------------------------------- self-test


def self_test() -> int:
    """Check the statistics against hand-computed values (and scipy when it is installed)."""
    import doctest

    failures = doctest.testmod(sys.modules[__name__], verbose=False).failed
    checks: list[tuple[str, bool]] = []
    # t quantiles: df 2 has a closed form (t = sqrt(2 q^2 / (1 - q^2)), q = 2p - 1); df 1 is
    # Cauchy (tan(pi (p - 1/2))); the others are the printed tables' values.
    for df, want in ((1, math.tan(math.pi * 0.475)), (2, math.sqrt(2 * 0.95**2 / (1 - 0.95**2))),
                     (3, 3.182446305), (4, 2.776445105), (9, 2.262157163),
                     (29, 2.045229642)):
        got = t_quantile(0.975, df)
        checks.append((f"t(0.975, {df}) = {got:.9f}, want {want:.9f}", abs(got - want) < 1e-8))
    got = t_cdf(-1.5, 2)  # closed form for df 2: 1/2 + t / (2 sqrt(2 + t^2))
    checks.append((f"t_cdf(-1.5, 2) = {got:.12f}", abs(got - (0.5 - 1.5 / (2 * math.sqrt(4.25))))
                   < 1e-12))
    iv = corrected_resampled_t([0.02, 0.04, 0.03], 0.5)
    se = math.sqrt((1 / 3 + 1 / 2) * 1e-4)
    p_hand = 1 - (0.03 / se) / math.sqrt(2 + (0.03 / se) ** 2)
    checks.append((f"corrected test p = {iv.p_value:.6f}, hand {p_hand:.6f}",
                   abs(iv.p_value - p_hand) < 1e-9 and not iv.above_zero))
    naive = t_interval([0.02, 0.04, 0.03])
    checks.append(("the naive interval of the same differences excludes zero (why the "
                   "correction matters)", naive.low > 0))
    # Folds on a realistic shape: 4 labels, duplicates of one content in one group.
    items = [(f"{lab}{i}", lab) for lab, n in (("a", 234), ("b", 168), ("c", 185), ("d", 281))
             for i in range(n)] + [("a0", "a")] * 3
    folds = assign_folds(items, 5, seed=7)
    per = Counter((folds[g], lab) for g, lab in items)  # images, duplicates included
    spread = max(max(per[f, lab] for f in range(5)) - min(per[f, lab] for f in range(5))
                 for lab in "abcd")
    checks.append((f"stratified: per-label fold sizes differ by {spread} image(s) (<= 1)",
                   spread <= 1))
    checks.append(("grouped: a0's 4 copies all in its fold", per[folds["a0"], "a"] >= 4))
    checks.append(("deterministic and independent of listing order",
                   folds == assign_folds(list(reversed(items)), 5, seed=7)))
    checks.append(("another seed, other folds", folds != assign_folds(items, 5, seed=8)))
    photos = [Photo(g, lab, Path(g)) for g, lab in dict(items).items()]
    splits = make_folds(photos, 3, 2, seed=7, val_fraction=0.15)
    ok = all(not ({p.sha256 for p in s.test} & {p.sha256 for p in s.fit + s.val})
             and not ({p.sha256 for p in s.val} & {p.sha256 for p in s.fit})
             and len(s.fit) + len(s.val) + len(s.test) == len(photos) for s in splits)
    checks.append(("val carved from the training folds: disjoint from the held-out fold", ok))
    tested = Counter(p.sha256 for s in splits if s.repeat == 0 for p in s.test)
    checks.append(("each photo held out exactly once per repeat",
                   set(tested.values()) == {1} and len(tested) == len(photos)))
    val_share = [len(s.val) / (len(s.val) + len(s.fit)) for s in splits]
    checks.append((f"val share {min(val_share):.3f}-{max(val_share):.3f} (~0.15)",
                   all(abs(v - 0.15) < 0.01 for v in val_share)))
    try:
        from scipy import stats  # type: ignore[import-untyped]  # not a dependency: a cross-check
    except ImportError:
        checks.append(("scipy not installed: cross-check skipped", True))
    else:
        worst = max(abs(t_cdf(t, df) - float(stats.t.cdf(t, df)))
                    for t in (-30, -4.3, -1, -0.2, 0.7, 2.5, 12.7) for df in (1, 2, 3, 7, 30, 200))
        worst_q = max(abs(t_quantile(p, df) - float(stats.t.ppf(p, df)))
                      for p in (0.6, 0.9, 0.975, 0.995) for df in (1, 2, 3, 7, 30, 200))
        checks.append((f"scipy agrees: cdf within {worst:.1e}, quantile within {worst_q:.1e}",
                       worst < 1e-10 and worst_q < 1e-7))
    for text, ok in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {text}")
    bad = failures + sum(not ok for _, ok in checks)
    print(f"doctests: {failures} failed; checks: {sum(ok for _, ok in checks)}/{len(checks)} ok")
    return 1 if bad else 0


# --------------------------------------------------------------------------- main


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="Recommended runs and their durations: see the module docstring.")
    p.add_argument("--photos", type=Path, default=MWD / "images", help="flat folder of photos")
    p.add_argument("--folds", type=int, default=3, help="k of the k-fold CV (default 3)")
    p.add_argument("--repeats", type=int, default=1,
                   help="repeats of the k-fold CV with fold seeds seed, seed+1, ... (default 1)")
    p.add_argument("--fold-seed", type=int, default=None,
                   help="seed of the fold assignment (default: WEATHER_SPLIT_SEED's value)")
    p.add_argument("--val-fraction", type=float, default=0.15,
                   help="share of each label in the training folds used for validation")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--option", action="append", default=[], metavar="NAME=SETTING=VALUE,...",
                   help="a named set of setting overrides; repeatable; the first is the "
                   "baseline (default: one option, base=)")
    p.add_argument("--curve-every", type=int, default=5,
                   help="score the held-out fold after every N epochs and the last (0: off; "
                   "costs extra time, excluded from the training minutes)")
    p.add_argument("--images", type=int, default=None,
                   help="a stratified sample of about N distinct photos (smoke runs)")
    p.add_argument("--out", type=Path, default=None,
                   help="results file (default bench/results/quality-<date>-<cpu tag>.jsonl)")
    p.add_argument("--resume", action="store_true",
                   help="continue --out: skip (option, repeat, fold) already in it")
    p.add_argument("--stop-after", type=float, default=None, metavar="MINUTES",
                   help="start no new fit after this many minutes (resume it next session)")
    p.add_argument("--baseline", default=None, help="option the others are compared with "
                   "(default: the first)")
    p.add_argument("--report", type=Path, default=None, metavar="FILE",
                   help="print the summary of a results file; trains nothing")
    p.add_argument("--self-test", action="store_true",
                   help="check the statistics against hand-computed values; trains nothing")
    args = p.parse_args(argv)
    if args.folds < 2 or args.repeats < 1:
        p.error("--folds needs at least 2 and --repeats at least 1")
    if not 0.0 < args.val_fraction < 0.5:
        p.error("--val-fraction must be in (0, 0.5)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.self_test:
        return self_test()
    if args.report:
        print(report(read_records(args.report), args.baseline))
        return 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    from weather_tasks import config, recipe

    try:
        options = [Option.parse(o) for o in (args.option or ["base="])]
        if len({o.name for o in options}) != len(options):
            raise ValueError("option names must be distinct")
        base = config.override(config.from_env(), image_size=args.image_size,
                               epochs=args.epochs, batch_size=args.batch_size)
        cfgs = {o.name: o.apply(base) for o in options}
    except (ValueError, config.ConfigError) as exc:
        print(f"bench/quality.py: error: {exc}", file=sys.stderr)
        return 2
    if not args.photos.is_dir():
        print(f"bench/quality.py: error: photos not found at {args.photos}", file=sys.stderr)
        return 2
    fold_seed = base.split_seed if args.fold_seed is None else args.fold_seed
    machine = machine_info()
    out = args.out or RESULTS / f"quality-{dt.date.today():%Y%m%d}-{cpu_tag(machine)}.jsonl"
    done = read_records(out)
    if done and not args.resume:
        print(f"bench/quality.py: error: {out} already has {len(done)} fold result(s): "
              "--resume to continue it, or --out for a new file", file=sys.stderr)
        return 2

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-quality-photos-") as converted:
        t0 = time.perf_counter()
        photo_set = load_photos(args.photos, base, Path(converted), args.images, fold_seed)
        splits = make_folds(photo_set.photos, args.folds, args.repeats, fold_seed,
                            args.val_fraction)
        digest = plan_digest(splits)
        device = recipe.configure_devices()
        vers = versions()
        ds = photo_set.as_dict()
        print(f"{ds['files']} files -> {ds['distinct_valid']} distinct valid photos "
              f"{ds['per_class']}{' (stratified sample)' if ds['subset'] else ''}; "
              f"{ds['duplicates']} duplicate file(s); skipped {ds['skipped'] or 'none'} "
              f"({time.perf_counter() - t0:.0f}s)")
        print(f"{args.folds} folds x {args.repeats} repeat(s), fold seed {fold_seed}: "
              + "; ".join(f"fold {s.fold}: {len(s.fit)} fit / {len(s.val)} val / "
                          f"{len(s.test)} held out" for s in splits if s.repeat == 0))
        print(f"{machine['cpu_model']}, {machine['cpus']} CPUs (flags: "
              f"{', '.join(f for f, on in machine['flags'].items() if on) or 'none'}), {device}; "
              f"TensorFlow {vers['tensorflow']}, Keras {vers['keras']}; "
              f"load average {os.getloadavg()[0]:.1f}; results -> {out}", flush=True)

        finished = {(r["option"], r["repeat"], r["fold"]): r for r in done}
        # Options take turns on each fold: a partial run still has paired results, and
        # background load hits every option alike.
        for split in splits:
            for option in options:
                cfg = cfgs[option.name]
                expected = {"settings": training_settings(cfg), "plan_digest": digest,
                            "overrides": [list(x) for x in option.overrides]}
                key = (option.name, split.repeat, split.fold)
                if key in finished:
                    differs = _comparable(finished[key], expected)
                    if differs:
                        print(f"bench/quality.py: error: {out} has {option.name} repeat "
                              f"{split.repeat} fold {split.fold}, which differs in "
                              f"{'; '.join(differs)}: use another --out or option name",
                              file=sys.stderr)
                        return 2
                    print(f"skip {option.name} repeat {split.repeat} fold {split.fold}: "
                          f"already in {out.name} (accuracy "
                          f"{finished[key]['accuracy']:.3f})", flush=True)
                    continue
                if args.stop_after and time.perf_counter() - started > args.stop_after * 60:
                    print(f"--stop-after {args.stop_after} min reached: continue with --resume")
                    print("\n" + report(read_records(out), args.baseline))
                    return 0
                precision = recipe.resolve_precision(cfg.precision,
                                                     has_gpu=device.startswith("GPU"))
                print(f"\n-- {option.name} repeat {split.repeat} fold {split.fold}: "
                      f"{len(split.fit)} fit / {len(split.val)} val / {len(split.test)} "
                      f"held out, {cfg.model} {cfg.image_size}px, {cfg.epochs} epochs, "
                      f"{precision}", flush=True)
                load = os.getloadavg()[0]
                result = train_fold(cfg, split, args.curve_every, precision)
                record = {
                    "kind": RECORD_KIND, "version": RECORD_VERSION, "option": option.name,
                    **expected, "repeat": split.repeat, "fold": split.fold,
                    "folds": args.folds, "repeats": args.repeats, "fold_seed": fold_seed,
                    "repeat_seed": fold_seed + split.repeat,
                    "val_fraction": args.val_fraction, "precision_resolved": precision,
                    "n_fit": len(split.fit), "n_val": len(split.val),
                    "n_test": len(split.test),
                    "n_test_per_class": dict(Counter(p.label for p in split.test)),
                    **result, "dataset": ds, "photos": str(args.photos), "machine": machine,
                    "device": device, "versions": vers, "curve_every": args.curve_every,
                    "load_average": [load, os.getloadavg()[0]],
                    "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                }
                append_record(out, record)
                finished[key] = record
                print(f"   {option.name} fold {split.fold}: held-out accuracy "
                      f"{result['accuracy']:.3f} (best epoch {result['best_epoch']}, val "
                      f"{result['best_val_accuracy']:.3f}); training "
                      f"{result['train_wall_s'] / 60:.2f} min, "
                      f"{result['train_cpu_s'] / 60:.2f} CPU-min, "
                      f"{result['images_per_second']:.1f} img/s; written to {out.name}",
                      flush=True)
    print("\n" + report(read_records(out), args.baseline))
    print(f"\ntotal {(time.perf_counter() - started) / 60:.1f} min; load average now "
          f"{os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
