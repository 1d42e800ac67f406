"""The one metrics implementation (training's val report and the evaluation), as tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from weather_tasks.metrics import compute_metrics


def _report(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Metrics of predicted class indices (one-hot probabilities), as the val report has them."""
    probs = np.eye(len(classes))[y_pred]
    return compute_metrics([classes[i] for i in y_true], probs, classes).as_dict()


def test_class_report_counts_precision_recall_f1() -> None:
    y_true = np.array([0, 0, 1, 2, 3, 3])
    y_pred = np.array([0, 1, 1, 2, 3, 2])
    r = _report(y_true, y_pred, ["a", "b", "c", "d"])
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["confusion_matrix"] == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    assert r["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3),
                                   "support": 2}
    assert r["per_class"]["c"]["precision"] == 0.5 and r["per_class"]["c"]["recall"] == 1.0


def test_class_report_survives_a_class_never_predicted_or_present() -> None:
    r = _report(np.array([0, 0]), np.array([0, 0]), ["a", "b"])
    assert r["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["accuracy"] == 1.0


def test_compute_metrics_counts_and_failed_rows() -> None:
    classes = ["a", "b"]
    y = ["a", "a", "b", "b"]
    probs = [[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [math.nan, math.nan]]
    m = compute_metrics(y, probs, classes)
    assert m.accuracy == pytest.approx(0.5)
    assert m.n == 4 and m.n_errors == 1
    assert m.confusion_matrix == ((1, 1), (0, 1))  # the failed row is in no predicted column
    assert m.per_class["a"].recall == pytest.approx(0.5)
    assert m.per_class["b"].recall == pytest.approx(0.5)
    assert m.per_class["b"].precision == pytest.approx(0.5)
    expected = -(math.log(0.9) + math.log(0.2) + math.log(0.7) + math.log(0.5)) / 4
    assert m.log_loss == pytest.approx(expected)
