"""Whole nights of the real ``weather_retrain`` DAG through Airflow's ``dag.test()``.

Real services: the S3 server and the MLflow server of tests/conftest.py, Airflow on SQLite in
a temporary home (migrated once for the module), the S3 connection as an ``aws`` connection.
Each night runs ``python -m devtools.night CONF`` (``dag.test()``) in a child process, so this
process never configures Airflow. Tiny settings (32 px, 1 epoch, a few dozen real photos) keep a
night at about two minutes on 2 CPU cores.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools import local_services
from devtools.night import NightRun, run_night
from tests.support import mwd_images
from weather_tasks import config, ingest, storage

pytestmark = pytest.mark.e2e

TINY = {"epochs": 1, "image_size": 32, "batch_size": 8}
SECRET = local_services.LOCAL_S3_ENV["AWS_SECRET_ACCESS_KEY"]


@pytest.fixture(scope="module")
def airflow(
    s3_server: local_services.Service,
    mlflow_server: local_services.Service,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """A migrated Airflow home (SQLite) and the environment that points it at the services."""
    root = tmp_path_factory.mktemp("airflow-e2e")
    env = local_services.airflow_env(
        root / "home", s3_endpoint_url=s3_server.url, mlflow_tracking_uri=mlflow_server.url
    )
    env.update(
        # Tiny models cannot meet the production floor; the decision rule is unit-tested.
        WEATHER_ACCURACY_FLOOR="0",
        WEATHER_MAX_CLASS_RECALL_DROP="1",
        WEATHER_WORK_DIR=str(root / "work"),
        # S3 settings come only from the Airflow connection in these runs.
        WEATHER_S3_ENDPOINT_URL="",
    )
    local_services.run_airflow(env, "db", "migrate", log_dir=root / "logs", timeout=600)
    yield {"env": env, "root": root, "s3_url": s3_server.url, "mlflow_url": mlflow_server.url}


def _bucket(airflow: dict[str, Any]) -> tuple[config.PipelineConfig, Any]:
    # Own bucket and registered model: other tests share the S3 and MLflow servers.
    cfg = config.from_env(
        environ={},
        bucket=f"e2e-{uuid.uuid4().hex[:10]}",
        s3_endpoint_url=airflow["s3_url"],
        registered_model=f"weather-classifier-{uuid.uuid4().hex[:6]}",
    )
    s3 = storage.make_client(cfg)
    local_services.ensure_bucket(s3, cfg.bucket)
    return cfg, s3


def _upload(cfg: config.PipelineConfig, s3: Any, folder: Path, per_class: int, skip: int) -> int:
    """Upload ``per_class`` real photos of each class (after the first ``skip``)."""
    images = mwd_images()
    folder.mkdir(parents=True)
    for cls in cfg.classes:
        for path in sorted(images.glob(f"{cls}*"))[skip : skip + per_class]:
            shutil.copy(path, folder / path.name)
    return int(ingest.upload_folder(cfg, s3, folder)["uploaded"])


def _night(
    airflow: dict[str, Any], cfg: config.PipelineConfig, conf: dict[str, Any]
) -> NightRun:
    env = {
        **airflow["env"],
        "WEATHER_BUCKET": cfg.bucket,
        "WEATHER_REGISTERED_MODEL": cfg.registered_model,
    }
    log = airflow["root"] / "logs" / f"night-{uuid.uuid4().hex[:8]}.log"
    run = run_night(env, conf, log_path=log, cwd=airflow["root"], timeout=900)
    assert SECRET not in run.output, "the S3 secret key appeared in the logs"
    return run


def _manifests(cfg: config.PipelineConfig, s3: Any) -> list[str]:
    listed = s3.list_objects_v2(Bucket=cfg.bucket, Prefix=cfg.manifests_prefix)
    return sorted(o["Key"].rsplit("/", 1)[-1] for o in listed.get("Contents", []))


def test_three_nights(airflow: dict[str, Any], tmp_path: Path) -> None:
    """First night promotes; nothing new short-circuits; new images face the champion."""
    from mlflow.tracking import MlflowClient

    cfg, s3 = _bucket(airflow)
    registry = MlflowClient(tracking_uri=airflow["mlflow_url"])
    assert _upload(cfg, s3, tmp_path / "night1", per_class=10, skip=0) == 40

    # Night 1: everything is new, no champion yet -> version 1 becomes champion.
    first = _night(airflow, cfg, TINY)
    assert first.returncode == 0, first.output[-5000:]
    assert set(first.summary["tasks"].values()) == {"success"}
    report = first.summary["report"]
    assert report["outcome"] == "promoted"
    assert report["ingest"]["accepted"] == 40 and report["ingest"]["manifest_version"] == "v000001"
    assert report["train"]["image_size"] == 32 and report["train"]["epochs_run"] == 1
    assert report["promotion"]["version"] == "1"
    (event,) = first.summary["champion_events"]
    assert event["version"] == "1" and event["manifest_version"] == "v000001"
    name = cfg.registered_model
    assert event["model_uri"] == f"models:/{name}/1"
    assert report["promotion"]["registered_model"] == name
    assert registry.get_model_version_by_alias(name, "champion").version == "1"

    # Night 2: nothing new -> training, evaluation and promotion are skipped, report still runs.
    second = _night(airflow, cfg, TINY)
    assert second.returncode == 0, second.output[-5000:]
    tasks = second.summary["tasks"]
    assert {tasks[t] for t in ("train", "evaluate", "promote")} == {"skipped"}
    assert tasks["ingest"] == tasks["report"] == "success"
    assert second.summary["report"]["outcome"] == "nothing new"
    assert second.summary["champion_events"] == []
    assert _manifests(cfg, s3) == ["v000001.json"]

    # Night 3: new photos -> a new manifest; the challenger is compared with champion v1.
    assert _upload(cfg, s3, tmp_path / "night3", per_class=3, skip=10) == 12
    third = _night(airflow, cfg, {**TINY, "min_delta": -1.0})
    assert third.returncode == 0, third.output[-5000:]
    report = third.summary["report"]
    assert report["ingest"]["accepted"] == 12
    assert report["ingest"]["manifest_version"] == "v000002"
    assert report["evaluation"]["champion_version"] == "1"
    assert report["evaluation"]["champion"] is not None
    assert report["evaluation"]["manifest_version"] == "v000002"
    # min_delta -1 makes any challenger win: the event must carry the new version.
    assert report["outcome"] == "promoted" and report["promotion"]["version"] == "2"
    (event,) = third.summary["champion_events"]
    assert event["version"] == "2" and event["manifest_version"] == "v000002"
    assert registry.get_model_version_by_alias(name, "champion").version == "2"
    assert registry.get_model_version_by_alias(name, "previous").version == "1"


def test_bad_params_are_rejected_before_any_task(airflow: dict[str, Any], tmp_path: Path) -> None:
    cfg, s3 = _bucket(airflow)
    _upload(cfg, s3, tmp_path / "imgs", per_class=2, skip=0)
    run = _night(airflow, cfg, {**TINY, "epochs": 0})
    assert run.returncode == 2
    assert run.summary["state"] == "rejected"
    assert "param epochs" in run.summary["error"]
    assert "[DAG TEST] starting task_id" not in run.output
    assert s3.list_objects_v2(Bucket=cfg.bucket, Prefix=cfg.curated_prefix).get("KeyCount") == 0


def test_missing_bucket_fails_ingest_clearly(airflow: dict[str, Any]) -> None:
    cfg, s3 = _bucket(airflow)
    missing = config.override(cfg, bucket=f"missing-{uuid.uuid4().hex[:8]}")
    run = _night(airflow, missing, TINY)
    assert run.returncode == 1
    assert run.summary["state"] == "failed"
    tasks = run.summary["tasks"]
    assert tasks["ingest"] == "failed"
    assert tasks["train"] == tasks["report"] == "upstream_failed"
    assert f"bucket {missing.bucket!r} does not exist" in run.output
    # A permanent error is not retried (AirflowFailException), and nothing was created.
    assert run.output.count("[DAG TEST] starting task_id=ingest") == 1
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert missing.bucket not in names
