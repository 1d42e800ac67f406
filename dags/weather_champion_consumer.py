"""Example downstream DAG: runs whenever ``weather_retrain`` promotes a new champion.

It is scheduled on the champion Asset, reads the event's metadata (registered model, version,
accuracy, manifest version) and pins the exact version it was told about, which is what a
serving deployment would roll out: ``models:/weather-classifier/<version>`` rather than the
moving ``@champion`` alias, so a later promotion cannot change what this run deploys.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import dag, task
from weather_settings import CHAMPION, REGISTERED_MODEL


@dag(
    dag_id="weather_champion_consumer",
    schedule=[CHAMPION],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["weather", "ml", "serving"],
    default_args={"owner": "ml-platform"},
    doc_md=__doc__,
)
def weather_champion_consumer() -> None:
    @task
    def new_champion(triggering_asset_events: Any = None) -> dict[str, Any]:
        """The newest champion announced by the events that triggered this run."""
        from weather_tasks import tracking

        events = [e for evs in (triggering_asset_events or {}).values() for e in evs]
        if not events:
            raise ValueError("triggered without a champion event (run it from an Asset event)")
        extra = dict(max(events, key=lambda e: e.timestamp).extra or {})
        pinned = tracking.version_uri(extra.get("registered_model", REGISTERED_MODEL),
                                      extra["version"])
        print(
            f"new champion {pinned}: accuracy {extra.get('accuracy')}, "
            f"manifest {extra.get('manifest_version')}"
        )
        return {**extra, "pinned_model_uri": pinned}

    new_champion()


weather_champion_consumer()
