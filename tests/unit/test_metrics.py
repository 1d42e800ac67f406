"""The one metrics implementation (training's val report and the evaluation), as tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from weather_tasks.metrics import (
    Metrics,
    accuracy_interval,
    compute_metrics,
    paired_difference_interval,
)


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


@pytest.mark.parametrize(
    ("correct", "n", "low", "high"),
    [
        # Wilson's formula worked by hand (z = 1.96).
        (8, 10, 0.4902, 0.9433),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),  # 100 % on 10 images is no proof of 100 %
        (181, 200, 0.8564, 0.9383),
    ],
)
def test_accuracy_interval_is_wilsons(correct: int, n: int, low: float, high: float) -> None:
    ci = accuracy_interval(correct, n)
    assert ci.estimate == correct / n
    assert (round(ci.low, 4), round(ci.high, 4)) == (low, high)


def _pairs(both: int, only_chal: int, only_champ: int, neither: int) -> tuple[list, list]:
    chal = [True] * (both + only_chal) + [False] * (only_champ + neither)
    champ = [True] * both + [False] * only_chal + [True] * only_champ + [False] * neither
    return chal, champ


@pytest.mark.parametrize(
    ("table", "estimate", "low", "high"),
    [
        # Cavo et al. 2012, as worked in Fagerland, Lydersen & Laake, "Statistical Analysis of
        # Contingency Tables" (2017), chapter 8: Newcombe square-and-add -0.1186 to -0.0046.
        ((59, 6, 16, 80), -0.0621, -0.1186, -0.0046),
        # Altman et al., "Statistics with confidence" (2000), table 6.2.
        ((14, 5, 0, 22), 0.1220, 0.0115, 0.2265),
    ],
)
def test_paired_difference_interval_is_newcombes(
    table: tuple[int, int, int, int], estimate: float, low: float, high: float
) -> None:
    ci = paired_difference_interval(*_pairs(*table))
    assert (round(ci.estimate, 4), round(ci.low, 4), round(ci.high, 4)) == (estimate, low, high)


def test_the_difference_interval_keeps_a_width_when_the_models_agree() -> None:
    """50 images both models get right: a bootstrap would say [0, 0]; 50 images cannot."""
    ci = paired_difference_interval(*_pairs(50, 0, 0, 0))
    assert ci.estimate == 0 and ci.low < -0.05 and ci.high > 0.05


def test_swapping_the_models_mirrors_the_interval() -> None:
    a, b = _pairs(30, 7, 2, 11)
    ci, mirrored = paired_difference_interval(a, b), paired_difference_interval(b, a)
    assert mirrored.estimate == pytest.approx(-ci.estimate)
    assert (mirrored.low, mirrored.high) == pytest.approx((-ci.high, -ci.low))


def test_metrics_report_their_accuracy_interval() -> None:
    m = compute_metrics(["a"] * 8 + ["b"] * 2, np.eye(2)[[0] * 8 + [0, 0]], ["a", "b"])
    assert m.accuracy == 0.8
    assert m.as_dict()["accuracy_ci"] == [accuracy_interval(8, 10).low,
                                          accuracy_interval(8, 10).high]
    assert Metrics.from_dict(m.as_dict()) == m  # derived, not stored twice
    assert Metrics(accuracy=0.0, per_class={}).accuracy_ci is None  # no images, no interval
