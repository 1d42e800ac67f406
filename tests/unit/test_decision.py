"""The promotion rule and the evaluation metrics, as tables (no services)."""

from __future__ import annotations

import math

import pytest

from weather_tasks import config
from weather_tasks.evaluate import (
    ClassMetrics,
    Decision,
    EvalReport,
    Metrics,
    compute_metrics,
    decide,
    mcnemar_exact_p,
)

CLASSES = ("shine", "sunrise", "cloudy", "rain")


def metrics(accuracy: float, recalls: tuple[float, ...] | None = None) -> Metrics:
    recalls = recalls if recalls is not None else (accuracy,) * 4
    return Metrics(
        accuracy=accuracy,
        per_class={c: ClassMetrics(r, r, r, 10) for c, r in zip(CLASSES, recalls, strict=True)},
    )


CFG = config.from_env(environ={})  # floor 0.70, min_delta 0.0, max drop 0.05


@pytest.mark.parametrize(
    ("name", "challenger", "champion", "champion_error", "cfg_changes", "promote", "reason_has"),
    [
        ("first run above floor", metrics(0.80), None, None, {}, True, "no champion"),
        ("first run at floor", metrics(0.70), None, None, {}, True, ">= floor"),
        ("first run below floor", metrics(0.69), None, None, {}, False, "< floor"),
        ("custom floor", metrics(0.80), None, None, {"accuracy_floor": 0.9}, False, "< floor"),
        ("tie promotes with min_delta 0", metrics(0.85), metrics(0.85), None, {}, True, ">="),
        ("tie refused with min_delta", metrics(0.85), metrics(0.85), None,
         {"min_delta": 0.01}, False, "min_delta 0.0100"),
        ("better", metrics(0.90), metrics(0.85), None, {}, True, "no class recall drops"),
        ("worse", metrics(0.80), metrics(0.85), None, {}, False, "< champion"),
        ("better but one class recall drops 0.10",
         metrics(0.90, (0.95, 0.95, 0.95, 0.80)), metrics(0.85, (0.80, 0.80, 0.90, 0.90)),
         None, {}, False, "recall of 'rain' drops"),
        ("recall drop exactly at the limit is allowed",
         metrics(0.90, (0.95, 0.95, 0.95, 0.85)), metrics(0.85, (0.80, 0.80, 0.90, 0.90)),
         None, {}, True, "no class recall drops"),
        ("recall drop allowed by a looser limit",
         metrics(0.90, (0.95, 0.95, 0.95, 0.80)), metrics(0.85, (0.80, 0.80, 0.90, 0.90)),
         None, {"max_class_recall_drop": 0.2}, True, "no class recall drops"),
        ("broken champion does not block a valid challenger", metrics(0.75), metrics(0.99),
         "OSError: artifact missing", {}, True, "could not be evaluated"),
        ("broken champion: the floor still applies", metrics(0.60), None,
         "OSError: artifact missing", {}, False, "< floor"),
    ],
)
def test_decide(
    name: str,
    challenger: Metrics,
    champion: Metrics | None,
    champion_error: str | None,
    cfg_changes: dict[str, float],
    promote: bool,
    reason_has: str,
) -> None:
    cfg = config.override(CFG, **cfg_changes)
    decision = decide(challenger, champion, cfg, champion_error=champion_error)
    assert decision.promote is promote, (name, decision.reasons)
    assert any(reason_has in r for r in decision.reasons), decision.reasons


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
    ("chal", "champ", "low", "high"),
    [
        ([True] * 10, [True] * 10, 1.0, 1.0),  # never disagree
        ([True] * 10, [False] * 10, 0.0, 0.002),  # 10 vs 0 discordant: 2 * 0.5**10
        ([True, False] * 5, [False, True] * 5, 1.0, 1.0),  # 5 vs 5
    ],
)
def test_mcnemar_exact(chal: list[bool], champ: list[bool], low: float, high: float) -> None:
    assert low <= mcnemar_exact_p(chal, champ) <= high


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
