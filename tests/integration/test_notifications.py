"""Alerts reach real receivers: an SMTP sink and an HTTP receiver on 127.0.0.1.

The DAG file is parsed with the alert settings set; its failure callbacks are called the way
the dag-processor calls them (one shared context: ``dag``, ``run_id``, ``reason``, the last
``ti`` when the scheduler knows it), and its deadline callbacks the way the triggerer runs
them (Airflow's own ``CallbackTrigger``: import by path, kwargs plus a small context, await).
Connections come from ``AIRFLOW_CONN_*`` variables, as in the compose file.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support import DAGS
from tests.support.dags import load_dag_file
from tests.support.sinks import HttpReceiver, SmtpSink

if "airflow" not in sys.modules:  # never ~/airflow: a throwaway home, as tests/dags does
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="weather-notify-test-")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"

WEBHOOK_SECRET = "T0000/B0000/not-a-real-token"  # the secret part of a Slack webhook URL
BASE_URL = "http://airflow.example:8080"
RUN_ID = "scheduled__2026-03-02T02:00:00+00:00"
RUN_ID_IN_URL = "scheduled__2026-03-02T02%3A00%3A00%2B00%3A00"


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as server:
        yield server


@pytest.fixture
def dag(smtp_sink: SmtpSink, receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch) -> Any:
    """weather_retrain parsed with email and webhook alerts and a 4 h deadline."""
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": smtp_sink.port,
        "extra": {"from_email": "weather@example.org", "disable_ssl": True,
                  "disable_tls": True, "timeout": 30, "retry_limit": 0},
    }))
    monkeypatch.setenv("AIRFLOW_CONN_WEATHER_ALERTS", json.dumps({
        "conn_type": "http", "host": f"{receiver.url}/services/{WEBHOOK_SECRET}",
    }))
    env = {"WEATHER_ALERT_EMAIL": "ops@example.org,ml@example.org",
           "WEATHER_ALERT_WEBHOOK_CONN": "weather_alerts",
           "WEATHER_NIGHT_DEADLINE_HOURS": "4",
           "AIRFLOW__API__BASE_URL": BASE_URL + "/"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    module = load_dag_file(DAGS / "weather_retrain.py", monkeypatch)
    return module.weather_retrain_dag


def _alerts(dag: Any) -> list[Any]:
    """The failure callbacks after _record_failed_night (which needs S3; tested elsewhere)."""
    first, *alerts = dag.on_failure_callback
    assert first.__name__ == "_record_failed_night"
    return alerts


def test_a_failed_night_is_mailed_and_posted(
    dag: Any, smtp_sink: SmtpSink, receiver: HttpReceiver
) -> None:
    context = {"dag": dag, "run_id": RUN_ID, "reason": "task_failure", "params": {},
               "ti": SimpleNamespace(task_id="train")}
    for callback in _alerts(dag):
        callback(context)  # the dag-processor passes one context to every callback

    (mail,) = smtp_sink.mails
    assert mail.rcpt_to == ["ops@example.org", "ml@example.org"]
    assert mail.mail_from == "weather@example.org"
    assert mail.message["Subject"] == f"[weather_retrain] night {RUN_ID} failed in task train"
    body = mail.text()
    assert f"weather_retrain night {RUN_ID} failed in task train: task_failure" in body
    assert f"{BASE_URL}/dags/weather_retrain/runs/{RUN_ID_IN_URL}" in body

    (posted,) = receiver.requests
    assert posted.path == f"/services/{WEBHOOK_SECRET}"
    assert posted.headers["Content-Type"] == "application/json"
    assert posted.body == {
        "text": f"weather_retrain night {RUN_ID} failed in task train: task_failure "
                f"{BASE_URL}/dags/weather_retrain/runs/{RUN_ID_IN_URL}",
        "event": "failed", "dag_id": "weather_retrain", "run_id": RUN_ID, "task_id": "train",
        "reason": "task_failure", "url": f"{BASE_URL}/dags/weather_retrain/runs/{RUN_ID_IN_URL}",
    }


def test_a_failure_without_a_task_still_alerts(
    dag: Any, smtp_sink: SmtpSink, receiver: HttpReceiver
) -> None:
    """When the scheduler names no task, the dag-processor's context is dag, run_id, reason;
    the DAG renders with StrictUndefined, so a template that needed ti would fail here."""
    context = {"dag": dag, "run_id": "manual__x", "reason": "timed out <8h>"}
    for callback in _alerts(dag):
        callback(context)
    (mail,) = smtp_sink.mails
    assert mail.message["Subject"] == "[weather_retrain] night manual__x failed"
    assert "night manual__x failed: timed out &lt;8h&gt;" in mail.text()  # HTML-escaped
    (posted,) = receiver.requests
    assert posted.body["task_id"] == ""
    assert posted.body["reason"] == "timed out <8h>"


def test_a_late_night_alerts_through_the_triggerer_callback(
    dag: Any, smtp_sink: SmtpSink, receiver: HttpReceiver
) -> None:
    from airflow.models.callback import CallbackState
    from airflow.triggers.callback import CallbackTrigger

    # What Deadline.handle_miss adds to the callback's kwargs (dag_run: DAGRunResponse's JSON).
    context = {
        "dag_run": {"dag_run_id": RUN_ID, "dag_id": "weather_retrain", "state": "running",
                    "queued_at": "2026-03-02T02:00:01+00:00"},
        "deadline": {"id": str(uuid.uuid4()), "deadline_time": "2026-03-02T06:00:01+00:00"},
    }

    async def run(trigger: CallbackTrigger) -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    assert len(dag.deadline) == 2
    for alert in dag.deadline:
        trigger = CallbackTrigger(alert.callback.path, {**alert.callback.kwargs,
                                                        "context": context})
        events = asyncio.run(run(trigger))
        assert events[-1]["state"] == CallbackState.SUCCESS, events[-1]

    (mail,) = smtp_sink.mails
    assert mail.message["Subject"] == f"[weather_retrain] night {RUN_ID} is late (4 h)"
    assert (f"weather_retrain night {RUN_ID} has not finished 4 h after it was queued "
            "(state running, deadline 2026-03-02T06:00:01+00:00)") in mail.text()
    (posted,) = receiver.requests
    assert posted.path == f"/services/{WEBHOOK_SECRET}"
    assert posted.body["event"] == "late"
    assert (posted.body["run_id"], posted.body["state"]) == (RUN_ID, "running")
    assert posted.body["url"] == f"{BASE_URL}/dags/weather_retrain/runs/{RUN_ID_IN_URL}"


def test_an_unreachable_webhook_fails_its_callback(
    dag: Any, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver that is down fails that notifier (the dag-processor logs it and goes on to
    the next callback); the email still goes out."""
    receiver = HttpReceiver()  # bound, never served, then closed: nothing listens there
    receiver.server_close()
    monkeypatch.setenv("AIRFLOW_CONN_WEATHER_ALERTS", json.dumps({
        "conn_type": "http", "host": f"{receiver.url}/services/x",
        "extra": {"timeout": 10}}))
    context = {"dag": dag, "run_id": RUN_ID, "reason": "task_failure"}
    smtp, webhook = _alerts(dag)
    smtp(context)
    with pytest.raises(Exception, match="Connection refused|Failed to establish"):
        webhook(context)
    assert len(smtp_sink.mails) == 1


def test_the_webhook_url_stays_in_the_connection(dag: Any) -> None:
    """The DAG as Airflow stores it (serialized, deadline kwargs included) names the
    connection id, never the URL or its token."""
    from airflow.serialization.serialized_objects import DagSerialization

    serialized = json.dumps(DagSerialization.to_dict(dag), default=str)
    assert "weather_alerts" in serialized
    assert WEBHOOK_SECRET not in serialized and "127.0.0.1" not in serialized
