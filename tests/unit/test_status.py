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
