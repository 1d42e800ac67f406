"""Read the nightly screenings (drift, suspect labels) from MLflow, for display only.

``weather_tasks.screen`` logs one run per screened manifest version in the experiment
``<experiment_name>`` + ``tracking.SCREENING_EXPERIMENT_SUFFIX``; this module reads those runs'
tags, metrics and suspect list by the names in ``weather_tasks.tracking`` and decides
nothing. mlflow is imported inside the functions so that loading the plugin stays cheap.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from weather_tasks import tracking

SUSPECTS_SHOWN = 20  # per screening: the page lists the first ones, the run has them all


@dataclass(frozen=True)
class ScreeningView:
    """One screening run as the page shows it."""

    run_id: str
    manifest_version: str | None
    airflow_run_id: str | None
    started: str  # ISO 8601, UTC
    n_new: int | None
    n_reference: int | None
    mmd_p: float | None  # None: not tested (no champion, no reference, nothing new)
    hold_reason: str | None
    n_suspects: int | None
    suspects: list[dict[str, Any]] = field(default_factory=list)
    plot_artifact: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_screenings(
    client_or_tracking_uri: Any, experiment_name: str, limit: int = 14
) -> list[ScreeningView]:
    """The newest ``limit`` screening runs of ``experiment_name`` (the screening experiment's
    full name), newest first; empty when it does not exist yet. Suspects come from the run's
    suspect list (at most :data:`SUSPECTS_SHOWN` each), the hold reason from its report."""
    if isinstance(client_or_tracking_uri, str):
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=client_or_tracking_uri)
    else:
        client = client_or_tracking_uri
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    runs = client.search_runs(
        [experiment.experiment_id], max_results=limit, order_by=["attributes.start_time DESC"]
    )
    return [_view(client, run) for run in runs]


def _view(client: Any, run: Any) -> ScreeningView:
    tags, metrics = run.data.tags, run.data.metrics
    run_id = run.info.run_id
    report = _json_artifact(client, run_id, tracking.SCREENING_ARTIFACT)
    suspects = _json_artifact(client, run_id, tracking.SUSPECT_LABELS_ARTIFACT)
    if not isinstance(report, dict):
        report = {}
    suspects = suspects.get("suspects") if isinstance(suspects, dict) else None
    if not isinstance(suspects, list):
        suspects = report.get("suspects") or []
    plotted = _has_artifact(client, run_id, tracking.DRIFT_PLOT)
    return ScreeningView(
        run_id=run_id,
        manifest_version=tags.get(tracking.MANIFEST_VERSION_TAG),
        airflow_run_id=tags.get(tracking.AIRFLOW_RUN_ID_TAG),
        started=_iso(run.info.start_time),
        n_new=_int(metrics.get("n_new")),
        n_reference=_int(metrics.get("n_reference")),
        mmd_p=metrics.get(tracking.DRIFT_MMD_P_METRIC),
        hold_reason=report.get("hold_reason"),
        n_suspects=_int(metrics.get("n_suspects")),
        suspects=[_small(s) for s in suspects[:SUSPECTS_SHOWN] if isinstance(s, dict)],
        plot_artifact=tracking.DRIFT_PLOT if plotted else None,
    )


def _small(suspect: dict[str, Any]) -> dict[str, Any]:
    keys = ("sha256", "given", "predicted", "confidence", "split", "held")
    return {k: suspect.get(k) for k in keys}


def _json_artifact(client: Any, run_id: str, path: str) -> Any:
    """A run's JSON artifact, or None when it is missing or unreadable (a failed run)."""
    try:
        with tempfile.TemporaryDirectory(prefix="weather-screening-") as tmp:
            return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())
    except Exception:  # noqa: BLE001 - a run without the file just shows less
        return None


def _has_artifact(client: Any, run_id: str, path: str) -> bool:
    try:
        return path in {a.path for a in client.list_artifacts(run_id, path.rpartition("/")[0])}
    except Exception:  # noqa: BLE001 - unreadable artifacts: no plot to show
        return False


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _iso(millis: int | None) -> str:
    if not millis:
        return ""
    return dt.datetime.fromtimestamp(millis / 1000, tz=dt.UTC).isoformat(timespec="seconds")
