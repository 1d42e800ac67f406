"""Training under faults at the model side, with real processes (issue 8).

- The training process killed (SIGKILL) mid-epoch: its MLflow run stays RUNNING (nothing in
  the process can end it); the next attempt of the same Airflow run marks it FAILED and trains
  cleanly, and touches neither other trainings' runs nor the champion.
- The MLflow server answering 503 to metric logging, through ``FailingHttpProxy`` in front of
  the real server (which requests fail is counted, not timed): the training goes on, and the
  refused epoch metrics are logged later, or the run says how many are missing.

Tiny trainings (forty synthetic scenes at 32 px, two or three epochs), as in test_train.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from devtools.local_services import Service
from devtools.netproxy import FailingHttpProxy
from devtools.scenes import generate_scenes
from tests.support import REPO
from weather_tasks import config, ingest, tracking, train
from weather_tasks.config import PipelineConfig

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.integration

METRIC_PATHS = ("/api/2.0/mlflow/runs/log-metric", "/api/2.0/mlflow/runs/log-batch")
EPOCH_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_train_seconds")
# A training's log-batch calls as the proxy numbers them, one request each when none fails:
# 0 and 1 the params, then one per epoch, then the two essential metric calls (the val
# evaluation's, the summary's), then the refused epoch metrics if any, then log_model's.
FIRST_EPOCH_CALL = 2
ATTEMPTS = 2  # mlflow_http_retries=1: MLflow's client sends each request at most twice
SERVER_ERRORS = "answered with server errors (2 attempts)"

KILLED_RUN = "manual__test-kill"
# The killed training: a process of its own, as an Airflow worker runs it.
TRAIN_IN_A_PROCESS = (
    "import sys\n"
    "from weather_tasks import config, tracking, train\n"
    "cfg = config.from_env()\n"
    "tracking.configure_process(cfg)\n"
    "train.train_model(cfg, 'v000001', airflow_run_id=sys.argv[1])\n"
)


@pytest.fixture(autouse=True)
def _mlflow_process(mlflow_server: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process tracks to the session's MLflow server, set as an entry point sets it."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(name, "")  # restored after the test
    tracking.configure_process(config.from_env(environ={}, mlflow_tracking_uri=mlflow_server.url))


@pytest.fixture
def train_cfg(
    cfg: PipelineConfig, mlflow_server: Service, s3: S3Client, tmp_path: Path
) -> PipelineConfig:
    """Ten synthetic scenes per class ingested as v000001; a tiny, fast training of them."""
    photos = tmp_path / "photos"
    generate_scenes(photos, per_class=10, size=48)
    ingest.upload_folder(cfg, s3, photos)
    assert ingest.ingest(cfg, s3).manifest_version == "v000001"
    tag = uuid.uuid4().hex[:8]
    return config.override(
        cfg,
        image_size=32,
        epochs=2,
        batch_size=8,
        precision="float32",
        mlflow_tracking_uri=mlflow_server.url,
        mlflow_http_retries=1,
        experiment_name=f"test-faults-{tag}",
        registered_model=f"test-faults-{tag}",
    )


@pytest.fixture
def proxy(mlflow_server: Service) -> Iterator[FailingHttpProxy]:
    p = FailingHttpProxy(mlflow_server.url)
    yield p
    p.close()


def _through(proxy: FailingHttpProxy, cfg: PipelineConfig, **changes: int) -> PipelineConfig:
    """``cfg`` tracking through the proxy, this process pointed at it."""
    proxied = config.override(cfg, mlflow_tracking_uri=proxy.url, **changes)
    tracking.configure_process(proxied)
    return proxied


def _steps(client: MlflowClient, run_id: str) -> dict[str, list[int]]:
    """The steps logged for each epoch metric."""
    return {k: sorted(m.step for m in client.get_metric_history(run_id, k)) for k in EPOCH_KEYS}


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What training warned about (one line each)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "weather_tasks.train" and r.levelno == logging.WARNING
    ]


# --- MLflow refusing metrics -----------------------------------------------------------------


def test_epoch_metrics_refused_during_fit_are_logged_with_the_next_epochs(
    train_cfg: PipelineConfig,
    proxy: FailingHttpProxy,
    s3: S3Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = _through(proxy, train_cfg, epochs=3)
    proxy.fail(METRIC_PATHS, range(FIRST_EPOCH_CALL, FIRST_EPOCH_CALL + ATTEMPTS))  # epoch 1's
    with caplog.at_level(logging.WARNING, logger="weather_tasks.train"):
        report = train.train_model(cfg, "v000001", s3=s3, airflow_run_id="manual__503-fit")

    assert proxy.failed == ATTEMPTS
    (warning,) = _warnings(caplog)
    assert warning.startswith(
        "epoch 1 metrics not logged (training goes on; 6 points kept to send with the next "
        f"epoch's): MLflow tracking server {proxy.url}: {SERVER_ERRORS}"
    )
    client = MlflowClient(train_cfg.mlflow_tracking_uri)
    run = client.get_run(report.run_id)
    assert run.info.status == "FINISHED"
    assert _steps(client, report.run_id) == {k: [0, 1, 2] for k in EPOCH_KEYS}
    assert tracking.METRICS_INCOMPLETE_TAG not in run.data.tags


def test_metrics_refused_past_the_end_of_fit_are_logged_before_the_model(
    train_cfg: PipelineConfig,
    proxy: FailingHttpProxy,
    s3: S3Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The last epoch's call fails, and so does the first request after fit (the essential
    val-evaluation metrics), whose retry goes through; the refused epoch is sent after the
    essential metrics, before the model is logged: the run is complete."""
    cfg = _through(proxy, train_cfg)
    last_epoch = FIRST_EPOCH_CALL + 1
    proxy.fail(METRIC_PATHS, range(last_epoch, last_epoch + ATTEMPTS + 1))
    with caplog.at_level(logging.WARNING, logger="weather_tasks.train"):
        report = train.train_model(cfg, "v000001", s3=s3, airflow_run_id="manual__503-end")

    assert proxy.failed == ATTEMPTS + 1
    (warning,) = _warnings(caplog)
    assert warning.startswith("epoch 2 metrics not logged")
    client = MlflowClient(train_cfg.mlflow_tracking_uri)
    run = client.get_run(report.run_id)
    assert run.info.status == "FINISHED"
    assert _steps(client, report.run_id) == {k: [0, 1] for k in EPOCH_KEYS}
    assert tracking.METRICS_INCOMPLETE_TAG not in run.data.tags
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(report.best_val_accuracy)
    saved = tracking.load_run_dict(client, report.run_id, tracking.TRAIN_REPORT_ARTIFACT)
    assert saved["run_id"] == report.run_id


def test_metrics_still_refused_at_the_end_are_counted_on_the_run(
    train_cfg: PipelineConfig,
    proxy: FailingHttpProxy,
    s3: S3Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The last epoch's call fails, and so does the last try to send it (after the essential
    metrics): the training completes, and the run says how many points it lacks."""
    cfg = _through(proxy, train_cfg)
    last_epoch = FIRST_EPOCH_CALL + 1
    last_try = last_epoch + ATTEMPTS + 2  # after the two essential metric calls
    proxy.fail(METRIC_PATHS, [last_epoch, last_epoch + 1, last_try, last_try + 1])
    with caplog.at_level(logging.WARNING, logger="weather_tasks.train"):
        report = train.train_model(cfg, "v000001", s3=s3, airflow_run_id="manual__503-lost")

    assert proxy.failed == 2 * ATTEMPTS
    first, last = _warnings(caplog)
    assert first.startswith("epoch 2 metrics not logged")
    assert last == (
        f"6 epoch metric points of run {report.run_id} are missing (tag "
        f"{tracking.METRICS_INCOMPLETE_TAG}): MLflow tracking server {proxy.url}: "
        f"{SERVER_ERRORS}: check the server's log; try again later or raise "
        "WEATHER_MLFLOW_HTTP_RETRIES"
    )
    client = MlflowClient(train_cfg.mlflow_tracking_uri)
    run = client.get_run(report.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.METRICS_INCOMPLETE_TAG] == "6"
    assert _steps(client, report.run_id) == {k: [0] for k in EPOCH_KEYS}
    saved = tracking.load_run_dict(client, report.run_id, tracking.TRAIN_REPORT_ARTIFACT)
    assert saved["run_id"] == report.run_id


# --- the training process killed -------------------------------------------------------------


def _open_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> str:
    """A RUNNING run of another training (a concurrent manual one, another night)."""
    return client.create_run(experiment_id, tags=tags).info.run_id


def _first_epoch_logged(
    client: MlflowClient, experiment_id: str, process: subprocess.Popen[bytes], log: Path
) -> Run:
    """The killed training's run, once it is RUNNING with its first epoch's metrics."""
    deadline = time.monotonic() + 600  # a guard against a hang, not a measure
    while time.monotonic() < deadline:
        assert process.poll() is None, f"training exited ({process.returncode}):\n{log.read_text()}"
        runs = client.search_runs(
            [experiment_id], filter_string=tracking.airflow_run_filter(KILLED_RUN)
        )
        if runs and runs[0].info.status == "RUNNING" and "loss" in runs[0].data.metrics:
            return runs[0]
        time.sleep(0.5)
    pytest.fail(f"no epoch logged by the training to kill:\n{log.read_text()[-3000:]}")


def test_a_training_killed_mid_epoch_is_failed_by_the_next_attempt(
    train_cfg: PipelineConfig,
    s3: S3Client,
    tmp_path: Path,
) -> None:
    cfg = train_cfg
    client = MlflowClient(cfg.mlflow_tracking_uri)
    experiment_id = client.create_experiment(cfg.experiment_name)
    others = [
        _open_run(client, experiment_id, {tracking.AIRFLOW_RUN_ID_TAG: "manual__another-night"}),
        _open_run(client, experiment_id, {}),  # a CLI training: no Airflow run id
    ]
    client.create_registered_model(cfg.registered_model)
    champion = client.create_model_version(
        cfg.registered_model, source="s3://mlflow-artifacts/champion-stand-in"
    ).version
    tracking.move_champion(client, cfg.registered_model, str(champion), None)

    # Many epochs, so that it is still training when it is killed after its first one.
    settings = {"epochs": 1000} | {
        k: getattr(cfg, k)
        for k in (
            "bucket",
            "s3_endpoint_url",
            "mlflow_tracking_uri",
            "experiment_name",
            "work_dir",
            "image_size",
            "batch_size",
            "precision",
        )
    }
    env = os.environ | {config.env_name(k): str(v) for k, v in settings.items()}
    log = tmp_path / "killed-training.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", TRAIN_IN_A_PROCESS, KILLED_RUN],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        killed = _first_epoch_logged(client, experiment_id, process, log)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert client.get_run(killed.info.run_id).info.status == "RUNNING"  # nobody ended it

    report = train.train_model(cfg, "v000001", s3=s3, airflow_run_id=KILLED_RUN)

    old = client.get_run(killed.info.run_id)
    assert old.info.status == "FAILED"
    assert old.data.tags[tracking.TERMINATED_BY_TAG] == train.ENDED_BY_RETRY
    assert report.run_id != killed.info.run_id
    assert client.get_run(report.run_id).info.status == "FINISHED"
    assert report.epochs_run == 2 and report.model_uri == tracking.run_model_uri(report.run_id)
    saved = tracking.load_run_dict(client, report.run_id, tracking.TRAIN_REPORT_ARTIFACT)
    assert saved["run_id"] == report.run_id
    for run_id in others:  # other trainings' runs are theirs to end
        other = client.get_run(run_id)
        assert other.info.status == "RUNNING"
        assert tracking.TERMINATED_BY_TAG not in other.data.tags
    assert tracking.alias_version(client, cfg.registered_model, tracking.CHAMPION) == str(champion)
