"""The MLflow contract: names, URIs, UI links, process setup; cheap to import (no mlflow)."""

from __future__ import annotations

import json
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
    cfg = config.from_env(environ={}, mlflow_tracking_uri="http://127.0.0.1:5000/",
                          mlflow_ui_url=ui)
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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120, cwd=REPO)
    assert json.loads(out.stdout.splitlines()[-1]) == [[], []]
