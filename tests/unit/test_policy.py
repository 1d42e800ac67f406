"""The promotion rule and McNemar's exact test, as tables (no services)."""

from __future__ import annotations

import pytest

from weather_tasks import config
from weather_tasks.metrics import ClassMetrics, Interval, Metrics
from weather_tasks.policy import decide, mcnemar_exact_p

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
         {"min_delta": 0.01}, False, "min_delta rule"),
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


def diff(low: float, high: float) -> Interval:
    return Interval((low + high) / 2, low, high)


MARGIN = {"non_inferiority_margin": 0.03}


@pytest.mark.parametrize(
    ("name", "challenger", "champion", "difference", "cfg_changes", "promote", "reason_has"),
    [
        ("margin off: min_delta decides, the interval is told", metrics(0.84), metrics(0.85),
         diff(-0.05, 0.03), {}, False, "accuracy difference -0.0100 (95% CI -0.0500 to 0.0300) "
         "(for information)"),
        ("non-inferior: lower bound above -margin promotes a slightly worse point estimate",
         metrics(0.84), metrics(0.85), diff(-0.029, 0.009), MARGIN, True,
         "non-inferiority rule: accuracy difference -0.0100 (95% CI -0.0290 to 0.0090), "
         "lower bound > -margin -0.0300"),
        ("not shown non-inferior: a better point estimate with a wide interval is refused",
         metrics(0.86), metrics(0.85), diff(-0.06, 0.08), MARGIN, False, "lower bound <= -margin"),
        ("lower bound exactly at -margin is refused", metrics(0.85), metrics(0.85),
         diff(-0.03, 0.03), MARGIN, False, "<= -margin -0.0300"),
        ("non-inferior but under the floor", metrics(0.65), metrics(0.66), diff(-0.02, 0.0),
         MARGIN, False, "< floor 0.7000"),
        ("non-inferior but a class recall drops", metrics(0.85, (0.95, 0.95, 0.95, 0.70)),
         metrics(0.85, (0.80, 0.80, 0.90, 0.90)), diff(-0.02, 0.02), MARGIN, False,
         "recall of 'rain' drops"),
        ("no champion: the floor alone, margin or not", metrics(0.80), None, None, MARGIN, True,
         ">= floor"),
    ],
)
def test_decide_with_the_paired_interval(
    name: str,
    challenger: Metrics,
    champion: Metrics | None,
    difference: Interval | None,
    cfg_changes: dict[str, float],
    promote: bool,
    reason_has: str,
) -> None:
    cfg = config.override(CFG, **cfg_changes)
    decision = decide(challenger, champion, cfg, difference=difference)
    assert decision.promote is promote, (name, decision.reasons)
    assert any(reason_has in r for r in decision.reasons), decision.reasons


def test_the_margin_rule_needs_the_interval() -> None:
    with pytest.raises(ValueError, match="paired difference"):
        decide(metrics(0.9), metrics(0.8), config.override(CFG, **MARGIN))


def test_reasons_give_each_accuracy_with_its_interval() -> None:
    with_n = Metrics(accuracy=0.8, per_class={}, n=10)
    decision = decide(with_n, None, CFG)
    assert "accuracy 0.8000 (95% CI 0.4902-0.9433) >= floor 0.7000" in decision.reasons
