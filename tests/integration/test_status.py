"""``weather status``: night summaries in the bucket, champion and previous from MLflow, and the
``--check`` a cron job or a monitoring system runs (bucket only: no scheduler, no MLflow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from devtools import local_services
from tests.support import DAGS, REPO
from tests.support.dags import load_dag_file
from weather_tasks import cli, config, status, tracking
from weather_tasks.config import PipelineConfig

pytestmark = pytest.mark.integration


@pytest.fixture
def status_cfg(cfg: PipelineConfig, mlflow_server: local_services.Service) -> PipelineConfig:
    """The test's bucket and the session's MLflow server, with a registered model of its own."""
    return config.override(cfg, mlflow_tracking_uri=mlflow_server.url,
                           registered_model=f"wc-status-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def cli_env(status_cfg: PipelineConfig, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The CLI's environment for this config (set in this process, returned for subprocesses)."""
    env = {
        "WEATHER_BUCKET": status_cfg.bucket,
        "WEATHER_S3_ENDPOINT_URL": str(status_cfg.s3_endpoint_url),
        "WEATHER_MLFLOW_TRACKING_URI": status_cfg.mlflow_tracking_uri,
        "WEATHER_REGISTERED_MODEL": status_cfg.registered_model,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("WEATHER_STATUS_MAX_AGE_HOURS", raising=False)
    return env


def _write(cfg: PipelineConfig, s3: Any, run_id: str, hours_ago: float,
           outcome: str = status.NOTHING_NEW, **extra: Any) -> dict[str, Any]:
    """A night summary as the report task records it, ended ``hours_ago``."""
    summary = status.night_summary(
        airflow_run_id=run_id, logical_date=None, started_at=None, trained=None,
        evaluation=None, promoted=None, forced=False,
        ingested={"listed": 5, "new": 2, "accepted": 1, "duplicate": 0,
                  "quarantined": {"not_an_image": 1}, "quarantined_total": 1,
                  "manifest_version": "v000003", "images_total": 41},
    )
    ended = datetime.now(UTC) - timedelta(hours=hours_ago)
    summary |= {"ended_at": ended.isoformat(timespec="seconds"), "outcome": outcome, **extra}
    status.write_night(cfg, s3, summary)
    return summary


def _register(cfg: PipelineConfig, accuracy: float, manifest: str) -> str:
    """A model version with the tags a promotion writes (no model files needed to read it)."""
    import mlflow

    client = tracking.client(cfg)
    experiment = client.get_experiment_by_name("test-status")
    experiment_id = (experiment.experiment_id if experiment
                     else client.create_experiment("test-status"))
    run = client.create_run(experiment_id)
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(cfg.registered_model)
    except mlflow.exceptions.MlflowException:
        pass  # registered by an earlier call
    mv = client.create_model_version(
        cfg.registered_model, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id,
        tags={tracking.VERSION_ACCURACY_TAG: f"{accuracy:.6f}",
              tracking.VERSION_MANIFEST_VERSION_TAG: manifest,
              tracking.VERSION_RUN_ID_TAG: run.info.run_id,
              tracking.VERSION_PROMOTED_AT_TAG: "2026-03-01T02:40:00+00:00"},
    )
    return str(mv.version)


def test_status_before_any_night_or_champion(
    status_cfg: PipelineConfig, s3: Any, cli_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = status.status(status_cfg, s3)
    assert (report.champion, report.previous, report.check.state) == (None, None, "none")
    assert cli.main(["status"]) == 0  # a report, not a check
    out = capsys.readouterr().out
    assert f"{status_cfg.registered_model}@champion: none" in out
    assert f"check: none: no night summary under s3://{status_cfg.bucket}/nights/" in out
    assert cli.main(["status", "--check"]) == 1
    assert capsys.readouterr().out.startswith("none: no night summary")


def test_status_shows_champion_previous_and_the_newest_night(
    status_cfg: PipelineConfig, s3: Any, cli_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = _register(status_cfg, 0.81, "v000002")
    second = _register(status_cfg, 0.84, "v000003")
    client = tracking.client(status_cfg)
    tracking.move_champion(client, status_cfg.registered_model, first, None)
    tracking.move_champion(client, status_cfg.registered_model, second, first)
    _write(status_cfg, s3, "scheduled__2026-03-01T02:00:00+00:00", hours_ago=30)
    _write(status_cfg, s3, "scheduled__2026-03-02T02:00:00+00:00", hours_ago=2,
           outcome=status.PROMOTED, champion_version=second,
           evaluation={"promote": True, "reasons": ["accuracy 0.84 >= 0.81 + 0.0"]},
           promotion={"status": "promoted", "reason": "accuracy 0.84 >= 0.81 + 0.0"},
           screening={"n_new": 2, "mmd_p": 0.4132, "n_suspects": 1, "held": 0,
                      "hold_reason": None})

    report = status.status(status_cfg, s3)
    assert report.champion and report.previous
    assert (report.champion.version, report.champion.accuracy) == (second, 0.84)
    assert (report.previous.version, report.previous.manifest_version) == (first, "v000002")
    assert report.check.state == "ok" and report.check.night
    assert report.check.night.summary["airflow_run_id"] == "scheduled__2026-03-02T02:00:00+00:00"

    capsys.readouterr()  # MLflow's "View run" lines of _register
    assert cli.main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    name = status_cfg.registered_model
    assert lines[0].startswith(f"{name}@champion: v{second}  accuracy 0.8400  manifest v000003"
                               "  promoted 2026-03-01T02:40:00+00:00  run ")
    assert lines[1].startswith(f"{name}@previous: v{first}  accuracy 0.8100")
    assert lines[2].startswith("last night: scheduled__2026-03-02T02:00:00+00:00 (promoted) "
                               "ended ")
    assert lines[3] == ("  ingest: 2 new, 1 accepted, 0 duplicate, quarantined not_an_image=1; "
                        "manifest v000003 (41 images)")
    assert lines[4] == ("  screening: 2 new photos, drift MMD p 0.413, 1 suspect labels "
                        "(0 held for review)")
    assert lines[5] == "  evaluation: promote: accuracy 0.84 >= 0.81 + 0.0"
    assert lines[-1].startswith("check: ok: night scheduled__2026-03-02T02:00:00+00:00")

    assert cli.main(["status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["champion"]["version"] == second and data["previous"]["version"] == first
    assert data["night"]["ingest"]["quarantined"] == {"not_an_image": 1}


@pytest.mark.parametrize(
    ("hours_ago", "outcome", "max_age", "rc", "state"),
    [
        (1, status.NOTHING_NEW, None, 0, "ok"),
        (30, status.PROMOTED, None, 1, "stale"),  # default limit: 26 h
        (30, status.PROMOTED, "48", 0, "ok"),
        (3, status.NOT_PROMOTED, "2", 1, "stale"),
        (1, status.FAILED, None, 1, "failed"),
    ],
)
def test_check_needs_neither_scheduler_nor_mlflow(
    status_cfg: PipelineConfig, s3: Any, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    hours_ago: float, outcome: str, max_age: str | None, rc: int, state: str,
) -> None:
    _write(status_cfg, s3, "scheduled__2026-03-02T02:00:00+00:00", hours_ago, outcome)
    # Nothing listens there: the check must not ask MLflow.
    monkeypatch.setenv("WEATHER_MLFLOW_TRACKING_URI",
                       f"http://127.0.0.1:{local_services.free_port()}")
    if max_age:
        monkeypatch.setenv("WEATHER_STATUS_MAX_AGE_HOURS", max_age)
    assert cli.main(["status", "--check"]) == rc
    out, err = capsys.readouterr()
    assert err == ""
    assert len(out.splitlines()) == 1 and out.startswith(f"{state}: ")
    assert "scheduled__2026-03-02T02:00:00+00:00" in out


def test_a_damaged_summary_is_one_line(
    status_cfg: PipelineConfig, s3: Any, cli_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = status.night_key(status_cfg, "manual__broken")
    s3.put_object(Bucket=status_cfg.bucket, Key=key, Body=b"{not json")
    assert cli.main(["status", "--check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"weather status: error: s3://{status_cfg.bucket}/{key} is not a "
                          "night summary: ")
    assert len(err.splitlines()) == 1


def test_quiet_by_default_and_v_for_detail(
    status_cfg: PipelineConfig, s3: Any, cli_env: dict[str, str]
) -> None:
    """botocore's "Found credentials" (INFO) is not shown unless asked for."""
    _write(status_cfg, s3, "scheduled__2026-03-02T02:00:00+00:00", hours_ago=1)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "weather_tasks.cli", *args, "status", "--check"],
            env={**os.environ, **cli_env}, capture_output=True, text=True, timeout=300,
            cwd=REPO,
        )

    quiet, verbose = run(), run("-v")
    assert quiet.returncode == verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert quiet.stderr == ""
    assert quiet.stdout.startswith("ok: ") and len(quiet.stdout.splitlines()) == 1
    assert "Found credentials" in verbose.stderr
    assert verbose.stdout == quiet.stdout


def test_the_report_task_records_the_night_for_weather_status(
    status_cfg: PipelineConfig, s3: Any, cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """The DAG's report task writes what it returns; `weather status` reads it back."""
    champion = _register(status_cfg, 0.9, "v000001")
    tracking.move_champion(tracking.client(status_cfg), status_cfg.registered_model, champion,
                           None)
    conn = {"conn_type": "aws", **{k: local_services.LOCAL_S3_ENV[v] for k, v in
                                   (("login", "AWS_ACCESS_KEY_ID"),
                                    ("password", "AWS_SECRET_ACCESS_KEY"))},
            "extra": {"endpoint_url": status_cfg.s3_endpoint_url, "region_name": "us-east-1"}}
    monkeypatch.setenv("AIRFLOW_CONN_WEATHER_S3", json.dumps(conn))
    dag_file = load_dag_file(DAGS / "weather_retrain.py", monkeypatch)
    report_task = dag_file.weather_retrain_dag.get_task("report")

    # A night that failed first: the DAG's failure callback records it, --check says so.
    failed_run = "manual__2026-03-01T20:00:00+00:00"
    dag_file.weather_retrain_dag.on_failure_callback({
        "run_id": failed_run, "params": {}, "ti": SimpleNamespace(task_id="train"),
        "reason": "task_failure",
    })
    capsys.readouterr()
    assert cli.main(["status", "--check"]) == 1
    assert capsys.readouterr().out.startswith(f"failed: night {failed_run} failed")

    ingested = {"listed": 4, "new": 0, "accepted": 0, "duplicate": 0, "quarantined": {},
                "quarantined_total": 0, "requarantined": 0, "manifest_version": "v000001",
                "images_total": 40}

    class TaskInstance:  # what report pulls: only ingest ran (a nothing-new night)
        def xcom_pull(self, task_ids: str, key: str, default: Any = None) -> Any:
            return {"ingest": ingested}.get(task_ids, default)

    started = datetime(2026, 3, 2, 2, 0, 5, tzinfo=UTC)
    run = SimpleNamespace(run_id="scheduled__2026-03-02T02:00:00+00:00",
                          logical_date=datetime(2026, 3, 2, 2, tzinfo=UTC), start_date=started)
    returned = report_task.python_callable(ti=TaskInstance(), dag_run=run, params={})
    capsys.readouterr()

    assert returned["outcome"] == status.NOTHING_NEW
    assert returned["champion_version"] == champion
    assert returned["started_at"] == "2026-03-02T02:00:05+00:00"
    stored = s3.get_object(Bucket=status_cfg.bucket,
                           Key="nights/scheduled__2026-03-02T02_00_00_00_00.json")
    assert json.loads(stored["Body"].read()) == returned
    assert cli.main(["status", "--check"]) == 0
    assert capsys.readouterr().out.startswith(
        "ok: night scheduled__2026-03-02T02:00:00+00:00 (nothing new) ended "
    )
