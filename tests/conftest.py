"""Shared fixtures (real service processes on 127.0.0.1: S3 server, MLflow server) and the
tiers by cost.

Tiers, one per folder, applied as markers at collection: ``unit`` (no services), ``dags``
(Airflow parsing, no services), ``integration`` (real S3/MLflow server processes, PostgreSQL),
``e2e`` (whole DAG runs, Celery, Chromium); ``slow`` is for a test that is slow whatever its
folder. A plain ``pytest`` runs the tiers that need no services (unit, dags) and reports the
rest as deselected; ``--all-tiers`` runs everything (CI); ``-m EXPR`` chooses as usual.
Helpers that test modules import live in ``tests/support``, never here.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from devtools import local_services
from weather_tasks import config, storage, tracking
from weather_tasks.config import PipelineConfig

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "dags", "integration", "e2e", "platform")
# Deselected by a plain ``pytest``: unit and dags run.
COSTLY = ("integration", "e2e", "platform", "slow")
E2E_TIMEOUT_S = 1800  # a whole DAG run, a Celery or compose stack on 2 CPU cores; others: pyproject
_DESELECTED = pytest.StashKey[int]()
_TIER_OF: dict[str, str] = {}  # test node id -> its tier, set at collection
_TIER_SECONDS: dict[str, list[float]] = {}  # tier -> [seconds, tests], printed at the end


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--all-tiers",
        action="store_true",
        default=False,
        help="run every tier, including integration, e2e, platform and slow (what CI runs); "
        "default without -m: unit and dags only",
    )


@pytest.hookimpl(tryfirst=True)  # before -m deselects, so that it sees the tier markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its folder's tier; without -m or --all-tiers keep the cheap tiers."""
    for item in items:
        tier = _tier(item)
        if tier is None:
            continue
        _TIER_OF[item.nodeid] = tier
        item.add_marker(tier)
        if tier in ("e2e", "platform") and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(E2E_TIMEOUT_S))
    if config.getoption("--all-tiers") or config.getoption("markexpr"):
        return
    keep, drop = [], []
    for item in items:
        costly = any(item.get_closest_marker(name) for name in COSTLY)
        (drop if costly else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
        config.stash[_DESELECTED] = len(drop)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add each phase's time (fixtures included) to the tier of the test's folder."""
    seconds = _TIER_SECONDS.setdefault(_TIER_OF.get(report.nodeid, "other"), [0.0, 0])
    seconds[0] += report.duration
    seconds[1] += report.when == "call"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _TIER_SECONDS:
        terminalreporter.write_line(
            "time per tier (setup, call and teardown): "
            + ", ".join(
                f"{tier} {sec / 60:.1f} min ({int(n)} tests)"
                for tier, (sec, n) in sorted(_TIER_SECONDS.items(), key=lambda kv: -kv[1][0])
            )
        )
    dropped = terminalreporter.config.stash.get(_DESELECTED, 0)
    if dropped:
        terminalreporter.write_line(
            f"{dropped} tests of the integration, e2e, platform and slow tiers deselected: "
            "run them with --all-tiers (CI) or -m, e.g. -m integration"
        )


def _tier(item: pytest.Item) -> str | None:
    """The tier folder a test lives in (``tests/<tier>/...``), or None outside them."""
    try:
        parts = item.path.resolve().relative_to(TESTS).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 1 and parts[0] in TIERS else None


# MLflow's process-wide settings, which entry points set (``tracking.configure_process``).
_MLFLOW_PROCESS_ENV = tracking.PROCESS_ENV


@pytest.fixture(autouse=True)
def _mlflow_process_env() -> Iterator[None]:
    """A test that plays an entry point (a DAG task's ``run_config``, the CLI's ``main``) sets
    MLflow's process-wide variables; put them back so that the next test, and the child
    processes it starts, never inherit another test's tracking server."""
    with _restored_env(_MLFLOW_PROCESS_ENV):
        yield


@pytest.fixture(scope="session", autouse=True)
def _local_aws_env() -> Iterator[None]:
    """Dummy credentials for the local S3 server; never real ones."""
    with _restored_env(local_services.LOCAL_S3_ENV):
        os.environ.update(local_services.LOCAL_S3_ENV)
        yield


@contextlib.contextmanager
def _restored_env(names: Iterable[str]) -> Iterator[None]:
    """Put the variables ``names`` back as they were (unset ones unset) on the way out."""
    saved = {k: os.environ.get(k) for k in names}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def service_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def s3_server(service_logs: Path) -> Iterator[local_services.Service]:
    """One moto S3 server process for the session; tests use their own buckets."""
    server = local_services.start_s3_server(service_logs)
    yield server
    server.stop()


@pytest.fixture
def cfg(s3_server: local_services.Service, tmp_path: Path) -> PipelineConfig:
    """A config pointing at a fresh bucket on the session's S3 server."""
    c = config.from_env(
        environ={},
        bucket=f"t-{uuid.uuid4().hex[:12]}",
        s3_endpoint_url=s3_server.url,
        work_dir=tmp_path / "work",
        parallelism=4,
        s3_max_attempts=2,
    )
    local_services.ensure_bucket(storage.make_client(c), c.bucket)
    return c


@pytest.fixture
def s3(cfg: PipelineConfig):  # noqa: ANN201 - a boto3 client
    return storage.make_client(cfg)


@pytest.fixture(scope="session")
def mlflow_server(
    s3_server: local_services.Service, service_logs: Path
) -> Iterator[local_services.Service]:
    """A real MLflow tracking server + registry (SQLite store, artifacts on the S3 server)."""
    s3 = storage.make_client(config.from_env(environ={}, s3_endpoint_url=s3_server.url))
    local_services.ensure_bucket(s3, "mlflow-artifacts")
    server = local_services.start_mlflow_server(
        service_logs,
        backend_store_uri=f"sqlite:///{service_logs / 'mlflow.db'}",
        artifacts_destination="s3://mlflow-artifacts/artifacts",
        s3_endpoint_url=s3_server.url,
        timeout=600,  # its start (imports, migrations) takes minutes on a loaded 2-core machine
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mlflow_process(mlflow_server: local_services.Service) -> Iterator[None]:
    """This process tracks to the session's MLflow server, set as an entry point sets it
    (restored after the module)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.setenv(name, "")
        tracking.configure_process(
            config.from_env(environ={}, mlflow_tracking_uri=mlflow_server.url)
        )
        yield
