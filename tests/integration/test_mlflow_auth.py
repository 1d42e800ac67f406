"""MLflow's basic auth: only the pipeline's account writes the registry; serving reads with a
read-only account, and a refused account is one permanent line, never a password.

One MLflow server of this module's own behind MLflow's basic-auth app (``devtools``'
``start_mlflow_server(auth=...)``: the pipeline's account is the admin, the reader has the
default permission, READ), artifacts on the session's S3 server. A tiny Keras model is logged
by the pipeline's account and registered twice, @champion on the first version, so that a
refused move has a version to go to.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from devtools import local_services
from tests.support import mwd_images
from weather_tasks import config, model_package, serving, storage, tracking
from weather_tasks.config import PipelineConfig

pytestmark = pytest.mark.integration

WEATHER = str(Path(sys.executable).with_name("weather"))
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@pytest.fixture(scope="module")
def accounts() -> local_services.MlflowAccounts:
    return local_services.MlflowAccounts(
        pipeline_username="weather-pipeline",
        pipeline_password=secrets.token_urlsafe(18),
        reader_username="weather-serving",
        reader_password=secrets.token_urlsafe(18),
    )


@pytest.fixture(scope="module")
def auth_server(
    s3_server: local_services.Service,
    accounts: local_services.MlflowAccounts,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[local_services.Service]:
    """An MLflow server behind basic auth (its stores and log in a folder of its own)."""
    log_dir = tmp_path_factory.mktemp("mlflow-auth")
    s3 = storage.make_client(config.from_env(environ={}, s3_endpoint_url=s3_server.url))
    local_services.ensure_bucket(s3, "mlflow-auth-artifacts")
    server = local_services.start_mlflow_server(
        log_dir,
        backend_store_uri=f"sqlite:///{log_dir / 'mlflow.db'}",
        artifacts_destination="s3://mlflow-auth-artifacts/artifacts",
        s3_endpoint_url=s3_server.url,
        timeout=600,  # as the session's server: minutes on a loaded 2-core machine
        auth=accounts,
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def auth_cfg(
    s3_server: local_services.Service,
    auth_server: local_services.Service,
    tmp_path_factory: pytest.TempPathFactory,
) -> PipelineConfig:
    c = config.from_env(
        environ={},
        bucket=f"t-{uuid.uuid4().hex[:12]}",
        s3_endpoint_url=s3_server.url,
        mlflow_tracking_uri=auth_server.url,
        mlflow_http_retries=1,
        mlflow_http_timeout=30,
        registered_model=f"wc-auth-{uuid.uuid4().hex[:8]}",
        experiment_name="test-mlflow-auth",
        image_size=32,
        work_dir=tmp_path_factory.mktemp("auth-work"),
    )
    local_services.ensure_bucket(storage.make_client(c), c.bucket)
    return c


@pytest.fixture(scope="module")
def versions(auth_cfg: PipelineConfig, accounts: local_services.MlflowAccounts) -> list[str]:
    """Two versions of one tiny model, registered by the pipeline's account; @champion on v1."""
    import keras

    with pytest.MonkeyPatch.context() as mp:
        for name in tracking.PROCESS_ENV:
            mp.setenv(name, "")  # restored on the way out, as the mlflow_process fixture does
        for name, value in accounts.pipeline_env().items():
            mp.setenv(name, value)
        tracking.configure_process(auth_cfg)
        mlflow.set_experiment(auth_cfg.experiment_name)
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [
                keras.Input((32, 32, 3)),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(len(auth_cfg.classes), activation="softmax"),
            ]
        )
        with mlflow.start_run():
            uri = model_package.log_model(model, auth_cfg, str(_photo()))
        out = [str(mlflow.register_model(uri, auth_cfg.registered_model).version) for _ in range(2)]
        tracking.client(auth_cfg).set_registered_model_alias(
            auth_cfg.registered_model, tracking.CHAMPION, out[0]
        )
    return out


def _photo() -> Path:
    return mwd_images() / "cloudy1.jpg"


def _log_in(monkeypatch: pytest.MonkeyPatch, credentials: dict[str, str]) -> None:
    """This process's MLflow clients use ``credentials`` (none: anonymous) from now on."""
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)


def _aliases(cfg: PipelineConfig) -> dict[str, str]:
    model = tracking.client(cfg).get_registered_model(cfg.registered_model)
    return {alias: str(version) for alias, version in model.aliases.items()}


def _version_numbers(cfg: PipelineConfig) -> list[str]:
    found = tracking.client(cfg).search_model_versions(f"name = '{cfg.registered_model}'")
    return sorted((str(v.version) for v in found), key=int)


def _assert_refused(exc: MlflowException, status: int, cfg: PipelineConfig) -> str:
    """``exc`` is the server's ``status``; the pipeline's error for it is one permanent line."""
    assert exc.get_http_status_code() == status, exc
    error = tracking.tracking_error(exc, cfg)
    assert error is not None and not error.transient
    message = str(error)
    assert "\n" not in message and f"MLflow tracking server {cfg.mlflow_tracking_uri}" in message
    assert f"refused the request ({status} " in message
    return message


def test_without_credentials_nothing_is_moved(
    auth_cfg: PipelineConfig,
    versions: list[str],
    accounts: local_services.MlflowAccounts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = auth_cfg.registered_model
    _log_in(monkeypatch, {})
    with pytest.raises(MlflowException) as refused:
        tracking.client(auth_cfg).set_registered_model_alias(name, tracking.CHAMPION, versions[1])
    message = _assert_refused(refused.value, 401, auth_cfg)
    assert "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in message

    _log_in(monkeypatch, accounts.pipeline_env())
    assert _aliases(auth_cfg) == {tracking.CHAMPION: versions[0]}


def test_the_reader_cannot_register_or_move_aliases(
    auth_cfg: PipelineConfig,
    versions: list[str],
    accounts: local_services.MlflowAccounts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, client = auth_cfg.registered_model, tracking.client(auth_cfg)
    _log_in(monkeypatch, accounts.reader_env())
    v1 = client.get_model_version(name, versions[0])  # reading is allowed
    attempts = {
        "move @champion": lambda: client.set_registered_model_alias(
            name, tracking.CHAMPION, versions[1]
        ),
        "delete @champion": lambda: client.delete_registered_model_alias(name, tracking.CHAMPION),
        "register a version": lambda: client.create_model_version(name, v1.source, v1.run_id),
    }
    for what, attempt in attempts.items():
        with pytest.raises(MlflowException) as refused:
            attempt()
        message = _assert_refused(refused.value, 403, auth_cfg)
        assert repr(accounts.reader_username) in message, what

    _log_in(monkeypatch, accounts.pipeline_env())
    assert _aliases(auth_cfg) == {tracking.CHAMPION: versions[0]}
    assert _version_numbers(auth_cfg) == versions


def test_the_reader_loads_the_champion(
    auth_cfg: PipelineConfig,
    versions: list[str],
    accounts: local_services.MlflowAccounts,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    name, client = auth_cfg.registered_model, tracking.client(auth_cfg)
    _log_in(monkeypatch, accounts.reader_env())
    champion = client.get_model_version_by_alias(name, tracking.CHAMPION)
    assert str(champion.version) == versions[0]

    model = serving.load_model(tracking.champion_uri(name), auth_cfg)
    frame = serving.predictions_frame(model, [_photo()])
    assert frame["error_code"].tolist() == [None]
    assert frame["label"][0] in auth_cfg.classes

    files = client.get_model_version_download_uri(name, champion.version)
    mlmodel = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{files}/MLmodel",
        dst_path=str(tmp_path),
        tracking_uri=auth_cfg.mlflow_tracking_uri,
    )
    assert "python_function" in Path(mlmodel).read_text()


def _cli_env(cfg: PipelineConfig, credentials: dict[str, str]) -> dict[str, str]:
    """The `weather` command's environment for ``cfg`` with ``credentials``."""
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIALS}
    return (
        env
        | credentials
        | {
            "WEATHER_BUCKET": cfg.bucket,
            "WEATHER_S3_ENDPOINT_URL": str(cfg.s3_endpoint_url),
            "WEATHER_MLFLOW_TRACKING_URI": cfg.mlflow_tracking_uri,
            "WEATHER_REGISTERED_MODEL": cfg.registered_model,
        }
    )


@pytest.mark.parametrize(("account", "status"), [("wrong password", 401), ("reader", 403)])
def test_a_refused_command_is_one_line_without_the_password(
    auth_cfg: PipelineConfig,
    versions: list[str],
    accounts: local_services.MlflowAccounts,
    monkeypatch: pytest.MonkeyPatch,
    account: str,
    status: int,
) -> None:
    """The pipeline's account with a wrong password reads the status; the reader rolls back."""
    if account == "reader":
        credentials, args = accounts.reader_env(), ["rollback", "--to", versions[1]]
    else:
        credentials = {
            "MLFLOW_TRACKING_USERNAME": accounts.pipeline_username,
            "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(18),
        }
        args = ["status"]
    started = time.monotonic()
    out = subprocess.run(
        [WEATHER, *args],
        env=_cli_env(auth_cfg, credentials),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    seconds = time.monotonic() - started
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    line = lines[0]
    assert line.startswith(
        f"weather {args[0]}: error: MLflow tracking server "
        f"{auth_cfg.mlflow_tracking_uri}: refused the request ({status} "
    ), line
    assert credentials["MLFLOW_TRACKING_USERNAME"] in line
    assert credentials["MLFLOW_TRACKING_PASSWORD"] not in out.stdout + out.stderr
    print(f"\nweather {' '.join(args)} as {account}: {seconds:.1f} s: {line}")

    _log_in(monkeypatch, accounts.pipeline_env())
    assert _aliases(auth_cfg) == {tracking.CHAMPION: versions[0]}  # no alias moved or added


def _request(url: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()


def test_weather_serve_follows_the_champion_with_the_reader_account(
    auth_cfg: PipelineConfig,
    versions: list[str],
    accounts: local_services.MlflowAccounts,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    port = local_services.free_port()
    url = f"http://127.0.0.1:{port}"
    env = _cli_env(auth_cfg, accounts.reader_env()) | {
        "WEATHER_SERVE_POLL_SECONDS": "1",
        "WEATHER_SERVE_LOG_SAMPLE": "0",
    }
    body = json.dumps(
        {
            "dataframe_split": {
                "columns": ["image"],
                "data": [[base64.b64encode(_photo().read_bytes()).decode()]],
            }
        }
    ).encode()
    _log_in(monkeypatch, accounts.pipeline_env())  # this process moves the alias; `env` wins
    server = local_services.start_process(
        "weather-serve", [WEATHER, "serve", "--port", str(port)], tmp_path, env, url
    )
    try:
        local_services.wait_http(f"{url}/ping", [server], timeout=300)
        status, headers, raw = _request(f"{url}/invocations", body)
        assert status == 200 and headers["x-model-version"] == versions[0]
        assert json.loads(raw)["predictions"][0]["error_code"] is None

        tracking.client(auth_cfg).set_registered_model_alias(
            auth_cfg.registered_model, tracking.CHAMPION, versions[1]
        )
        deadline = time.monotonic() + 120
        while json.loads(_request(f"{url}/version")[2])["version"] != versions[1]:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.5)
        status, headers, _ = _request(f"{url}/invocations", body)
        assert status == 200 and headers["x-model-version"] == versions[1]
    finally:
        server.stop()
        tracking.client(auth_cfg).set_registered_model_alias(
            auth_cfg.registered_model, tracking.CHAMPION, versions[0]
        )
    assert accounts.reader_password not in server.log_path.read_text(errors="replace")


def test_no_password_reaches_mlflow_or_the_server_log(
    auth_cfg: PipelineConfig,
    versions: list[str],
    accounts: local_services.MlflowAccounts,
    auth_server: local_services.Service,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    passwords = (accounts.pipeline_password, accounts.reader_password)
    _log_in(monkeypatch, accounts.pipeline_env())
    client = tracking.client(auth_cfg)
    mv = client.get_model_version(auth_cfg.registered_model, versions[0])
    run = client.get_run(mv.run_id)
    recorded = json.dumps([run.data.params, run.data.tags, mv.tags, mv.source])
    assert run.data.tags and not any(p in recorded for p in passwords)
    server_log = auth_server.log_path.read_text(errors="replace")
    assert "POST /api/2.0/mlflow/registered-models/alias" in server_log  # requests are logged
    assert not any(p in server_log for p in passwords)


def test_before_the_first_version_the_reader_needs_the_model_to_exist(
    auth_cfg: PipelineConfig, accounts: local_services.MlflowAccounts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLflow's auth refuses a non-admin account any read of a model that does not exist (403,
    not 404): the reader's endpoint stops in one line saying so. That is why compose's
    mlflow-init creates the registered model; once it exists, empty, the reader's endpoint
    starts and answers 503 until a champion comes."""
    from weather_tasks import endpoint

    cfg = config.override(auth_cfg, registered_model=f"wc-empty-{uuid.uuid4().hex[:8]}")
    _log_in(monkeypatch, accounts.reader_env())
    with pytest.raises(tracking.TrackingError) as refused, tracking.mlflow_errors(cfg):
        endpoint.Endpoint(cfg)
    message = str(refused.value)
    assert "403" in message and "does not exist yet" in message and "\n" not in message
    assert not refused.value.transient

    _log_in(monkeypatch, accounts.pipeline_env())
    tracking.client(cfg).create_registered_model(cfg.registered_model)
    _log_in(monkeypatch, accounts.reader_env())
    waiting = endpoint.Endpoint(cfg)
    assert waiting.served is None and waiting.status().version is None
    with pytest.raises(endpoint.RequestError) as unavailable:
        waiting.invoke(b'{"inputs": ["x"]}', "application/json")
    assert unavailable.value.status == 503
    assert not waiting.poll_once() and waiting.last_poll_error is None
