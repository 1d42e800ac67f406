"""Local stand-ins for the production services, as real processes on 127.0.0.1.

Used by the demo, the tests and the benchmarks: an S3 server (moto in server mode,
spoken to over HTTP by boto3 exactly as AWS or MinIO would be), an MLflow tracking
server with its registry and artifacts on that S3 server, and a local Airflow: its
environment and its own components (scheduler, dag-processor, triggerer, API server; a DAG
night is triggered and followed through its REST API by ``devtools.night``). Nothing here is
used in production, where the compose file (or AWS) provides the real thing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

from devtools.airflow_api import AirflowApi, health

# moto accepts any credentials; these exist only so boto3 finds some.
LOCAL_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "local-test-key",
    "AWS_SECRET_ACCESS_KEY": "local-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class Service:
    """A started server process; ``stop()`` ends it."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    terminated: bool = False

    def terminate(self) -> None:
        """SIGTERM to the whole process group (mlflow forks uvicorn workers), once."""
        if self.process.poll() is None and not self.terminated:
            self._signal_group(signal.SIGTERM)
            self.terminated = True

    def stop(self, timeout: float = 10) -> None:
        """:meth:`terminate`, wait up to ``timeout`` seconds, then SIGKILL."""
        self.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.process.wait()
        self._signal_group(signal.SIGKILL)  # any child left behind

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """Kill hard (SIGKILL), as a crashed server would die."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    """A console script of this virtual environment (falls back to PATH)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def start_process(
    name: str, cmd: list[str], log_dir: Path, env: dict[str, str], url: str = ""
) -> Service:
    """Start ``cmd`` in its own process group (``Service.stop`` ends it with its children)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
    return Service(name=name, url=url, process=proc, log_path=log_path, env=env)


def start_airflow(
    name: str, args: list[str], env: dict[str, str], log_dir: Path, url: str = ""
) -> Service:
    """One Airflow component (``api-server``, ``scheduler``, ``celery worker`` ...)."""
    return start_process(name, [_bin("airflow"), *args], log_dir, env, url)


def stop_services(services: list[Service], timeout: float = 20) -> None:
    """Stop ``services`` together: SIGTERM to all, then wait (SIGKILL what outlives ``timeout``)."""
    for service in services:
        service.terminate()
    deadline = time.monotonic() + timeout
    for service in services:
        service.stop(timeout=max(0.1, deadline - time.monotonic()))


def wait_http(url: str, services: list[Service], timeout: float) -> None:
    """Wait until ``url`` answers (any status below 500); fail early if a service dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in services:
            if s.process.poll() is not None:
                raise RuntimeError(f"{s.name} exited with {s.process.returncode}:\n{s.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                if resp.status < 500:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"no answer from {url} in {timeout}s")


def _start(
    name: str,
    cmd: list[str],
    url: str,
    health: str,
    log_dir: Path,
    env: dict[str, str],
    timeout: float,
) -> Service:
    service = start_process(name, cmd, log_dir, env, url)
    try:
        wait_http(url + health, [service], timeout)
    except RuntimeError as exc:
        service.stop()
        raise RuntimeError(f"{name}: {exc}\n{service.log_tail()}") from exc
    return service


def start_s3_server(
    log_dir: Path, port: int | None = None, timeout: float = 60, switch_interval: float = 0
) -> Service:
    """moto's S3 server on 127.0.0.1 (state in memory: it lasts as long as the process), its
    conditional writes atomic (:mod:`devtools.s3_server`; ``switch_interval``: its option)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    extra = ["--switch-interval", str(switch_interval)] if switch_interval else []
    return _start(
        "s3",
        [sys.executable, "-m", "devtools.s3_server", "-H", "127.0.0.1", "-p", str(port), *extra],
        url,
        "/moto-api/",
        log_dir,
        dict(LOCAL_S3_ENV),
        timeout,
    )


@dataclass(frozen=True)
class MlflowAccounts:
    """The basic-auth accounts of an MLflow server: the pipeline's, which is the admin (it
    trains, registers and moves aliases), and a read-only one (serving, people)."""

    pipeline_username: str
    pipeline_password: str = field(repr=False)
    reader_username: str
    reader_password: str = field(repr=False)

    def pipeline_env(self) -> dict[str, str]:
        """MLflow's client variables for the pipeline's account."""
        return _mlflow_credentials(self.pipeline_username, self.pipeline_password)

    def reader_env(self) -> dict[str, str]:
        """MLflow's client variables for the read-only account."""
        return _mlflow_credentials(self.reader_username, self.reader_password)


def _mlflow_credentials(username: str, password: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}


def start_mlflow_server(
    log_dir: Path,
    backend_store_uri: str,
    artifacts_destination: str,
    s3_endpoint_url: str | None,
    port: int | None = None,
    timeout: float = 120,
    auth: MlflowAccounts | None = None,
) -> Service:
    """An MLflow tracking server + registry; artifacts proxied to ``artifacts_destination``.

    ``backend_store_uri``: ``sqlite:///path.db`` or ``postgresql://...``.
    ``artifacts_destination``: e.g. ``s3://bucket/mlflow`` (the S3 server at ``s3_endpoint_url``).
    ``auth``: MLflow's basic-auth app (users in ``log_dir/mlflow-auth.db``): the pipeline's
    account is the admin; the reader is created with the default permission, READ.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    # The job runner (five huey consumers, for GenAI scorers) costs CPU we do not have to spare.
    env = {**LOCAL_S3_ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if s3_endpoint_url:
        env["MLFLOW_S3_ENDPOINT_URL"] = s3_endpoint_url
    cmd = [
        _bin("mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        artifacts_destination,
        "--workers",
        "1",
    ]
    if auth is None:
        return _start("mlflow", cmd, url, "/health", log_dir, env, timeout)
    config_path = log_dir / "mlflow-auth.ini"
    log_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{log_dir / 'mlflow-auth.db'}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    # The admin is created on the first start only; a later start with another password keeps
    # the stored one (rotation is MLflow's update-password API). The auth app refuses to start
    # without a key to sign its CSRF tokens with.
    env.update(
        MLFLOW_AUTH_CONFIG_PATH=str(config_path),
        MLFLOW_AUTH_ADMIN_USERNAME=auth.pipeline_username,
        MLFLOW_AUTH_ADMIN_PASSWORD=auth.pipeline_password,
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
    )
    service = _start(
        "mlflow", [*cmd, "--app-name", "basic-auth"], url, "/health", log_dir, env, timeout
    )
    try:
        _create_reader(url, auth)
    except BaseException:
        service.stop()
        raise
    return service


def _create_reader(url: str, auth: MlflowAccounts) -> None:
    """The read-only account, created by the admin; an existing one gets ``auth``'s password."""
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    # MLflow's clients take credentials from the environment only: the admin's, for this call.
    with mock.patch.dict(os.environ, auth.pipeline_env()):
        client = AuthServiceClient(url)
        try:
            client.create_user(auth.reader_username, auth.reader_password)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            client.update_user_password(auth.reader_username, auth.reader_password)


def start_model_server(
    log_dir: Path,
    model_uri: str,
    tracking_uri: str,
    port: int | None = None,
    timeout: float = 300,
) -> Service:
    """``mlflow models serve -m MODEL_URI --env-manager local``: the REST scoring server."""
    port = port or free_port()
    cmd = [
        _bin("mlflow"),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "--workers",
        "1",
    ]
    # mlflow execs ``uvicorn`` by name: this environment's bin/ must be on PATH.
    path = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}
    return _start("model-server", cmd, f"http://127.0.0.1:{port}", "/ping", log_dir, env, timeout)


def ensure_bucket(s3: object, bucket: str) -> None:
    """Create ``bucket`` unless it exists (local servers only; production provisions it)."""
    try:
        s3.head_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    except Exception:
        s3.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]


# --- A local Airflow (demo, e2e tests, benchmarks) -------------------------------------------
# Only environment variables and subprocesses: this module must not import airflow.

AIRFLOW_S3_CONN_ID = "weather_s3"  # the DAG's connection id (dags/weather_retrain.py)
AIRFLOW_USER = "demo"
# The components a scheduled night needs, in the order they are stopped. The scheduler and the
# triggerer would each start a log server on every interface (no host setting): they are run
# with --skip-serve-logs, and the API server reads task logs from the shared logs folder.
AIRFLOW_COMPONENTS: dict[str, list[str]] = {
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "api-server": ["api-server"],
}
# /api/v2/monitor/health's names for the components that heartbeat.
_HEARTBEATS = {"scheduler": "scheduler", "dag_processor": "dag-processor",
               "triggerer": "triggerer"}


def airflow_env(
    home: Path,
    *,
    s3_endpoint_url: str,
    mlflow_tracking_uri: str,
    sql_alchemy_conn: str | None = None,
    executor: str = "LocalExecutor",
    repo: Path | None = None,
) -> dict[str, str]:
    """Variables for an Airflow whose state lives in ``home`` and that runs this repo's DAGs.

    The S3 connection is an ``AIRFLOW_CONN_WEATHER_S3`` variable of type ``aws`` with the local
    server's dummy keys and its endpoint in the extra, exactly the shape production uses.
    ``sql_alchemy_conn`` defaults to SQLite in ``home``; the Celery set-up passes a PostgreSQL
    URL. Login: the simple auth manager with one admin, ``demo``, whose password Airflow
    generates into ``home`` on the API server's first start (:func:`airflow_login`).
    """
    repo = repo or Path(__file__).resolve().parents[1]  # devtools/ is one level below the repo
    home = Path(home).resolve()
    conn = {
        "conn_type": "aws",
        "login": LOCAL_S3_ENV["AWS_ACCESS_KEY_ID"],
        "password": LOCAL_S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "extra": {
            "endpoint_url": s3_endpoint_url,
            "region_name": LOCAL_S3_ENV["AWS_DEFAULT_REGION"],
        },
    }
    sqlite = f"sqlite:///{home / 'airflow.db'}"
    pythonpath = os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(repo / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(repo / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn or sqlite,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{AIRFLOW_USER}:admin",
        # Every component of one local Airflow must sign and check tokens with the same key.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW_CONN_" + AIRFLOW_S3_CONN_ID.upper(): json.dumps(conn),
        "WEATHER_MLFLOW_TRACKING_URI": mlflow_tracking_uri,
        "PYTHONPATH": pythonpath,
        # moto's dummy keys for anything that uses the default AWS chain (never real ones).
        **LOCAL_S3_ENV,
    }


def run_airflow(
    env: dict[str, str], *args: str, log_dir: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run an ``airflow`` CLI command with ``env``; raise with its output if it fails."""
    log_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [_bin("airflow"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    (log_dir / f"airflow-{'-'.join(args[:2])}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(
            f"airflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return proc


@dataclass
class AirflowStack:
    """A running local Airflow: its components, its API server's URL, a logged-in client."""

    url: str
    services: list[Service]
    api: AirflowApi
    user: str
    password: str
    password_file: Path
    started: datetime  # when the components were started (UTC): DAGs parsed later are current

    def stop(self) -> None:
        """All components at once (SIGTERM: the scheduler ends its running tasks)."""
        stop_services(self.services)


def start_airflow_stack(
    env: dict[str, str],
    log_dir: Path,
    *,
    port: int | None = None,
    parallelism: int = 2,
    migrate: bool = True,
    timeout: float = 300,
    say: Callable[[str], None] = print,
) -> AirflowStack:
    """``airflow db migrate`` (unless ``migrate`` is False: a database this Airflow made), then
    scheduler, dag-processor, triggerer and API server, each in its own process group, the API
    server on 127.0.0.1:``port`` (default: a free port).

    ``env`` is :func:`airflow_env`'s (LocalExecutor; ``parallelism`` task processes at most).
    Waits until the API answers and every component heartbeats (``/api/v2/monitor/health``),
    saying each as it comes up; a component that exits or is not up within ``timeout`` seconds
    stops the others and fails naming it and its log file.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **env,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        # Airflow's components start helpers by name (``airflow``, ``uvicorn``).
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    }
    t0 = time.monotonic()
    if migrate:
        say("creating or upgrading Airflow's database (airflow db migrate)")
        run_airflow(env, "db", "migrate", log_dir=log_dir, timeout=timeout)
    say(f"starting {', '.join(AIRFLOW_COMPONENTS)} ({time.monotonic() - t0:.0f}s); "
        f"logs in {log_dir}")
    started = datetime.now(UTC)
    services = []
    for name, args in AIRFLOW_COMPONENTS.items():
        if name == "api-server":
            args = [*args, "--host", "127.0.0.1", "--port", str(port)]
        services.append(start_airflow(name, args, env, log_dir, url))
    try:
        _wait_until_healthy(url, services, started, time.monotonic() + timeout, say, t0)
        user, password, password_file = airflow_login(env)
        api = AirflowApi(url, user, password)
    except BaseException:
        stop_services(services)
        raise
    return AirflowStack(url, services, api, user, password, password_file, started)


def airflow_login(env: dict[str, str]) -> tuple[str, str, Path]:
    """The simple auth manager's first user, its password and the file Airflow generated it in
    (``[core] simple_auth_manager_passwords_file``, default in ``AIRFLOW_HOME``)."""
    user = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")[0].split(":")[0]
    path = Path(
        env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
        or Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
    )
    return user, json.loads(path.read_text())[user], path


def _wait_until_healthy(
    url: str,
    services: list[Service],
    started: datetime,
    deadline: float,
    say: Callable[[str], None],
    t0: float,
) -> None:
    """Until the API answers and each component has heartbeated since ``started``."""
    pending = [s.name for s in services]
    last_said = time.monotonic()
    while pending:
        for s in services:
            if s.process.poll() is not None:
                raise RuntimeError(
                    f"airflow {s.name} exited with {s.process.returncode} while starting; "
                    f"its log: {s.log_path}\n{s.log_tail()}"
                )
        status = health(url)
        up = []
        if status is not None:
            up.append("api-server")
            for key, name in _HEARTBEATS.items():
                beat = (status.get(key) or {}).get(f"latest_{key}_heartbeat")
                if beat and datetime.fromisoformat(beat) > started:
                    up.append(name)
        for name in [n for n in pending if n in up]:
            pending.remove(name)
            say(f"{name} up ({time.monotonic() - t0:.0f}s)")
            last_said = time.monotonic()
        if pending and time.monotonic() - last_said > 15:
            say(f"waiting for {', '.join(pending)} ({time.monotonic() - t0:.0f}s)")
            last_said = time.monotonic()
        if pending and time.monotonic() > deadline:
            logs = ", ".join(f"{s.name} (log {s.log_path})" for s in services if s.name in pending)
            raise RuntimeError(f"Airflow did not start in time: not up: {logs}")
        if pending:
            time.sleep(1)
