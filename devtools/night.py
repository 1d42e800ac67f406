"""One night of the ``weather_retrain`` DAG through Airflow's ``dag.test()``, in a child process.

The one runner of a local DAG night, used by the demo, the e2e tests and the benchmarks.

Child (``python -m devtools.night [CONF_JSON]``): loads the DAG ``weather_retrain`` by path from
the DAGs folder (``AIRFLOW__CORE__DAGS_FOLDER``, else the repo's ``dags/``), runs
``dag.test(run_conf=CONF)`` (the real tasks, in order, in that process) and prints one line
``WEATHER_NIGHT {json}``: the run's state, task states, the ``report`` task's return value and
the champion Asset events. Exit 0 on success, 1 on a failed run, 2 on rejected params.

Parent (:func:`run_night`): starts the child with an Airflow environment (see
``local_services.airflow_env``), writes everything it prints to a log file, optionally reports
task states and Keras epochs while it runs, and reads the ``WEATHER_NIGHT`` line
(:func:`parse_night`, the one place that does).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DAG_ID = "weather_retrain"
MARKER = "WEATHER_NIGHT "
TASK_ORDER = ("ingest", "anything_new", "train", "evaluate", "promote", "report")
EXIT_SUCCESS, EXIT_FAILED, EXIT_REJECTED = 0, 1, 2


@dataclass(frozen=True)
class NightRun:
    """One night's child process: its exit status, its ``WEATHER_NIGHT`` summary, its output."""

    returncode: int
    summary: dict[str, Any]  # state, run_id, seconds, tasks, report, champion_events (or error)
    output: str  # everything the child printed (Airflow and task logs), also in ``log_path``
    log_path: Path

    @property
    def crashed(self) -> bool:
        """The child died before printing a result (its output says why)."""
        return self.summary.get("state") == "crashed"

    def as_dict(self) -> dict[str, Any]:
        return {"returncode": self.returncode, **self.summary}


@dataclass(frozen=True)
class NightProgress:
    """A change seen while the night runs: a task's new state, or train's last finished epoch."""

    seconds: float  # since the child started
    task: str
    what: str  # "running", "success", ... or "epoch 3/15, val_accuracy 0.810"


# --- parent side ---------------------------------------------------------------------------------


def run_night(
    env: dict[str, str],
    conf: dict[str, Any] | None = None,
    *,
    log_path: Path,
    cwd: Path | None = None,
    timeout: float | None = None,
    on_progress: Callable[[NightProgress], None] | None = None,
    poll_seconds: float = 2.0,
) -> NightRun:
    """``python -m devtools.night CONF`` under ``os.environ`` + ``env``; output to ``log_path``.

    ``on_progress`` is called for each task state change (read from Airflow's SQLite database,
    when ``env`` points Airflow at one) and each finished Keras epoch of ``train``. On
    ``timeout`` (seconds) the child is killed and ``subprocess.TimeoutExpired`` raised.
    """
    watch = _Watcher(_sqlite_path(env), log_path, on_progress) if on_progress else None
    started = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devtools.night", json.dumps(conf or {})],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
            cwd=cwd or REPO,
        )
        try:
            if watch is None:
                proc.wait(timeout=timeout)
            while watch is not None and proc.poll() is None:
                if timeout is not None and time.monotonic() - started > timeout:
                    raise subprocess.TimeoutExpired(proc.args, timeout)
                time.sleep(poll_seconds)
                watch.poll(time.monotonic() - started)
        finally:
            if proc.poll() is None:  # timed out or interrupted: leave no night running
                proc.kill()
                proc.wait()
    if watch is not None:
        watch.poll(time.monotonic() - started, final=True)
    output = log_path.read_text(errors="replace")
    summary = parse_night(output)
    return NightRun(
        returncode=proc.returncode,
        summary=summary if summary is not None else {"state": "crashed"},
        output=output,
        log_path=log_path,
    )


def parse_night(output: str) -> dict[str, Any] | None:
    """The last ``WEATHER_NIGHT {json}`` line of a child's output, or None if it printed none."""
    lines = [ln for ln in output.splitlines() if ln.startswith(MARKER)]
    return json.loads(lines[-1][len(MARKER):]) if lines else None


class _Watcher:
    """Reports task state changes (Airflow's SQLite database) and train's finished epochs (the
    log) of the run that starts after it was made."""

    def __init__(
        self, db: Path | None, log_path: Path, on_progress: Callable[[NightProgress], None]
    ) -> None:
        self.db, self.log_path, self.on_progress = db, log_path, on_progress
        self.before = _latest_run_id(db) if db else 0
        self.seen: dict[str, str] = {}
        self.epoch_seen = ""

    def poll(self, seconds: float, final: bool = False) -> None:
        states = _task_states(self.db, self.before) if self.db else {}
        for task, state in states.items():
            if state and self.seen.get(task) != state:
                if not final:
                    self.seen[task] = state
                self.on_progress(NightProgress(seconds, task, state))
        if final:
            return
        epoch = _last_epoch(self.log_path)
        if epoch and epoch != self.epoch_seen and self.seen.get("train") == "running":
            self.epoch_seen = epoch
            self.on_progress(NightProgress(seconds, "train", epoch))


def _sqlite_path(env: dict[str, str]) -> Path | None:
    """Airflow's SQLite database file from ``env``; None for another database."""
    url = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def _db_query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute(sql, params).fetchall()
    except sqlite3.Error:  # locked by the writer or not migrated yet: try on the next poll
        return []


def _latest_run_id(db: Path) -> int:
    rows = _db_query(db, "SELECT max(id) FROM dag_run WHERE dag_id = ?", (DAG_ID,))
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def _task_states(db: Path, after_id: int) -> dict[str, str | None]:
    """Task states of the newest run of the DAG, if it is newer than ``after_id``, in order."""
    rows = _db_query(
        db,
        "SELECT ti.task_id, ti.state FROM task_instance ti JOIN dag_run dr "
        "ON ti.dag_id = dr.dag_id AND ti.run_id = dr.run_id "
        "WHERE dr.dag_id = ? AND dr.id = (SELECT max(id) FROM dag_run WHERE dag_id = ?) "
        "AND dr.id > ?",
        (DAG_ID, DAG_ID, after_id),
    )
    return dict(sorted(rows, key=lambda r: _task_rank(r[0])))


def _task_rank(task_id: str) -> int:
    return TASK_ORDER.index(task_id) if task_id in TASK_ORDER else 99


_EPOCH = re.compile(r"Epoch (\d+)/(\d+)")
_VAL = re.compile(r"val_accuracy: ([0-9.]+)")


def _last_epoch(log_path: Path) -> str:
    """The last finished Keras epoch in the log ("epoch 3/15, val_accuracy 0.810")."""
    try:
        with log_path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 20_000))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    epochs = list(_EPOCH.finditer(tail))
    if not epochs:
        return ""
    last = epochs[-1]
    val = _VAL.search(tail, last.end())
    if val is None:  # still inside that epoch: report the previous one, if any
        if len(epochs) < 2:
            return ""
        last = epochs[-2]
        val = _VAL.search(tail, last.end())
    if val is None:
        return ""
    return f"epoch {last.group(1)}/{last.group(2)}, val_accuracy {float(val.group(1)):.3f}"


# --- child side ----------------------------------------------------------------------------------


def dags_folder() -> Path:
    """Where the DAG files are: ``AIRFLOW__CORE__DAGS_FOLDER``, else the repo's ``dags/``."""
    return Path(os.environ.get("AIRFLOW__CORE__DAGS_FOLDER") or REPO / "dags")


def load_dag_module(folder: Path) -> Any:
    """Import ``<folder>/weather_retrain.py`` by path, its folder on sys.path as Airflow puts it
    (the DAG files import their neighbours)."""
    import importlib.util

    path = folder / f"{DAG_ID}.py"
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(DAG_ID, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def find_dag(module: Any) -> Any:
    """The DAG object ``weather_retrain`` defined at the module's top level."""
    from airflow.sdk import DAG

    for value in vars(module).values():
        if isinstance(value, DAG) and value.dag_id == DAG_ID:
            return value
    raise SystemExit(f"no DAG {DAG_ID!r} in {module.__file__}")


def describe_run(dag_run: Any, seconds: float, champion_asset: str) -> dict[str, Any]:
    """Final state, task states, the report and the champion Asset events of one run."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        states = {
            ti.task_id: str(ti.state) if ti.state else None
            for ti in dag_run.get_task_instances(session=session)
        }
        row = session.scalars(
            XComModel.get_many(
                run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids="report",
                key="return_value",
            )
        ).first()
        events = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name == champion_asset, AssetEvent.source_run_id == dag_run.run_id)
        ).all()
        return {
            "run_id": dag_run.run_id,
            "state": str(dag_run.state),
            "seconds": round(seconds, 3),
            "tasks": states,
            "report": XComModel.deserialize_value(row) if row is not None else None,
            "champion_events": [dict(e.extra or {}) for e in events],
        }


def _emit(summary: dict[str, Any]) -> None:
    print(MARKER + json.dumps(summary, default=str), flush=True)


def main(argv: list[str]) -> int:
    """The child: one night through ``dag.test()``; prints the ``WEATHER_NIGHT`` line."""
    from airflow.sdk.exceptions import ParamValidationError

    run_conf = json.loads(argv[0]) if argv else {}
    module = load_dag_module(dags_folder())
    dag = find_dag(module)
    started = time.monotonic()
    try:
        run = dag.test(run_conf=run_conf)
    except ParamValidationError as exc:
        _emit({"state": "rejected", "error": str(exc)})
        return EXIT_REJECTED
    summary = describe_run(run, time.monotonic() - started, module.CHAMPION.name)
    _emit(summary)
    return EXIT_SUCCESS if summary["state"] == "success" else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
