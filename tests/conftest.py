"""Shared fixtures: real service processes on 127.0.0.1 (S3 server, MLflow server)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from weather_tasks import config, local_services, storage
from weather_tasks.config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]
MWD = REPO.parent / "shared" / "datasets" / "mwd"


@pytest.fixture(scope="session", autouse=True)
def _local_aws_env() -> Iterator[None]:
    """Dummy credentials for the local S3 server; never real ones."""
    saved = {k: os.environ.get(k) for k in local_services.LOCAL_S3_ENV}
    os.environ.update(local_services.LOCAL_S3_ENV)
    yield
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
    )
    yield server
    server.stop()


def mwd_images() -> Path:
    """The real photos, or a skip that says why they are missing."""
    images = MWD / "images"
    if not images.is_dir():
        pytest.skip(f"real photos not found at {images} (../shared is absent)")
    return images
