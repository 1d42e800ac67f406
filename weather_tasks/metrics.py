"""Classification metrics of one model on one set of images (pure numpy, no MLflow).

One implementation for the whole project: training's val report
(``reports/val_class_report.json``) and the challenger/champion evaluation both come from
:func:`compute_metrics`.

Noise: a test set of a few hundred images measures accuracy to a few points, so every
accuracy comes with its 95 % interval (:func:`accuracy_interval`, Wilson's score interval),
and a challenger is compared with the champion on the same images through the interval of
the paired difference (:func:`paired_difference_interval`, Newcombe's method 10). Both are
closed forms: deterministic (no resampling seed), instant, and with close to nominal coverage
at these sizes and near 100 % accuracy, where the Wald interval is too narrow and a bootstrap
collapses to a point when the models never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

_LOG_LOSS_CLIP = 1e-15
_Z95 = NormalDist().inv_cdf(0.975)  # 1.959963984540054


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95 % confidence interval."""

    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}

    def __str__(self) -> str:
        return f"{self.estimate:.4f} (95% CI {self.low:.4f} to {self.high:.4f})"


@dataclass(frozen=True)
class ClassMetrics:
    precision: float
    recall: float
    f1: float
    support: int

    def as_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1,
                "support": self.support}


@dataclass(frozen=True)
class Metrics:
    """One model's metrics on one set of images."""

    accuracy: float
    per_class: dict[str, ClassMetrics]
    log_loss: float = float("nan")
    confusion_matrix: tuple[tuple[int, ...], ...] = ()
    n: int = 0
    n_errors: int = 0  # images the model could not classify (counted as wrong)

    @property
    def accuracy_ci(self) -> Interval | None:
        """The 95 % interval of the accuracy (None without images)."""
        return accuracy_interval(round(self.accuracy * self.n), self.n) if self.n else None

    def as_dict(self) -> dict[str, Any]:
        ci = self.accuracy_ci
        return {
            "accuracy": self.accuracy,
            # Derived (from accuracy and n), for readers of the reports; from_dict ignores it.
            "accuracy_ci": None if ci is None else [ci.low, ci.high],
            "per_class": {c: m.as_dict() for c, m in self.per_class.items()},
            "log_loss": None if math.isnan(self.log_loss) else self.log_loss,
            "confusion_matrix": [list(r) for r in self.confusion_matrix],
            "n": self.n,
            "n_errors": self.n_errors,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Metrics:
        return cls(
            accuracy=float(d["accuracy"]),
            per_class={c: ClassMetrics(**m) for c, m in d["per_class"].items()},
            log_loss=float("nan") if d.get("log_loss") is None else float(d["log_loss"]),
            confusion_matrix=tuple(tuple(r) for r in d.get("confusion_matrix", ())),
            n=int(d.get("n", 0)),
            n_errors=int(d.get("n_errors", 0)),
        )


def compute_metrics(
    y_true: Sequence[str], probabilities: Any, classes: Sequence[str]
) -> Metrics:
    """Accuracy, per-class P/R/F1/support, log loss and confusion matrix.

    ``probabilities``: (n, len(classes)); a row of NaN means the model could not classify
    that image: it counts as wrong (a miss in its class's recall and support, in no column of
    the confusion matrix) and as uniform probabilities in the log loss. Confusion matrix rows
    are true classes, columns predicted ones. A class never predicted has precision 0, a class
    never present recall 0, and then F1 0.
    """
    k = len(classes)
    probs = np.asarray(probabilities, dtype=np.float64).reshape(len(y_true), k)
    index = {c: i for i, c in enumerate(classes)}
    truth = np.array([index[y] for y in y_true], dtype=np.int64)
    failed = np.asarray(np.isnan(probs).any(axis=1), dtype=bool)
    probs = np.where(failed[:, None], 1.0 / k, probs)
    pred = probs.argmax(axis=1)
    n = len(truth)

    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (truth[~failed], pred[~failed]), 1)
    support = np.bincount(truth, minlength=k)  # failed rows included: they are misses
    per_class = {}
    for i, name in enumerate(classes):
        tp, predicted, present = int(cm[i, i]), int(cm[:, i].sum()), int(support[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / present if present else 0.0
        # 2PR/(P+R) written in counts: one correctly rounded division.
        f1 = 2 * tp / (present + predicted) if present + predicted else 0.0
        per_class[name] = ClassMetrics(precision, recall, f1, present)

    correct = int(np.trace(cm))
    p_true = probs[np.arange(n), truth] / probs.sum(axis=1)
    return Metrics(
        accuracy=correct / n if n else 0.0,
        per_class=per_class,
        log_loss=float(-np.log(np.clip(p_true, _LOG_LOSS_CLIP, 1.0)).mean()) if n else math.nan,
        confusion_matrix=tuple(tuple(int(x) for x in row) for row in cm) if n else (),
        n=n,
        n_errors=int(failed.sum()),
    )


def accuracy_interval(correct: int, n: int) -> Interval:
    """95 % Wilson score interval of an accuracy of ``correct`` out of ``n`` images.

    Wilson rather than Clopper-Pearson: the exact interval is conservative (covers more than
    95 %, so it is wider than needed), Wilson's coverage is close to 95 % from n of a few dozen
    and it stays inside [0, 1], also at 100 % accuracy where the Wald interval is [1, 1].
    """
    if not 0 <= correct <= n or n == 0:
        raise ValueError(f"need 0 <= correct <= n and n > 0, got {correct} of {n}")
    p = correct / n
    z2 = _Z95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def paired_difference_interval(
    challenger_correct: Sequence[bool], champion_correct: Sequence[bool]
) -> Interval:
    """95 % interval of challenger-minus-champion accuracy on the same images (Newcombe's
    method 10, 1998: the square-and-add of both Wilson intervals, with the correlation of
    the paired outcomes, continuity-corrected as he defines it).

    Why not a bootstrap over the shared images: it needs a seed and thousands of resamples,
    and when the models never disagree every resample gives 0, an interval [0, 0] that claims
    certainty from a handful of images; Newcombe's closed form keeps a width there and is
    deterministic. Its coverage is close to 95 % in Newcombe's and Fagerland et al.'s (2014)
    evaluations, which recommend it for paired proportions.
    """
    if len(challenger_correct) != len(champion_correct) or not challenger_correct:
        raise ValueError("need the same, non-zero number of paired outcomes")
    chal = np.asarray(challenger_correct, dtype=bool)
    champ = np.asarray(champion_correct, dtype=bool)
    n = len(chal)
    both = int(np.sum(chal & champ))
    only_chal = int(np.sum(chal & ~champ))
    only_champ = int(np.sum(~chal & champ))
    neither = n - both - only_chal - only_champ
    p1, p2 = (both + only_chal) / n, (both + only_champ) / n
    ci1 = accuracy_interval(both + only_chal, n)
    ci2 = accuracy_interval(both + only_champ, n)
    margins = (both + only_chal) * (only_champ + neither) * (both + only_champ) * (
        only_chal + neither
    )
    cross = both * neither - only_chal * only_champ
    # Newcombe's correction: positive association counts only beyond n/2.
    if margins == 0 or 0 <= cross <= n / 2:
        phi = 0.0
    else:
        phi = (cross - n / 2 if cross > n / 2 else cross) / math.sqrt(margins)
    d1_low, d1_high = p1 - ci1.low, ci1.high - p1
    d2_low, d2_high = p2 - ci2.low, ci2.high - p2
    below = math.sqrt(max(0.0, d1_low**2 - 2 * phi * d1_low * d2_high + d2_high**2))
    above = math.sqrt(max(0.0, d2_low**2 - 2 * phi * d2_low * d1_high + d1_high**2))
    diff = p1 - p2
    return Interval(diff, diff - below, diff + above)
