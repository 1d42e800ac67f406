"""What the DAG files read when they are parsed: schedule, registered model, the champion Asset.

Both ``weather_retrain`` and ``weather_champion_consumer`` import this module, so the Asset
they agree on is defined once. Only the environment is read (``WEATHER_SCHEDULE`` and
``WEATHER_REGISTERED_MODEL``, declared in ``weather_tasks.config``), no I/O and no heavy import:
the dag-processor parses these files every few seconds. ``.airflowignore`` keeps the
dag-processor from parsing this module as a DAG file of its own.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetAlias

from weather_tasks import config, tracking  # both stdlib-only at import: cheap at parse time

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
