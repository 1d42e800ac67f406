"""Classification metrics of one model on one set of images (pure numpy, no MLflow).

One implementation for the whole project: training's val report
(``reports/val_class_report.json``) and the challenger/champion evaluation both come from
:func:`compute_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_LOG_LOSS_CLIP = 1e-15


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
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
