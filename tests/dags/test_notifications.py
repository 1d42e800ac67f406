"""Alerts in the parsed DAG: notifiers and deadlines exactly when the settings ask for them.

Pure: the DAG file is parsed under an environment, nothing is sent (the receivers are in
tests/integration/test_notifications.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from unittest import mock

import pytest

from tests.support import DAGS
from tests.support.dags import load_dag_file
from weather_tasks.config import ConfigError

ALERT_ENV = ("WEATHER_ALERT_EMAIL", "WEATHER_ALERT_SMTP_CONN", "WEATHER_ALERT_WEBHOOK_CONN",
             "WEATHER_NIGHT_DEADLINE_HOURS", "AIRFLOW__API__BASE_URL")
SMTP = "airflow.providers.smtp.notifications.smtp.SmtpNotifier"
HTTP = "airflow.providers.http.notifications.http.HttpNotifier"


def _dag(monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    """weather_retrain parsed as a fresh module with only ``env`` among the alert settings."""
    for k in ALERT_ENV:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    module = load_dag_file(DAGS / "weather_retrain.py", monkeypatch)
    return module.weather_retrain_dag


def _failure_callbacks(dag: Any) -> list[Any]:
    callbacks = dag.on_failure_callback
    return callbacks if isinstance(callbacks, list) else [callbacks]


def _path(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__name__}"


def test_no_settings_no_alerts(monkeypatch: pytest.MonkeyPatch) -> None:
    dag = _dag(monkeypatch, WEATHER_NIGHT_DEADLINE_HOURS="4")  # a deadline alone alerts nobody
    assert [c.__name__ for c in _failure_callbacks(dag)] == ["_record_failed_night"]
    assert not dag.deadline


def test_empty_settings_mean_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """compose passes unset settings as ""."""
    dag = _dag(monkeypatch, **{k: "" for k in ALERT_ENV})
    assert [c.__name__ for c in _failure_callbacks(dag)] == ["_record_failed_night"]
    assert not dag.deadline


def test_email_alerts(monkeypatch: pytest.MonkeyPatch) -> None:
    dag = _dag(monkeypatch, WEATHER_ALERT_EMAIL=" ops@example.org, ml@example.org ,")
    first, smtp = _failure_callbacks(dag)
    assert first.__name__ == "_record_failed_night"
    assert _path(smtp) == SMTP
    assert smtp.to == ["ops@example.org", "ml@example.org"]
    assert smtp.smtp_conn_id == "smtp_default"
    assert "{{ run_id }}" in smtp.subject and "{{ reason | e }}" in smtp.html_content
    assert "/dags/" not in smtp.html_content  # no AIRFLOW__API__BASE_URL: no link
    assert not dag.deadline


def test_webhook_alerts_and_a_named_smtp_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    dag = _dag(monkeypatch, WEATHER_ALERT_EMAIL="ops@example.org",
               WEATHER_ALERT_SMTP_CONN="mail_relay", WEATHER_ALERT_WEBHOOK_CONN="weather_alerts",
               AIRFLOW__API__BASE_URL="https://airflow.example/")
    _, smtp, http = _failure_callbacks(dag)
    assert smtp.smtp_conn_id == "mail_relay"
    assert _path(http) == HTTP
    assert (http.http_conn_id, http.method) == ("weather_alerts", "POST")
    assert http.json["url"] == (
        "https://airflow.example/dags/weather_retrain/runs/{{ run_id | urlencode }}")
    assert {"text", "dag_id", "run_id", "task_id", "reason"} <= set(http.json)


@pytest.mark.parametrize(("raw", "interval"),
                         [("4", timedelta(hours=4)), ("1.5", timedelta(minutes=90))])
def test_a_deadline_per_channel(
    monkeypatch: pytest.MonkeyPatch, raw: str, interval: timedelta
) -> None:
    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineReference

    dag = _dag(monkeypatch, WEATHER_ALERT_EMAIL="ops@example.org",
               WEATHER_ALERT_WEBHOOK_CONN="weather_alerts", WEATHER_NIGHT_DEADLINE_HOURS=raw)
    assert [a.interval for a in dag.deadline] == [interval, interval]
    assert all(a.reference == DeadlineReference.DAGRUN_QUEUED_AT for a in dag.deadline)
    assert all(isinstance(a.callback, AsyncCallback) for a in dag.deadline)  # the triggerer
    smtp, http = (a.callback for a in dag.deadline)
    assert (smtp.path, http.path) == (SMTP, HTTP)
    assert smtp.kwargs["to"] == ["ops@example.org"]
    assert http.kwargs["http_conn_id"] == "weather_alerts"
    assert "{{ dag_run.dag_run_id }}" in http.kwargs["json"]["text"]


def test_the_deadline_survives_serialization(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the scheduler and triggerer get is the serialized DAG: the alert must be in it."""
    from airflow.serialization.serialized_objects import DagSerialization

    dag = _dag(monkeypatch, WEATHER_ALERT_WEBHOOK_CONN="weather_alerts",
               WEATHER_NIGHT_DEADLINE_HOURS="4")
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    (alert,) = restored.deadline or []  # kept encoded until the scheduler decodes it
    assert isinstance(alert, dict)
    assert alert["reference"] == {"reference_type": "DagRunQueuedAtDeadline"}
    assert alert["interval"]["__data__"] == 4 * 3600
    assert alert["callback"]["__data__"]["path"] == HTTP


def test_parsing_with_alerts_opens_no_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The notifiers name their connections; they fetch them only when they send."""
    from airflow.sdk import BaseHook

    with mock.patch.object(BaseHook, "get_connection") as get_connection:
        _dag(monkeypatch, WEATHER_ALERT_EMAIL="ops@example.org",
             WEATHER_ALERT_WEBHOOK_CONN="weather_alerts", WEATHER_NIGHT_DEADLINE_HOURS="4")
    get_connection.assert_not_called()


@pytest.mark.parametrize(
    ("name", "raw"),
    [("WEATHER_NIGHT_DEADLINE_HOURS", "soon"), ("WEATHER_NIGHT_DEADLINE_HOURS", "0"),
     ("WEATHER_NIGHT_DEADLINE_HOURS", "-2"), ("WEATHER_NIGHT_DEADLINE_HOURS", "inf"),
     ("WEATHER_NIGHT_DEADLINE_HOURS", "nan"), ("WEATHER_ALERT_EMAIL", "ops@example.org, ops")],
)
def test_bad_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str
) -> None:
    with pytest.raises(ConfigError, match=name):
        _dag(monkeypatch, **{"WEATHER_ALERT_EMAIL": "ops@example.org", name: raw})
