"""The evaluation report survives XCom and the run artifact (a dict round trip); the test
report labels the challenger's test confusion matrix."""

from __future__ import annotations

import numpy as np

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
