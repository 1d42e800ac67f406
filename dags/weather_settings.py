"""What the DAG files read when they are parsed: schedule, registered model, the champion Asset,
and who is alerted about a failed or late night.

Both ``weather_retrain`` and ``weather_champion_consumer`` import this module, so the Asset
they agree on is defined once. Only the environment is read (``WEATHER_SCHEDULE`` and
``WEATHER_REGISTERED_MODEL``, declared in ``weather_tasks.config``; the alert settings below),
no I/O and no heavy import: the dag-processor parses these files every few seconds.
``.airflowignore`` keeps the dag-processor from parsing this module as a DAG file of its own.
"""

from __future__ import annotations

import math
import os
from datetime import timedelta

from airflow.sdk import Asset, AssetAlias

from weather_tasks import config, tracking  # both stdlib-only at import: cheap at parse time
from weather_tasks.config import ConfigError

_PARSED = config.from_env_only(("schedule", "registered_model"))

SCHEDULE: str | None = _PARSED.cron
REGISTERED_MODEL: str = _PARSED.registered_model

# Downstream DAGs schedule on this Asset. weather_retrain's promote task emits it through the
# alias, so that an event exists only when the champion actually changed: an Asset listed
# directly in ``outlets`` gets an event on every successful run.
CHAMPION = Asset(
    name=tracking.champion_asset_name(REGISTERED_MODEL),
    uri=tracking.champion_asset_uri(REGISTERED_MODEL),
)
CHAMPION_UPDATES = AssetAlias(name=f"{CHAMPION.name}-updates")


# --- alerts (dags/weather_notify.py) ---------------------------------------------------------
# Parse-time settings like the schedule, but not PipelineConfig's: only the DAG's callbacks use
# them. They say who is told, never how to reach them: the SMTP server and the webhook URL,
# with any credentials, live in Airflow connections (conn ids only here), so no secret is in
# the DAG file, its settings or the serialized DAG.


def _addresses(raw: str) -> tuple[str, ...]:
    """``WEATHER_ALERT_EMAIL``: comma-separated recipients; empty means no email."""
    addresses = tuple(a.strip() for a in raw.split(",") if a.strip())
    bad = [a for a in addresses if "@" not in a]
    if bad:
        raise ConfigError(f"WEATHER_ALERT_EMAIL: {', '.join(bad)} is not an email address "
                          "(comma-separated recipients, or empty for no email)")
    return addresses


def _deadline(raw: str) -> timedelta | None:
    """``WEATHER_NIGHT_DEADLINE_HOURS``: a night not finished this long after it was queued is
    late; empty means no deadline."""
    if not raw.strip():
        return None
    try:
        hours = float(raw)
    except ValueError:
        hours = math.nan
    if not 0 < hours <= 24 * 7:  # also refuses nan and inf
        raise ConfigError(f"WEATHER_NIGHT_DEADLINE_HOURS={raw!r} must be a number of hours in "
                          "(0, 168], or empty for no deadline")
    return timedelta(hours=hours)


ALERT_EMAILS: tuple[str, ...] = _addresses(os.environ.get("WEATHER_ALERT_EMAIL", ""))
# Airflow's SMTP connection (type smtp); its extra names the sender (from_email).
ALERT_SMTP_CONN: str = os.environ.get("WEATHER_ALERT_SMTP_CONN", "").strip() or "smtp_default"
# An Airflow HTTP connection whose host is the whole webhook URL (a Slack incoming webhook or
# any receiver of a JSON POST); None: no webhook.
ALERT_WEBHOOK_CONN: str | None = os.environ.get("WEATHER_ALERT_WEBHOOK_CONN", "").strip() or None
NIGHT_DEADLINE: timedelta | None = _deadline(os.environ.get("WEATHER_NIGHT_DEADLINE_HOURS", ""))
# Where the alerts link to (the run's page); empty: no link.
AIRFLOW_BASE_URL: str = os.environ.get("AIRFLOW__API__BASE_URL", "").strip().rstrip("/")
