"""The promotion lease's names and settings (no services; its behaviour on a real S3 server is
tested in tests/integration/test_promotion_faults.py)."""

from __future__ import annotations

import os
import socket

import pytest

from weather_tasks import config, lease
from weather_tasks.config import ConfigError


@pytest.mark.parametrize(
    ("airflow_run_id", "suffix"),
    [
        ("scheduled__2026-01-02T02:00:00+00:00", "scheduled__2026-01-02T02:00:00+00:00"),
        (None, "cli"),
    ],
)
def test_owner_names_host_process_and_run(airflow_run_id: str | None, suffix: str) -> None:
    owner = lease.owner_name(airflow_run_id)
    assert owner == f"{socket.gethostname()}:{os.getpid()}:{suffix}"


def test_lease_key_is_under_the_locks_prefix() -> None:
    cfg = config.from_env(environ={"WEATHER_LOCKS_PREFIX": "ops/locks/"})
    assert lease.lease_key(cfg, "promotion/weather-classifier") == (
        "ops/locks/promotion/weather-classifier.json"
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"WEATHER_LOCKS_PREFIX": "locks"},
            "WEATHER_LOCKS_PREFIX (locks_prefix): 'locks' must end",
        ),
        ({"WEATHER_LOCKS_PREFIX": "curated/locks/"}, "prefixes must not nest"),
        ({"WEATHER_LOCKS_PREFIX": ""}, "WEATHER_LOCKS_PREFIX (locks_prefix) is set but empty"),
        ({"WEATHER_LEASE_EXPIRY": "0"}, "WEATHER_LEASE_EXPIRY (lease_expiry): 0.0 not in [1, "),
        ({"WEATHER_LEASE_WAIT": "-1"}, "WEATHER_LEASE_WAIT (lease_wait): -1.0 not in [0, "),
    ],
)
def test_bad_lease_settings_fail_naming_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.from_env(environ=environ)
    assert message in str(err.value)


def test_lease_defaults() -> None:
    cfg = config.from_env(environ={})
    assert (cfg.locks_prefix, cfg.lease_expiry, cfg.lease_wait) == ("locks/", 600.0, 120.0)
