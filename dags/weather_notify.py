"""Who hears about a failed or late night, and what they read (settings: ``weather_settings``).

- **A failed night**: after ``_record_failed_night``, the DAG's ``on_failure_callback`` list
  holds the providers' notifiers (``SmtpNotifier`` to ``WEATHER_ALERT_EMAIL``, ``HttpNotifier``
  posting JSON to the connection ``WEATHER_ALERT_WEBHOOK_CONN``). The dag-processor calls each
  with the run's context: ``dag``, ``run_id``, ``reason`` and, when the scheduler knows it,
  ``ti`` (the last task instance, the one that failed).
- **A late night**: Airflow 3 has no SLAs; a ``DeadlineAlert`` per channel fires when a run has
  not finished ``WEATHER_NIGHT_DEADLINE_HOURS`` after it was queued (queued, not logical, time:
  a manual run has no logical date). The scheduler hands it to the triggerer, which imports the
  callback by path, builds it from the serialized kwargs plus a small context (``dag_run`` as a
  dict, ``deadline``) and awaits it. The callback is the same provider notifier class: the
  triggerer can import it, whereas this folder is not on its ``sys.path``.

Messages are Jinja templates the notifiers render with those contexts: the DAG, the run id,
the failed task and the reason (or how late the run is), and a link to the run when
``AIRFLOW__API__BASE_URL`` is set. Secrets stay in the connections: the DAG and the serialized
deadline kwargs hold connection ids and recipients only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import timedelta

    from airflow.sdk.bases.notifier import BaseNotifier
    from airflow.sdk.definitions.deadline import DeadlineAlert

SMTP_NOTIFIER = "airflow.providers.smtp.notifications.smtp.SmtpNotifier"
HTTP_NOTIFIER = "airflow.providers.http.notifications.http.HttpNotifier"

# Failure context (dag-processor): ti is there only when the scheduler named the last task, and
# the DAG renders with StrictUndefined, so it is tested with "is defined".
_FAILED_TASK = "{% if ti is defined and ti %}{{ ti.task_id }}{% endif %}"
_FAILED_IN = "{% if ti is defined and ti %} in task {{ ti.task_id }}{% endif %}"


def failure_alerts(dag_id: str) -> list[BaseNotifier]:
    """The notifiers for a failed run of ``dag_id``, one per configured channel (maybe none)."""
    settings = _settings()
    text = (f"{dag_id} night {{{{ run_id }}}} failed{_FAILED_IN}: {{{{ reason | e }}}}"
            + _link(dag_id, "run_id", " "))
    fields = {"event": "failed", "dag_id": dag_id, "run_id": "{{ run_id }}",
              "task_id": _FAILED_TASK, "reason": "{{ reason }}",
              "url": _link(dag_id, "run_id")}
    subject = f"[{dag_id}] night {{{{ run_id }}}} failed{_FAILED_IN}"
    return [_notifier(path, kwargs)
            for path, kwargs in _channels(settings, subject, text, fields)]


def night_deadlines(dag_id: str) -> list[DeadlineAlert]:
    """One ``DeadlineAlert`` per configured channel, none without a deadline or a channel."""
    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    settings = _settings()
    late: timedelta | None = settings.NIGHT_DEADLINE
    if late is None:
        return []
    hours = f"{late.total_seconds() / 3600:g}"
    text = (f"{dag_id} night {{{{ dag_run.dag_run_id }}}} has not finished {hours} h after it "
            "was queued (state {{ dag_run.state }}, deadline {{ deadline.deadline_time }})"
            + _link(dag_id, "dag_run.dag_run_id", " "))
    fields = {"event": "late", "dag_id": dag_id, "run_id": "{{ dag_run.dag_run_id }}",
              "state": "{{ dag_run.state }}", "deadline": "{{ deadline.deadline_time }}",
              "url": _link(dag_id, "dag_run.dag_run_id")}
    subject = f"[{dag_id}] night {{{{ dag_run.dag_run_id }}}} is late ({hours} h)"
    return [
        DeadlineAlert(
            reference=DeadlineReference.DAGRUN_QUEUED_AT,
            interval=late,
            callback=AsyncCallback(path, kwargs=kwargs),
            name=f"{dag_id} late via {path.rsplit('.', 1)[-1]}",
        )
        for path, kwargs in _channels(settings, subject, text, fields)
    ]


def _settings() -> Any:
    """``weather_settings`` as imported now (read when called: tests re-import it per env)."""
    import weather_settings

    return weather_settings


def _channels(
    settings: Any, subject: str, text: str, fields: dict[str, str]
) -> list[tuple[str, dict[str, Any]]]:
    """(notifier class path, its keyword arguments) for each configured channel.

    Plain data, so the same arguments build a failure notifier here and are serialized as a
    deadline callback's kwargs for the triggerer.
    """
    channels: list[tuple[str, dict[str, Any]]] = []
    if settings.ALERT_EMAILS:
        channels.append((SMTP_NOTIFIER, {
            "to": list(settings.ALERT_EMAILS),
            "smtp_conn_id": settings.ALERT_SMTP_CONN,
            "subject": subject,
            "html_content": f"<p>{text}</p>",
        }))
    if settings.ALERT_WEBHOOK_CONN:
        # "text" is what Slack shows (it wants & < > escaped, as | e does); the fields are
        # for any other JSON receiver.
        channels.append((HTTP_NOTIFIER, {
            "http_conn_id": settings.ALERT_WEBHOOK_CONN,
            "json": {"text": text, **fields},
        }))
    return channels


def _notifier(path: str, kwargs: dict[str, Any]) -> BaseNotifier:
    from airflow.providers.http.notifications.http import HttpNotifier
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    cls = {SMTP_NOTIFIER: SmtpNotifier, HTTP_NOTIFIER: HttpNotifier}[path]
    return cls(**kwargs)


def _link(dag_id: str, run_id_expr: str, prefix: str = "") -> str:
    """A template for the run's page in the Airflow UI, or "" without a base URL."""
    base = _settings().AIRFLOW_BASE_URL
    if not base:
        return ""
    return f"{prefix}{base}/dags/{dag_id}/runs/{{{{ {run_id_expr} | urlencode }}}}"
