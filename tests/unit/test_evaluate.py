"""The evaluation report survives XCom and the run artifact (a dict round trip)."""

from __future__ import annotations

from weather_tasks.evaluate import EvalReport
from weather_tasks.metrics import ClassMetrics, Metrics
from weather_tasks.policy import Decision

CLASSES = ("shine", "sunrise", "cloudy", "rain")


def metrics(accuracy: float) -> Metrics:
    return Metrics(
        accuracy=accuracy, per_class={c: ClassMetrics(accuracy, accuracy, accuracy, 10)
                                      for c in CLASSES},
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
