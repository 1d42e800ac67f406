"""One night of the ``weather_retrain`` DAG on a running Airflow, through its REST API.

The one runner of a local DAG night, used by the demo, the e2e tests and the benchmarks: it
triggers a run (``POST /api/v2/dags/weather_retrain/dagRuns`` with the params as ``conf``; the
scheduler runs the real tasks with its executor), follows the task states through the API and,
while ``train`` runs, its MLflow run's epochs (the run tagged with the Airflow run id), and
returns the night's summary: the ``report`` task's XCom, the task states and the champion
Asset events. Start Airflow with ``devtools.local_services.start_airflow_stack``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from devtools.airflow_api import AirflowApi, ApiError

DAG_ID = "weather_retrain"
TASK_ORDER = ("ingest", "anything_new", "screen", "train", "evaluate", "promote", "report")
_ENDED = ("success", "failed")


@dataclass(frozen=True)
class NightRun:
    """One night: the DAG run's final state, task states, the report and the Asset events."""

    state: str  # "success", "failed", or "rejected" (params refused on trigger: no run)
    run_id: str | None
    seconds: float
    tasks: dict[str, str | None] = field(default_factory=dict)  # in the DAG's order
    report: dict[str, Any] | None = None  # the report task's return value
    champion_events: list[dict[str, Any]] = field(default_factory=list)  # their extras
    error: str | None = None  # why a trigger was rejected

    @property
    def failed(self) -> bool:
        return self.state != "success"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class NightProgress:
    """A change seen while the night runs: a task's new state, or a finished training epoch."""

    seconds: float  # since the trigger
    task: str
    what: str  # "running", "success", ... or "epoch 3/15, val_accuracy 0.810"


@dataclass(frozen=True)
class Training:
    """Where ``train`` tracks its epochs: the MLflow server and experiment."""

    tracking_uri: str
    experiment: str


def run_night(
    api: AirflowApi,
    conf: dict[str, Any] | None = None,
    *,
    timeout: float,
    training: Training | None = None,
    on_progress: Callable[[NightProgress], None] | None = None,
    poll_seconds: float = 3.0,
) -> NightRun:
    """Trigger ``weather_retrain`` with ``conf`` and wait until the run ends.

    ``on_progress`` gets each task state change and, given ``training``, each finished epoch of
    ``train`` (from MLflow). A run still going after ``timeout`` seconds raises TimeoutError
    (stopping Airflow ends it).
    """
    started = time.monotonic()
    try:
        run_id = api.trigger(DAG_ID, conf or {})["dag_run_id"]
    except ApiError as exc:
        if exc.status != 400:
            raise
        return NightRun("rejected", None, 0.0, error=str(exc.detail))
    watch = _Watcher(api, run_id, training, on_progress or (lambda _: None), started)
    while (state := api.dag_run(DAG_ID, run_id)["state"]) not in _ENDED:
        watch.poll()
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"DAG run {run_id} still {state} after {timeout:.0f}s")
        time.sleep(poll_seconds)
    tasks = watch.poll()
    return NightRun(
        state=state,
        run_id=run_id,
        seconds=round(time.monotonic() - started, 1),
        tasks=tasks,
        report=api.xcom(DAG_ID, run_id, "report"),
        champion_events=[e.get("extra") or {} for e in api.asset_events(DAG_ID, run_id)],
    )


class _Watcher:
    """Reports the run's task state changes and train's new epochs, in order."""

    def __init__(
        self,
        api: AirflowApi,
        run_id: str,
        training: Training | None,
        report: Callable[[NightProgress], None],
        started: float,
    ) -> None:
        self.api, self.run_id, self.training = api, run_id, training
        self.report, self.started = report, started
        self.seen: dict[str, str | None] = {}
        self.epochs_seen = 0
        self.mlflow_run_id: str | None = None

    def poll(self) -> dict[str, str | None]:
        """Report what changed since the last poll; the task states, in the DAG's order."""
        tis = self.api.task_instances(DAG_ID, self.run_id)
        states = {t: tis[t]["state"] for t in sorted(tis, key=_task_rank)}
        for task, state in states.items():
            if task == "train" and state in ("running", *_ENDED) and self.training:
                self._epochs(self.training)  # before train's end, as they happened
            if state and self.seen.get(task) != state:
                self.seen[task] = state
                self._say(task, state)
        return states

    def _epochs(self, training: Training) -> None:
        from mlflow.tracking import MlflowClient

        from weather_tasks import tracking

        client = MlflowClient(tracking_uri=training.tracking_uri)
        if self.mlflow_run_id is None:
            experiment = client.get_experiment_by_name(training.experiment)
            runs = client.search_runs(
                experiment_ids=[experiment.experiment_id],
                filter_string=tracking.airflow_run_filter(self.run_id),
                order_by=["attributes.start_time DESC"], max_results=1,
            ) if experiment else []
            if not runs:
                return
            self.mlflow_run_id = runs[0].info.run_id
        run = client.get_run(self.mlflow_run_id)
        history = sorted(
            client.get_metric_history(self.mlflow_run_id, "val_accuracy"), key=lambda m: m.step
        )
        for point in history[self.epochs_seen:]:
            epochs = run.data.params.get("epochs", "?")
            self._say("train", f"epoch {point.step + 1}/{epochs}, val_accuracy {point.value:.3f}")
        self.epochs_seen = max(self.epochs_seen, len(history))

    def _say(self, task: str, what: str) -> None:
        self.report(NightProgress(round(time.monotonic() - self.started, 1), task, what))


def _task_rank(task_id: str) -> int:
    return TASK_ORDER.index(task_id) if task_id in TASK_ORDER else len(TASK_ORDER)
