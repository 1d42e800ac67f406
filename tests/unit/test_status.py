"""The night summary and the freshness check of ``weather status`` (pure parts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from weather_tasks import config, status

CFG = config.PipelineConfig()
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def test_night_key_keeps_only_safe_characters() -> None:
    assert status.night_key(CFG, "scheduled__2026-03-02T02:00:00+00:00") == (
        "nights/scheduled__2026-03-02T02_00_00_00_00.json"
    )
    assert status.night_key(CFG, "manual__a b/../c") == "nights/manual__a_b_.._c.json"


@pytest.mark.parametrize(
    ("trained", "promoted", "outcome"),
    [
        (None, None, "nothing new"),
        ({"run_id": "r"}, {"promoted": True, "status": "promoted"}, "promoted"),
        ({"run_id": "r"}, {"promoted": False, "status": "not_better"}, "not promoted"),
    ],
)
def test_night_summary_outcome(
    trained: dict[str, Any] | None, promoted: dict[str, Any] | None, outcome: str
) -> None:
    ingested = {"new": 3, "accepted": 2, "duplicate": 0, "quarantined": {"not_an_image": 1},
                "quarantined_total": 1, "split_counts": {"train": {}}}
    summary = status.night_summary(
        airflow_run_id="scheduled__x", logical_date=NOW, started_at=NOW - timedelta(hours=1),
        ingested=ingested, trained=trained, evaluation=None, promoted=promoted, forced=False,
    )
    assert summary["outcome"] == outcome
    assert summary["ingest"]["quarantined"] == {"not_an_image": 1}
    assert "split_counts" not in summary["ingest"]  # small: counts, not the whole report
    assert summary["started_at"] == "2026-03-02T11:00:00+00:00"
    assert summary["ended_at"] is None  # stamped when recorded


def test_night_summary_keeps_the_screening_small() -> None:
    screened = {"screened_version": "v000004", "manifest_version": "v000005", "n_new": 9,
                "n_reference": 120, "mmd_p": 0.002, "mmd2": 0.1, "n_suspects": 2, "held": 1,
                "hold_reason": "drift: ...", "run_id": "r", "note": None,
                "champion_version": "3"}
    summary = status.night_summary(
        airflow_run_id="scheduled__x", logical_date=NOW, started_at=NOW, ingested=None,
        screened=screened, trained={"run_id": "t"}, evaluation=None, promoted=None,
        forced=False,
    )
    assert summary["screening"]["held"] == 1 and summary["screening"]["mmd_p"] == 0.002
    assert "mmd2" not in summary["screening"] and "champion_version" not in summary["screening"]
    assert summary["screening"]["note"] is None  # kept: it says why a test was not done
    skipped = status.night_summary(
        airflow_run_id="scheduled__y", logical_date=NOW, started_at=NOW, ingested=None,
        trained=None, evaluation=None, promoted=None, forced=False,
    )
    assert skipped["screening"] is None


@pytest.mark.parametrize(
    ("screening", "line"),
    [
        ({"n_new": 9, "mmd_p": 0.4567, "n_suspects": 0, "held": 0, "hold_reason": None},
         "9 new photos, drift MMD p 0.457, 0 suspect labels (0 held for review)"),
        ({"n_new": 3, "mmd_p": None, "n_suspects": None, "held": None, "hold_reason": None},
         "3 new photos, drift not tested, 0 suspect labels (0 held for review)"),
        ({"n_new": 12, "mmd_p": 0.002, "n_suspects": 4, "held": 3,
          "hold_reason": "drift: p 0.002 < 0.01"},
         "12 new photos, drift MMD p 0.002, 4 suspect labels (3 held for review); promotion "
         "held: drift: p 0.002 < 0.01"),
    ],
)
def test_screening_line(screening: dict[str, Any], line: str) -> None:
    assert status.screening_line(screening) == line
    night = status.Night("nights/x.json", {"airflow_run_id": "scheduled__x",
                                           "outcome": "promoted", "ended_at": NOW.isoformat(),
                                           "screening": screening})
    assert night.lines()[1] == f"  screening: {line}"


def _night(hours_ago: float, outcome: str = "promoted") -> status.Night:
    ended = (NOW - timedelta(hours=hours_ago)).isoformat()
    return status.Night("nights/x.json", {"airflow_run_id": "scheduled__x", "outcome": outcome,
                                          "ended_at": ended})


@pytest.mark.parametrize(
    ("night", "max_age", "state"),
    [
        (None, 26, "none"),
        (_night(1), 26, "ok"),
        (_night(1, "nothing new"), 26, "ok"),
        (_night(26), 26, "ok"),  # the limit itself is still fresh
        (_night(26.1), 26, "stale"),
        (_night(3), 2, "stale"),
        (_night(1, "failed"), 26, "failed"),
    ],
)
def test_judge_night(night: status.Night | None, max_age: float, state: str) -> None:
    check = status.judge_night(config.override(CFG, status_max_age_hours=max_age), night, NOW)
    assert check.state == state
    assert check.failed is (state != "ok")
    assert "\n" not in check.summary() and check.summary().startswith(f"{state}: ")
    if state == "stale":
        assert f"WEATHER_STATUS_MAX_AGE_HOURS={max_age:g}" in check.message


@pytest.mark.parametrize("value", ["0", "-1", "abc"])
def test_max_age_must_be_positive_hours(value: str) -> None:
    with pytest.raises(config.ConfigError, match="WEATHER_STATUS_MAX_AGE_HOURS"):
        config.from_env({"WEATHER_STATUS_MAX_AGE_HOURS": value})


@pytest.mark.parametrize("value", ["nights", "/nights/", "curated/nights/"])
def test_nights_prefix_is_a_prefix_apart(value: str) -> None:
    with pytest.raises(config.ConfigError, match="nights"):
        config.from_env({"WEATHER_NIGHTS_PREFIX": value})
