"""Whole nights of the real ``weather_retrain`` DAG on a real local Airflow.

Real services: the S3 server and the MLflow server of tests/conftest.py, and Airflow's own
components (scheduler, dag-processor, triggerer, API server; SQLite, LocalExecutor) started by
``local_services.start_airflow_stack`` once for the module, as the demo starts them. Each night
is triggered and followed through the REST API (``devtools.night``); what the UI shows (task
logs included) is read back through that API. Tiny settings (32 px, 1 epoch, a few dozen real
photos) keep a night at a minute or two on 2 CPU cores.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from devtools import local_services
from devtools.airflow_api import AirflowApi, ApiError
from devtools.night import DAG_ID, TASK_ORDER, NightProgress, NightRun, Training, run_night
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
    """A running Airflow whose tasks use a bucket (not created yet) and a registered model of
    their own; yields the stack, its config, the S3 client and its start-up messages."""
    root = tmp_path_factory.mktemp("airflow-e2e")
    # Own bucket and registered model: other tests share the S3 and MLflow servers.
    cfg = config.from_env(
        environ={},
        bucket=f"e2e-{uuid.uuid4().hex[:10]}",
        s3_endpoint_url=s3_server.url,
        registered_model=f"weather-classifier-{uuid.uuid4().hex[:6]}",
    )
    env = local_services.airflow_env(
        root / "home", s3_endpoint_url=s3_server.url, mlflow_tracking_uri=mlflow_server.url
    )
    env.update(
        WEATHER_BUCKET=cfg.bucket,
        WEATHER_REGISTERED_MODEL=cfg.registered_model,
        # Manual runs only: an unpaused nightly DAG would also start a scheduled run.
        WEATHER_SCHEDULE="none",
        # Tiny models cannot meet the production floor; the decision rule is unit-tested.
        WEATHER_ACCURACY_FLOOR="0",
        WEATHER_MAX_CLASS_RECALL_DROP="1",
        WEATHER_WORK_DIR=str(root / "work"),
        # S3 settings come only from the Airflow connection in these runs.
        WEATHER_S3_ENDPOINT_URL="",
    )
    said: list[str] = []
    stack = local_services.start_airflow_stack(env, root / "logs", say=said.append)
    try:
        stack.api.wait_for_dag(DAG_ID, stack.started, timeout=300)
        stack.api.set_paused(DAG_ID, False)
        yield {"stack": stack, "cfg": cfg, "s3": storage.make_client(cfg), "said": said,
               "mlflow_url": mlflow_server.url}
    finally:
        stack.stop()


def _upload(cfg: config.PipelineConfig, s3: Any, folder: Path, per_class: int, skip: int) -> int:
    """Upload ``per_class`` real photos of each class (after the first ``skip``)."""
    images = mwd_images()
    folder.mkdir(parents=True)
    for cls in cfg.classes:
        for path in sorted(images.glob(f"{cls}*"))[skip : skip + per_class]:
            shutil.copy(path, folder / path.name)
    return int(ingest.upload_folder(cfg, s3, folder)["uploaded"])


def _night(airflow: dict[str, Any], conf: dict[str, Any]) -> tuple[NightRun, list[str]]:
    """One night, what it reported while running, and no S3 secret in any task's log."""
    api: AirflowApi = airflow["stack"].api
    seen: list[NightProgress] = []
    training = Training(airflow["mlflow_url"], airflow["cfg"].experiment_name)
    run = run_night(api, conf, timeout=900, training=training, on_progress=seen.append)
    for task, state in run.tasks.items():
        if state in ("success", "failed"):
            assert SECRET not in _log(api, run, task), f"the S3 secret key is in {task}'s log"
    return run, [f"{p.task} {p.what}" for p in seen]


def _log(api: AirflowApi, run: NightRun, task: str) -> str:
    assert run.run_id is not None
    return api.task_log(DAG_ID, run.run_id, task)


def _manifests(cfg: config.PipelineConfig, s3: Any) -> list[str]:
    listed = s3.list_objects_v2(Bucket=cfg.bucket, Prefix=cfg.manifests_prefix)
    return sorted(o["Key"].rsplit("/", 1)[-1] for o in listed.get("Contents", []))


def test_stack_is_local_with_a_login(airflow: dict[str, Any]) -> None:
    """Every component is up and said so; every socket they listen on is on 127.0.0.1 (no log
    server on all interfaces); the API wants the demo user's password."""
    stack: local_services.AirflowStack = airflow["stack"]
    for name in ("scheduler", "dag-processor", "triggerer", "api-server"):
        assert any(line.startswith(f"{name} up") for line in airflow["said"]), airflow["said"]
    listening = []
    for service in stack.services:
        root = psutil.Process(service.process.pid)
        for proc in [root, *root.children(recursive=True)]:
            listening += [
                (service.name, c.laddr.ip, c.laddr.port)
                for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
            ]
    assert ("api-server", "127.0.0.1", int(stack.url.rsplit(":", 1)[1])) in listening
    assert {ip for _, ip, _ in listening} == {"127.0.0.1"}, listening
    with pytest.raises(ApiError) as refused:
        AirflowApi(stack.url, stack.user, stack.password + "x")
    assert refused.value.status == 401
    with pytest.raises(ApiError) as anonymous:
        stack.api._request("GET", f"/api/v2/dags/{DAG_ID}", token=None)
    assert anonymous.value.status == 401

    # The plugin's page (mounted by the api-server, which authenticates none of a plugin's
    # routes itself) wants the login too: a bearer token, or the UI's cookie as its iframe
    # sends it.
    page = f"{stack.url}/weather-models/"
    for path in ("", "api/history", "versions/1/card"):
        assert _get(page + path) == 401, path
    assert _get(page, {"Authorization": f"Bearer {stack.api.token}"}) == 200
    assert _get(page, {"Cookie": f"_token={stack.api.token}"}) == 200
    assert _get(page, {"Cookie": "_token=forged"}) in (401, 403)


def _get(url: str, headers: dict[str, str] | None = None) -> int:
    """The status of ``GET url``."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=120) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_nights(airflow: dict[str, Any], tmp_path: Path) -> None:
    """Bucket missing: ingest fails at once, saying so in its log. Then the first night
    promotes; nothing new short-circuits; new images face the champion."""
    from mlflow.tracking import MlflowClient

    cfg: config.PipelineConfig = airflow["cfg"]
    s3 = airflow["s3"]
    api: AirflowApi = airflow["stack"].api
    registry = MlflowClient(tracking_uri=airflow["mlflow_url"])

    # Night 0: the deployment's bucket does not exist.
    failed, _ = _night(airflow, TINY)
    assert failed.state == "failed"
    assert failed.tasks["ingest"] == "failed"
    assert failed.tasks["train"] == failed.tasks["report"] == "upstream_failed"
    assert f"bucket {cfg.bucket!r} does not exist" in _log(api, failed, "ingest")
    # A permanent error is not retried (AirflowFailException), and nothing was created.
    assert failed.run_id is not None
    assert api.task_instances(DAG_ID, failed.run_id)["ingest"]["try_number"] == 1
    assert cfg.bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}

    local_services.ensure_bucket(s3, cfg.bucket)
    assert _upload(cfg, s3, tmp_path / "night1", per_class=10, skip=0) == 40

    # Night 1: everything is new, no champion yet -> version 1 becomes champion.
    first, progress = _night(airflow, TINY)
    assert first.state == "success", first.tasks
    assert list(first.tasks) == list(TASK_ORDER)
    assert set(first.tasks.values()) == {"success"}
    # Followed as it ran: each task's end, and the epoch from MLflow before train's end.
    followed = [p for p in progress if p.startswith("train ")]
    assert followed[-2].startswith("train epoch 1/1, val_accuracy "), progress
    assert followed[-1] == "train success", progress
    assert "listed 40 objects under incoming/, 40 new" in _log(api, first, "ingest")
    report = first.report
    assert report is not None and report["outcome"] == "promoted"
    assert report["ingest"]["accepted"] == 40 and report["ingest"]["manifest_version"] == "v000001"
    assert report["train"]["image_size"] == 32 and report["train"]["epochs_run"] == 1
    assert report["promotion"]["version"] == "1"
    (event,) = first.champion_events
    assert event["version"] == "1" and event["manifest_version"] == "v000001"
    name = cfg.registered_model
    assert event["model_uri"] == f"models:/{name}/1"
    assert report["promotion"]["registered_model"] == name
    assert registry.get_model_version_by_alias(name, "champion").version == "1"

    # Night 2: nothing new -> training, evaluation and promotion are skipped, report still runs.
    second, _ = _night(airflow, TINY)
    assert second.state == "success", second.tasks
    tasks = second.tasks
    assert {tasks[t] for t in ("train", "evaluate", "promote")} == {"skipped"}
    assert tasks["ingest"] == tasks["report"] == "success"
    assert second.report is not None and second.report["outcome"] == "nothing new"
    assert second.champion_events == []
    assert _manifests(cfg, s3) == ["v000001.json"]

    # Night 3: new photos -> a new manifest; the challenger is compared with champion v1.
    assert _upload(cfg, s3, tmp_path / "night3", per_class=3, skip=10) == 12
    third, _ = _night(airflow, {**TINY, "min_delta": -1.0})
    assert third.state == "success", third.tasks
    report = third.report
    assert report is not None
    assert report["ingest"]["accepted"] == 12
    assert report["ingest"]["manifest_version"] == "v000002"
    assert report["evaluation"]["champion_version"] == "1"
    assert report["evaluation"]["champion"] is not None
    assert report["evaluation"]["manifest_version"] == "v000002"
    # min_delta -1 makes any challenger win: the event must carry the new version.
    assert report["outcome"] == "promoted" and report["promotion"]["version"] == "2"
    (event,) = third.champion_events
    assert event["version"] == "2" and event["manifest_version"] == "v000002"
    assert registry.get_model_version_by_alias(name, "champion").version == "2"
    assert registry.get_model_version_by_alias(name, "previous").version == "1"


def test_bad_params_are_rejected_before_any_run(airflow: dict[str, Any]) -> None:
    api: AirflowApi = airflow["stack"].api
    runs_before = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")["total_entries"]
    run, progress = _night(airflow, {**TINY, "epochs": 0})
    assert run.state == "rejected" and run.run_id is None and progress == []
    assert run.error is not None and "epochs" in run.error
    assert api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")["total_entries"] == runs_before
