"""The evaluation report survives XCom and the run artifact (a dict round trip); the test
report labels the challenger's test confusion matrix."""

from __future__ import annotations

import numpy as np
import pytest

from weather_tasks.evaluate import EvalReport, challenger_test_report
from weather_tasks.metrics import ClassMetrics, Interval, Metrics, compute_metrics
from weather_tasks.policy import Decision

CLASSES = ("shine", "sunrise", "cloudy", "rain")


def metrics(accuracy: float, n: int = 0) -> Metrics:
    return Metrics(
        accuracy=accuracy, per_class={c: ClassMetrics(accuracy, accuracy, accuracy, 10)
                                      for c in CLASSES}, n=n,
    )


def test_eval_report_round_trips_through_dict() -> None:
    report = EvalReport(
        run_id="r1", model_uri="runs:/r1/model", manifest_version="v000002", n_test=40,
        challenger=metrics(0.9), champion=metrics(0.8), champion_version="3",
        champion_run_id="r0", champion_error=None, mcnemar_p=0.04,
        decision=Decision(True, ["better"]),
    )
    again = EvalReport.from_dict(report.as_dict())
    assert again.as_dict() == report.as_dict()
    assert again.promote and again.champion_version == "3"
    assert again.difference is None  # an evaluation written before the intervals still reads


def test_intervals_reach_the_report_and_its_dict() -> None:
    """Both accuracies with their 95 % intervals, and the paired difference with its own."""
    difference = Interval(0.025, -0.03, 0.08)
    report = EvalReport(
        run_id="r1", model_uri="runs:/r1/model", manifest_version="v000002", n_test=40,
        challenger=metrics(0.9, n=40), champion=metrics(0.875, n=40), champion_version="3",
        champion_run_id="r0", champion_error=None, mcnemar_p=0.6,
        decision=Decision(True, ["better"]), difference=difference,
    )
    again = EvalReport.from_dict(report.as_dict())
    assert again.difference == difference
    assert report.as_dict()["accuracy_difference"] == {"estimate": 0.025, "low": -0.03,
                                                       "high": 0.08}
    text = report.summary()
    assert "challenger: accuracy 0.9000 (95% CI 0.7" in text
    assert "champion v3: accuracy 0.8750 (95% CI 0.7" in text
    assert "challenger - champion: 0.0250 (95% CI -0.0300 to 0.0800)" in text


def test_challenger_test_report_labels_the_test_matrix() -> None:
    """The numbers behind the test confusion-matrix plot: split, classes (rows and columns),
    and the challenger's metrics as evaluation.json has them."""
    y_true = ["shine", "shine", "rain", "cloudy"]
    probs = np.eye(4)[[0, 3, 3, 1]]  # shine right, shine -> rain, rain right, cloudy -> sunrise
    challenger = compute_metrics(y_true, probs, CLASSES)
    report = EvalReport(
        run_id="r1", model_uri="runs:/r1/model", manifest_version="v000002", n_test=4,
        challenger=challenger, champion=None, champion_version=None, champion_run_id=None,
        champion_error=None, mcnemar_p=None, decision=Decision(False, ["below floor"]),
    )
    out = challenger_test_report(report, CLASSES)
    assert out["split"] == "test" and out["manifest_version"] == "v000002"
    assert out["classes"] == list(CLASSES)
    assert out["confusion_matrix"] == [[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]
    assert out["accuracy"] == 0.5 and out["n"] == 4
    assert report.as_dict()["challenger"]["confusion_matrix"] == out["confusion_matrix"]


def test_per_image_predictions_name_each_image_and_both_answers() -> None:
    """One entry per test image: identity, label, source keys, each model's answer; a NaN row
    is "no answer", a missing champion is None."""
    from weather_tasks import manifest
    from weather_tasks.evaluate import per_image_predictions

    records = [manifest.ImageRecord(s * 64, s * 64, label, "test", "jpg", "JPEG", 8, 8,
                                    (f"incoming/{label}{s}.jpg",), "", "v000001")
               for s, label in (("a", "shine"), ("b", "rain"))]
    chal = np.array([[0.7, 0.1, 0.1, 0.1], [np.nan] * 4])
    champ = np.array([[0.1, 0.1, 0.1, 0.7], [0.1, 0.1, 0.2, 0.6]])
    out = per_image_predictions(records, chal, champ, CLASSES)
    assert out[0] == {"sha256": "a" * 64, "label": "shine",
                      "source_keys": ["incoming/shinea.jpg"],
                      "challenger": {"predicted": "shine", "confidence": 0.7},
                      "champion": {"predicted": "rain", "confidence": 0.7}}
    assert out[1]["challenger"] == {"predicted": None, "confidence": None}
    assert per_image_predictions(records, chal, None, CLASSES)[0]["champion"] is None


def test_test_calibration_reaches_the_test_report_not_the_xcom_dict() -> None:
    from weather_tasks.evaluate import calibration_of

    y_true = ["shine", "rain", "cloudy", "rain"]
    probs = np.array([[0.9, 0.05, 0.03, 0.02], [0.1, 0.1, 0.1, 0.7],
                      [0.6, 0.1, 0.2, 0.1], [np.nan] * 4])
    cal = calibration_of(probs, y_true, CLASSES)
    # Three usable rows: 0.9 right, 0.7 right, 0.6 wrong -> |1-.9| + |1-.7| + |0-.6| over 3.
    assert cal["n"] == 3 and cal["ece"] == pytest.approx((0.1 + 0.3 + 0.6) / 3)
    assert calibration_of(np.full((2, 4), np.nan), ["shine", "rain"], CLASSES)["ece"] is None
    challenger = compute_metrics(y_true, probs, CLASSES)
    report = EvalReport(
        run_id="r1", model_uri="runs:/r1/model", manifest_version="v000002", n_test=4,
        challenger=challenger, champion=None, champion_version=None, champion_run_id=None,
        champion_error=None, mcnemar_p=None, decision=Decision(True, ["ok"]),
        test_ece=cal["ece"],
    )
    out = challenger_test_report(report, CLASSES, cal)
    assert out["ece"] == cal["ece"] and sum(b["count"] for b in out["reliability"]) == 3
    small = report.as_dict()
    assert small["test_ece"] == cal["ece"] and "reliability" not in small
    assert EvalReport.from_dict(small).test_ece == cal["ece"]
    assert "test ECE 0.3333" in report.summary()
