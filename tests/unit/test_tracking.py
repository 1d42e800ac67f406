"""The MLflow contract: names, URIs, UI links, process setup; cheap to import (no mlflow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import REPO
from weather_tasks import config, tracking


def test_uris_and_the_champion_asset_follow_the_registered_model() -> None:
    assert tracking.champion_uri("wc") == "models:/wc@champion"
    assert tracking.version_uri("wc", 3) == "models:/wc/3"
    assert tracking.run_model_uri("abc") == "runs:/abc/model"
    assert tracking.champion_asset_name("wc") == "wc-champion"
    assert tracking.champion_asset_uri("wc") == "mlflow://models/wc"


@pytest.mark.parametrize(
    ("ui", "expected_base"),
    [
        (None, "http://127.0.0.1:5000"),  # the tracking server's own UI
        ("https://mlflow.example/", "https://mlflow.example"),
    ],
)
def test_ui_links_use_the_ui_url_or_the_tracking_server(ui: str | None, expected_base: str) -> None:
    cfg = config.from_env(
        environ={}, mlflow_tracking_uri="http://127.0.0.1:5000/", mlflow_ui_url=ui
    )
    assert tracking.ui_url(cfg) == expected_base
    assert tracking.run_url(cfg, "0123abcd") == f"{expected_base}/#/runs/0123abcd"
    assert tracking.ui_model_url(expected_base, "wc") == f"{expected_base}/#/models/wc"


def test_configure_process_sets_tracking_and_registry_for_this_and_child_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(name, "")  # restored after the test
    cfg = config.from_env(environ={}, mlflow_tracking_uri="http://mlflow.example:5000")
    tracking.configure_process(cfg)
    code = (
        "import json, mlflow\n"
        "print(json.dumps([mlflow.get_tracking_uri(), mlflow.get_registry_uri()]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout.splitlines()[-1]) == ["http://mlflow.example:5000"] * 2


def test_fluent_logging_is_refused_until_the_process_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://somewhere-else:5000")
    cfg = config.from_env(environ={}, mlflow_tracking_uri="http://mlflow.example:5000")
    with pytest.raises(tracking.TrackingError, match="configure_process"):
        tracking.check_process(cfg)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.mlflow_tracking_uri)
    tracking.check_process(cfg)


def test_contract_and_serving_client_import_no_heavy_libraries() -> None:
    """DAG files import tracking at parse time; serving never pulls in training."""
    code = (
        "import json, sys\n"
        "def loaded(*names): return sorted(m for m in names if m in sys.modules)\n"
        "import weather_tasks.tracking\n"
        "after_tracking = loaded('mlflow', 'tensorflow', 'keras')\n"
        "import weather_tasks.serving\n"
        "after_serving = loaded('tensorflow', 'keras', 'weather_tasks.data',\n"
        "                       'weather_tasks.train')\n"
        "print(json.dumps([after_tracking, after_serving]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=REPO,
    )
    assert json.loads(out.stdout.splitlines()[-1]) == [[], []]


def test_configure_process_bounds_mlflow_http_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in tracking.PROCESS_ENV:
        monkeypatch.delenv(name, raising=False)
    cfg = config.from_env(environ={}, mlflow_http_retries=2, mlflow_http_timeout=15)
    tracking.configure_process(cfg)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "15"


def test_an_unreachable_tracking_server_is_one_transient_line() -> None:
    import requests
    from mlflow.exceptions import MlflowException

    cfg = config.from_env(environ={}, mlflow_tracking_uri="http://127.0.0.1:9")
    for cause, says in [
        (requests.exceptions.ConnectionError("refused"), "cannot connect"),
        (requests.exceptions.ReadTimeout("slow"), "no answer within"),
    ]:
        try:
            try:
                raise cause
            except requests.exceptions.RequestException as e:  # as MLflow's REST client does
                raise MlflowException(f"API request to http://127.0.0.1:9/x failed: {e}")  # noqa: B904
        except MlflowException as exc:
            error = tracking.tracking_error(exc, cfg)
        assert error is not None and error.transient
        assert says in str(error) and "http://127.0.0.1:9" in str(error)
    other = MlflowException("RESOURCE_DOES_NOT_EXIST: no such model")
    assert tracking.tracking_error(other, cfg) is None
    assert tracking.tracking_error(ValueError("x"), cfg) is None
    with pytest.raises(MlflowException), tracking.mlflow_errors(cfg):
        raise other


@pytest.mark.parametrize(
    ("status", "body", "says", "user"),
    [
        # The bodies MLflow's basic-auth app answers (mlflow.server.auth).
        (
            401,
            "You are not authenticated. Please see https://www.mlflow.org/docs",
            "401",
            "weather-pipeline",
        ),
        (401, "You are not authenticated.", "401", None),
        (403, "Permission denied", "403", "weather-reader"),
    ],
)
def test_a_refused_account_is_one_permanent_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    body: str,
    says: str,
    user: str | None,
) -> None:
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.utils.rest_utils import verify_rest_response

    password = "s3cr3t-Pa55"
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    if user is None:
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    response = requests.models.Response()
    response.status_code, response._content = status, body.encode()
    cfg = config.from_env(environ={}, mlflow_tracking_uri="http://mlflow.example:5000")
    # What MLflow's REST client raises for the answer, translated as every stage does.
    with pytest.raises(tracking.TrackingError) as excinfo, tracking.mlflow_errors(cfg):
        verify_rest_response(response, "/api/2.0/mlflow/registered-models/alias")
    error = excinfo.value
    assert isinstance(error.__cause__, MlflowException)
    assert not error.transient  # the same credentials fail the same way: no retry
    message = str(error)
    assert says in message and "http://mlflow.example:5000" in message
    assert "\n" not in message and password not in message
    if user is None:
        assert "MLFLOW_TRACKING_USERNAME" in message
    else:
        assert user in message
