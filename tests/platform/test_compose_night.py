"""Two nights through docker compose: the production images and compose file, as a team deploys.

``docker-compose -f docker/compose.yaml -f tests/platform/compose.test.yaml``: the images are
built by compose from docker/Dockerfile on the stand-in base, offline from the wheelhouse
(devtools/platform.py); the override only swaps PostgreSQL, Redis and MinIO for the machine's
PostgreSQL and Redis and the project's S3 test server, on the host's network (127.0.0.1 only).
Then, through the REST APIs as a user would: every service healthy, real photos in incoming/,
``weather_retrain`` triggered with tiny training params, the registry's @champion, the Asset event
reaching the consumer DAG, the plugin page. The serving endpoint (weather-serve) answers requests
throughout night 2, whose challenger is made to win: no request fails and the endpoint reports
the new version soon after promotion. MLflow refuses an alias change without the pipeline's
account. Every service's log is saved (PLATFORM_ARTIFACTS, default .test-artifacts/platform/);
``down -v`` at the end, whatever happened.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from devtools import local_services, platform
from devtools.airflow_api import AirflowApi, ApiError
from devtools.night import DAG_ID, NightRun, run_night
from tests.support import mwd_images
from weather_tasks import config, ingest, storage

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILES = [REPO / "docker" / "compose.yaml", Path(__file__).with_name("compose.test.yaml")]
ARTIFACTS = Path(os.environ.get("PLATFORM_ARTIFACTS") or REPO / ".test-artifacts" / "platform")
# What CI starts: everything but the GPU worker (no GPU) and flower (a profile).
SERVICES = [
    "postgres", "redis", "minio", "minio-init", "mlflow", "mlflow-init", "airflow-init",
    "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
    "airflow-worker", "weather-serve",
]
ONE_SHOT = {"minio-init", "mlflow-init", "airflow-init"}
CONSUMER = "weather_champion_consumer"
TINY = {"epochs": 1, "image_size": 32, "batch_size": 8}
MODEL = "weather-classifier"
MAX_REQUEST_BYTES = 1024 * 1024
SWAP_SECONDS = 60  # stated bound: the endpoint polls @champion every second here


@dataclass
class Platform:
    project: str
    env: dict[str, str]
    cfg: config.PipelineConfig
    api: AirflowApi
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.env['PLATFORM_MLFLOW_PORT']}"

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.env['PLATFORM_SERVE_PORT']}"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.env['PLATFORM_AIRFLOW_PORT']}"


def _compose(project: str, env: dict[str, str], *args: str, timeout: float = 900,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["docker-compose", "-p", project]
    for f in COMPOSE_FILES:
        cmd += ["-f", str(f)]
    proc = subprocess.run([*cmd, *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker-compose {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _states(project: str, env: dict[str, str]) -> dict[str, tuple[str, str | None, int]]:
    """Each started service's (status, health or None, exit code)."""
    ids = _compose(project, env, "ps", "-q", "-a").stdout.split()
    out = {}
    for cid in ids:
        info = json.loads(subprocess.run(["docker", "inspect", cid], capture_output=True,
                                         text=True, check=True).stdout)[0]
        name = info["Config"]["Labels"]["com.docker.compose.service"]
        state = info["State"]
        out[name] = (state["Status"], (state.get("Health") or {}).get("Status"),
                     state["ExitCode"])
    return out


def _listening() -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


def _require_platform() -> None:
    missing = platform.missing_tools()
    why = f"not installed: {', '.join(missing)}" if missing else None
    if not why and not platform.docker_running():
        why = "Docker's daemon is not running (bash .ci/setup --test starts it)"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the platform tier needs Docker: {why}; CI is set", pytrace=False)
        pytest.skip(why)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    _require_platform()
    root = tmp_path_factory.mktemp("platform")
    run = uuid.uuid4().hex[:8]
    project = f"wrplat{run}"
    s3 = local_services.start_s3_server(root / "logs")
    timings: dict[str, float] = {}
    started = time.monotonic()
    base = platform.standin_base()
    wheels = platform.wheelhouse()
    timings["prepare"] = time.monotonic() - started
    ports = {f"PLATFORM_{name}_PORT": str(local_services.free_port())
             for name in ("AIRFLOW", "MLFLOW", "SERVE", "SCHEDULER_HEALTH")}
    admin_password = secrets.token_urlsafe(16)
    env = {
        **ports,
        "PLATFORM_DB_PREFIX": f"{project}_",
        "PLATFORM_REDIS_DB": str(1 + int(run, 16) % 7),  # the e2e Celery test takes 8-15
        "PLATFORM_S3_URL": s3.url,
        "BASE_IMAGE": base,
        # Fixed tags: a rebuild on this machine reuses the cached layers.
        "AIRFLOW_IMAGE_NAME": "weather-retrain/airflow:platform-test",
        "MLFLOW_IMAGE_NAME": "weather-retrain/mlflow:platform-test",
        "GPU_WORKER_IMAGE_NAME": "weather-retrain/gpu-worker:platform-test",
        "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW_API_SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW_DB_PASSWORD": secrets.token_urlsafe(16),
        "MLFLOW_DB_PASSWORD": secrets.token_urlsafe(16),
        "MLFLOW_SECRET_KEY": secrets.token_urlsafe(32),
        "MINIO_ROOT_USER": local_services.LOCAL_S3_ENV["AWS_ACCESS_KEY_ID"],
        "MINIO_ROOT_PASSWORD": local_services.LOCAL_S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "AIRFLOW_ADMIN_USER": "admin",
        "AIRFLOW_ADMIN_PASSWORD": admin_password,
        "MLFLOW_PIPELINE_PASSWORD": secrets.token_urlsafe(16),
        "MLFLOW_READER_PASSWORD": secrets.token_urlsafe(16),
        "WEATHER_BUCKET": "weather",
        "WEATHER_REGISTERED_MODEL": MODEL,
        # Manual runs only; tiny models cannot meet the production floor.
        "WEATHER_SCHEDULE": "none",
        "WEATHER_ACCURACY_FLOOR": "0",
        "WEATHER_MAX_CLASS_RECALL_DROP": "1",
        "WEATHER_SERVE_POLL_SECONDS": "1",
        "WEATHER_SERVE_LOG_SAMPLE": "1",
        "WEATHER_SERVE_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
    }
    before = _listening()
    cfg = config.from_env(environ={}, bucket="weather", s3_endpoint_url=s3.url,
                          registered_model=MODEL)
    try:
        with platform.serve_folder(wheels) as wheelhouse_url:
            t = time.monotonic()
            _compose(project, {**env, "WHEELHOUSE": wheelhouse_url}, "build",
                     "airflow-init", "mlflow", timeout=1800)
            timings["build"] = time.monotonic() - t
        # The images the rebuild replaced (GBs each, run after run on one machine).
        subprocess.run(["docker", "image", "prune", "--force", "--filter",
                        "label=io.weather-retrain.project"], capture_output=True, check=True)
        t = time.monotonic()
        _compose(project, env, "up", "-d", "--no-build", *SERVICES)
        # weather-serve is healthy once it serves a champion, after night 1.
        _wait_healthy(project, env, [s for s in SERVICES if s != "weather-serve"], timeout=300)
        timings["up_to_healthy"] = time.monotonic() - t
        api = AirflowApi(f"http://127.0.0.1:{env['PLATFORM_AIRFLOW_PORT']}", "admin",
                         admin_password)
        new = {(ip, port) for ip, port in _listening() - before}
        assert new and all(ip == "127.0.0.1" for ip, _ in new), f"listening beyond 127.0.0.1: {new}"
        yield Platform(project, env, cfg, api, timings)
    finally:
        _save_logs(project, env)
        _compose(project, env, "down", "-v", "--remove-orphans", "--timeout", "20", check=False)
        s3.stop()
        _drop_databases(env["PLATFORM_DB_PREFIX"])
        rounded = {k: round(v) for k, v in timings.items()}
        (ARTIFACTS / project / "timings.json").write_text(json.dumps(rounded) + "\n")
        print("platform timings (s):", rounded)


def _wait_healthy(project: str, env: dict[str, str], services: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = _states(project, env)
        pending = {s: states.get(s) for s in services
                   if not (s in ONE_SHOT and states.get(s, ("",))[0] == "exited"
                           and states[s][2] == 0)
                   and not (states.get(s, ("", None))[1] == "healthy")}
        if not pending:
            return
        failed = {s: st for s, st in pending.items() if st and st[0] == "exited"}
        if failed or time.monotonic() > deadline:
            raise AssertionError(f"services not healthy: {pending}")
        time.sleep(2)


def _save_logs(project: str, env: dict[str, str]) -> None:
    folder = ARTIFACTS / project
    folder.mkdir(parents=True, exist_ok=True)
    for service in SERVICES:
        proc = _compose(project, env, "logs", "--no-color", "--timestamps", service, check=False)
        (folder / f"{service}.log").write_text(proc.stdout + proc.stderr)
    print(f"platform: service logs in {folder}")


def _drop_databases(prefix: str) -> None:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        for db in ("airflow", "mlflow", "mlflow_auth"):
            cur.execute(f'DROP DATABASE IF EXISTS "{prefix}{db}" WITH (FORCE)')
    conn.close()


def _upload(p: Platform, tmp: Path, per_class: int, skip: int) -> int:
    images = mwd_images()
    tmp.mkdir(parents=True)
    for cls in p.cfg.classes:
        for path in sorted(images.glob(f"{cls}*"))[skip: skip + per_class]:
            shutil.copy(path, tmp / path.name)
    return int(ingest.upload_folder(p.cfg, storage.make_client(p.cfg), tmp)["uploaded"])


def _mlflow(p: Platform, account: str | None, method: str, path: str,
            body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """An MLflow REST call as ``account`` ("pipeline", "reader" or None): (status, JSON)."""
    headers = {"Content-Type": "application/json"}
    if account:
        user = {"pipeline": "weather-pipeline", "reader": "weather-reader"}[account]
        password = p.env[f"MLFLOW_{account.upper()}_PASSWORD"]
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    request = urllib.request.Request(
        p.mlflow_url + path, method=method, headers=headers,
        data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _champion(p: Platform) -> str:
    status, body = _mlflow(p, "reader", "GET",
                           f"/api/2.0/mlflow/registered-models/alias?name={MODEL}&alias=champion")
    assert status == 200, body
    return str(body["model_version"]["version"])


def _photo(name: str) -> str:
    return base64.b64encode((mwd_images() / name).read_bytes()).decode()


def _invoke(url: str, payload: bytes, content_type: str = "application/json",
            timeout: float = 60) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(url + "/invocations", data=payload, method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, body, headers = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        status, body, headers = exc.code, exc.read(), exc.headers
    return status, json.loads(body or b"{}"), {k.lower(): v for k, v in headers.items()}


def _ping(url: str) -> int:
    """``GET /ping``'s status; 0 while nothing answers."""
    try:
        with urllib.request.urlopen(url + "/ping", timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class _Traffic(threading.Thread):
    """Requests to the endpoint, one after another, until stopped: each (time, status,
    version); and when @champion was first seen on ``watch_version`` (MLflow, polled)."""

    def __init__(self, p: Platform, image: str, watch_version: str) -> None:
        super().__init__(daemon=True)
        self.p = p
        self.watch_version = watch_version
        self.body = json.dumps({"dataframe_split": {"columns": ["image"],
                                                    "data": [[image]]}}).encode()
        self.results: list[tuple[float, int | str, str | None]] = []
        self.alias_moved_at: float | None = None
        self.alias_checked_at = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                status, body, _ = _invoke(self.p.serve_url, self.body)
                ok = status == 200 and not body["predictions"][0].get("error")
                self.results.append((time.time(), status if ok else f"{status} {body}",
                                     body.get("model_version")))
            except Exception as exc:  # noqa: BLE001 - any failure is a failed request
                self.results.append((time.time(), repr(exc), None))
            if self.alias_moved_at is None and time.time() - self.alias_checked_at > 1:
                self.alias_checked_at = time.time()
                if _champion(self.p) == self.watch_version:
                    self.alias_moved_at = self.alias_checked_at
            time.sleep(0.2)


def _night(p: Platform, conf: dict[str, Any]) -> NightRun:
    run = run_night(p.api, {**TINY, **conf}, timeout=900)
    assert run.state == "success", run.as_dict()
    return run


def test_two_nights_through_compose(stack: Platform, tmp_path: Path) -> None:
    p = stack
    api = p.api
    t0 = time.monotonic()
    api.wait_for_dag(DAG_ID, datetime(2000, 1, 1, tzinfo=UTC), timeout=300)
    api.wait_for_dag(CONSUMER, datetime(2000, 1, 1, tzinfo=UTC), timeout=300)
    for dag_id in (DAG_ID, CONSUMER):
        api.set_paused(dag_id, False)

    # Before the first champion the endpoint is up and says so: 503, nothing to serve.
    deadline = time.monotonic() + 180
    while (answer := _ping(p.serve_url)) == 0 and time.monotonic() < deadline:
        time.sleep(1)
    assert answer == 503, f"weather-serve before the first champion: /ping {answer}"
    status, body, _ = _invoke(p.serve_url, b'{"inputs": ["x"]}')
    assert status == 503 and "no model to serve yet" in body["error"], (status, body)

    # Bad params are refused by the API itself: no run is created.
    with pytest.raises(ApiError) as refused:
        api.trigger(DAG_ID, {**TINY, "model": "model_9"})
    assert refused.value.status == 400 and "model" in json.dumps(refused.value.detail)
    assert api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")["total_entries"] == 0

    # Night 1: real photos, the first champion; training on the gpu queue (the CPU worker
    # takes it here).
    assert _upload(p, tmp_path / "night1", per_class=10, skip=0) == 40
    night1 = _night(p, {})
    night1_ended = time.monotonic()
    assert night1.run_id is not None
    tis = api.task_instances(DAG_ID, night1.run_id)
    assert (tis["train"]["queue"], tis["ingest"]["queue"]) == ("gpu", "default")
    p.timings["night_1"] = night1.seconds
    p.timings["up_to_first_night"] = p.timings["up_to_healthy"] + time.monotonic() - t0
    assert night1.report["outcome"] == "promoted", night1.report
    assert _champion(p) == "1"
    assert night1.champion_events and night1.champion_events[0].get("version") in ("1", 1)

    # The Asset event reached the consumer DAG, which ran.
    deadline = time.monotonic() + 300
    consumer: list[dict[str, Any]] = []
    while not consumer and time.monotonic() < deadline:
        consumer = api.call("GET", f"/api/v2/dags/{CONSUMER}/dagRuns")["dag_runs"]
        time.sleep(3)
    assert consumer, f"the champion Asset event did not trigger {CONSUMER}"
    ended = api.wait_for_run(CONSUMER, consumer[0]["dag_run_id"], timeout=300)
    assert ended["state"] == "success" and ended["run_type"] == "asset_triggered", ended
    announced = api.xcom(CONSUMER, ended["dag_run_id"], "new_champion")
    assert (announced["version"], announced["pinned_model_uri"]) == ("1", f"models:/{MODEL}/1")

    # The plugin page, served by the api-server to logged-in users, shows the champion.
    plugin = urllib.request.Request(p.airflow_url + "/weather-models/")
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(plugin, timeout=60)
    assert anonymous.value.code == 401
    plugin.add_header("Authorization", f"Bearer {api.token}")
    with urllib.request.urlopen(plugin, timeout=60) as resp:
        page = resp.read().decode()
    assert "model history" in page and "/weather-models/versions/1/card" in page

    # Who may move @champion: nobody without an account, not the reader; the alias stays.
    body = {"name": MODEL, "alias": "champion", "version": "1"}
    status, _ = _mlflow(p, None, "POST", "/api/2.0/mlflow/registered-models/alias", body)
    assert status == 401
    status, _ = _mlflow(p, "reader", "POST", "/api/2.0/mlflow/registered-models/alias",
                        {**body, "alias": "stolen"})
    assert status == 403
    status, _ = _mlflow(p, "reader", "DELETE", "/api/2.0/mlflow/registered-models/alias",
                        {"name": MODEL, "alias": "champion"})
    assert status == 403
    assert _champion(p) == "1"

    # The endpoint, started with the stack, serves the first champion without a restart, with
    # the read-only account.
    deadline = time.monotonic() + 300
    while _ping(p.serve_url) != 200:
        assert time.monotonic() < deadline, "weather-serve never served the first champion"
        time.sleep(0.5)
    p.timings["endpoint_serving_after_night_1"] = time.monotonic() - night1_ended
    _wait_healthy(p.project, p.env, ["weather-serve"], timeout=120)
    assert _states(p.project, p.env)["weather-serve"][0] == "running"
    _contract(p.serve_url)

    # Night 2: a few new photos; the challenger is made to win (min_delta -1), and the
    # endpoint answers throughout.
    traffic = _Traffic(p, _photo("rain1.jpg"), watch_version="2")
    traffic.start()
    try:
        assert _upload(p, tmp_path / "night2", per_class=3, skip=10) == 12
        night2 = _night(p, {"min_delta": -1})
        deadline = time.time() + SWAP_SECONDS
        while time.time() < deadline and not any(v == "2" for _, _, v in traffic.results):
            time.sleep(1)
    finally:
        traffic.stop.set()
        traffic.join(timeout=90)
    p.timings["night_2"] = night2.seconds
    evaluation = night2.report["evaluation"]
    assert night2.report["outcome"] == "promoted", night2.report
    assert str(evaluation.get("champion_version")) == "1", evaluation
    assert _champion(p) == "2"

    failed = [r for r in traffic.results if r[1] != 200]
    assert not failed, f"{len(failed)} of {len(traffic.results)} requests failed: {failed[:3]}"
    swapped = [when for when, _, version in traffic.results if version == "2"]
    assert swapped, f"the endpoint never served version 2 ({len(traffic.results)} requests)"
    assert traffic.alias_moved_at is not None
    lag = swapped[0] - traffic.alias_moved_at
    p.timings["swap_after_alias_moved"] = lag
    assert lag < SWAP_SECONDS, f"version 2 served {lag:.0f}s after @champion moved"
    print(f"endpoint: {len(traffic.results)} requests, 0 failed; version 2 served "
          f"{lag:.1f}s after @champion was seen on it")

    _metrics_and_prediction_log(p)


def _contract(url: str) -> None:
    """The model's contract over HTTP, and the server keeps serving after each refusal."""
    good = _photo("shine1.jpg")
    batch = {"dataframe_split": {"columns": ["image"],
                                 "data": [[good], [base64.b64encode(b"not a jpeg").decode()]]}}
    status, body, headers = _invoke(url, json.dumps(batch).encode())
    assert status == 200 and headers.get("x-model-version") == body["model_version"] == "1"
    rows = body["predictions"]
    assert not rows[0].get("error") and rows[0]["label"]
    assert rows[1]["error_code"], rows[1]
    refused = {
        "empty body": (b"", 400),
        "not JSON": (b"{", 400),
        "a path column": (json.dumps({"dataframe_split": {
            "columns": ["path"], "data": [["/etc/passwd"]]}}).encode(), 400),
    }
    for what, (payload, expected) in refused.items():
        status, answer, _ = _invoke(url, payload)
        assert status == expected, (what, status, answer)
    # Oversized: refused from its Content-Length, before the body is read (so none is sent).
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("POST", "/invocations")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(MAX_REQUEST_BYTES + 1))
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()
    status, body, _ = _invoke(url, json.dumps(batch).encode())
    assert status == 200, "the server stopped serving after a refused request"


def _metrics_and_prediction_log(p: Platform) -> None:
    with urllib.request.urlopen(p.serve_url + "/metrics", timeout=30) as resp:
        metrics = resp.read().decode()
    for name in ("weather_endpoint_requests_total", "weather_endpoint_request_seconds_bucket",
                 'weather_endpoint_model_version 2.0'):
        assert name in metrics, f"{name} not in /metrics"
    # The sampled prediction log reaches the bucket (batches of 100 records or every 60 s).
    s3 = storage.make_client(p.cfg)
    deadline = time.monotonic() + 120
    keys: list[str] = []
    while not keys and time.monotonic() < deadline:
        listed = s3.list_objects_v2(Bucket="weather", Prefix="predictions/")
        keys = [o["Key"] for o in listed.get("Contents", [])]
        time.sleep(3)
    assert keys, "no prediction log under s3://weather/predictions/"
