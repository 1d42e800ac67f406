"""The production shape on one machine: CeleryExecutor, PostgreSQL, Redis, separate processes.

A fresh PostgreSQL database on 127.0.0.1:5432 is the metadata DB, Redis on 127.0.0.1:6379 (its
own db number) the Celery broker; api-server, scheduler, dag-processor and one Celery worker
listening on ``default,gpu`` run as child processes with a temporary AIRFLOW_HOME, the
pipeline's DAGs beside a probe DAG. The probe is triggered through the REST API (``/api/v2``)
with a JWT from ``/auth/token``, as the UI does. A whole night on Celery (queues, the Asset
consumer, refused params) is the compose night's (tests/platform), in the production images.

The JWT trap: Airflow 3 task tokens live ``[execution_api] jwt_expiration_time`` (600 s by
default). In Airflow 3.3 the execution API re-issues a task's token on its heartbeats once 80%
of the lifetime has passed (``JWTReissueMiddleware``, header ``Refreshed-API-Token``), so long
tasks survive. We prove it on a scale model: tokens of 30 s and a task that sleeps 75 s
(``WEATHER_E2E_JWT_EXPIRATION``, ``WEATHER_E2E_SLEEP`` change both; run with 600 and 660 for
the full-size proof).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import socket
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from devtools import local_services
from devtools.airflow_api import AirflowApi
from tests.support import REPO

pytestmark = pytest.mark.e2e

PG_HOST, PG_PORT, REDIS_PORT = "127.0.0.1", 5432, 6379
JWT_EXPIRATION = int(os.environ.get("WEATHER_E2E_JWT_EXPIRATION", "30"))
SLEEP = int(os.environ.get("WEATHER_E2E_SLEEP", "75"))

PROBE_DAG = textwrap.dedent(
    '''
    """A task that outlives its first execution-API token (tests/e2e/test_celery.py)."""
    import time

    import pendulum
    from airflow.sdk import Param, dag, task


    @dag(dag_id="weather_jwt_probe", schedule=None, catchup=False,
         start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         params={"seconds": Param(75, type="integer", minimum=1)})
    def weather_jwt_probe():
        @task(queue="default")
        def sleep_past_token_expiry(params=None):
            time.sleep(params["seconds"])
            return {"slept": params["seconds"]}

        sleep_past_token_expiry()


    weather_jwt_probe()
    '''
)


def _reachable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def postgres_db() -> Iterator[str]:
    """A fresh database for this run's Airflow metadata; dropped afterwards."""
    if not _reachable(PG_PORT) or not _reachable(REDIS_PORT):
        pytest.skip("PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are needed")
    import psycopg2

    name = f"weather_e2e_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/{name}"
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="module")
def celery_airflow(
    postgres_db: str,
    s3_server: local_services.Service,
    mlflow_server: local_services.Service,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """Airflow in production shape; yields the API client, its URL, the env and the logs."""
    root = tmp_path_factory.mktemp("airflow-celery")
    logs = root / "logs"
    dags = root / "dags"
    dags.mkdir()
    for dag_file in (REPO / "dags").glob("*.py"):
        shutil.copy(dag_file, dags / dag_file.name)
    (dags / "weather_jwt_probe.py").write_text(PROBE_DAG)

    port = local_services.free_port()
    api_url = f"http://127.0.0.1:{port}"
    password = secrets.token_urlsafe(12)
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps({"admin": password}))
    env = local_services.airflow_env(
        root / "home",
        s3_endpoint_url=s3_server.url,
        mlflow_tracking_uri=mlflow_server.url,
        sql_alchemy_conn=postgres_db,
        executor="CeleryExecutor",
    )
    env.update(
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="False",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{api_url}/execution/",
        AIRFLOW__API__BASE_URL=api_url,
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__API__WORKERS="1",
        AIRFLOW__CELERY__BROKER_URL=f"redis://127.0.0.1:{REDIS_PORT}/{random.randint(8, 15)}",
        AIRFLOW__CELERY__RESULT_BACKEND="db+" + postgres_db,
        AIRFLOW__CELERY__WORKER_CONCURRENCY="2",
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(local_services.free_port()),
        AIRFLOW__EXECUTION_API__JWT_EXPIRATION_TIME=str(JWT_EXPIRATION),
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="30",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
        # The pipeline's DAGs parse here too, paused: no scheduled night.
        WEATHER_SCHEDULE="none",
    )
    local_services.run_airflow(env, "db", "migrate", log_dir=logs, timeout=600)
    services = [
        local_services.start_airflow(
            "api-server", ["api-server", "--host", "127.0.0.1", "--port", str(port)], env, logs
        ),
        local_services.start_airflow("scheduler", ["scheduler"], env, logs),
        local_services.start_airflow("dag-processor", ["dag-processor"], env, logs),
        local_services.start_airflow(
            "worker", ["celery", "worker", "--queues", "default,gpu"], env, logs
        ),
    ]
    try:
        local_services.wait_http(f"{api_url}/api/v2/monitor/health", services, timeout=300)
        api = AirflowApi(api_url, "admin", password)
        yield {"api": api, "url": api_url, "env": env, "logs": logs, "services": services}
    finally:
        for service in reversed(services):
            service.stop()


def _wait_for_dags(api: AirflowApi, dag_ids: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    missing = dag_ids
    while time.monotonic() < deadline:
        missing = [d for d in dag_ids if api.dag(d) is None]
        if not missing:
            return
        time.sleep(3)
    raise AssertionError(f"DAGs not parsed after {timeout}s: {missing}")


def test_a_task_outlives_its_first_token_on_celery(celery_airflow: dict[str, Any]) -> None:
    """Triggered through the REST API, run by the Celery worker."""
    api: AirflowApi = celery_airflow["api"]
    _wait_for_dags(api, ["weather_retrain", "weather_jwt_probe"])
    api.set_paused("weather_jwt_probe", False)

    probe = api.trigger("weather_jwt_probe", {"seconds": SLEEP})
    probe_run = api.wait_for_run("weather_jwt_probe", probe["dag_run_id"], timeout=SLEEP + 300)
    probe_ti = api.task_instances("weather_jwt_probe", probe["dag_run_id"])[
        "sleep_past_token_expiry"
    ]
    assert probe_run["state"] == "success", probe_ti
    assert probe_ti["queue"] == "default"
    # It outlived its first token (by 2.5 lifetimes with the defaults above).
    assert probe_ti["duration"] >= SLEEP > JWT_EXPIRATION
