"""Serving downstream: the pyfunc model from the registry, in process, over REST and via the CLI.

A small untrained Model 3 (32 px) is enough here: these tests check the contract (inputs,
outputs, per-image errors, preprocessing identical to training), not accuracy.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from devtools import local_services
from tests.support import REPO, mwd_images
from weather_tasks import config, model_package, serving, tracking
from weather_tasks.config import PipelineConfig

pytestmark = pytest.mark.integration

# Real photos, including the dataset's PNG and GIF files named .jpg (decoded by content).
PHOTOS = ("cloudy1.jpg", "rain11.jpg", "shine10.jpg", "sunrise10.jpg", "cloudy131.jpg",
          "rain141.jpg")


@pytest.fixture(scope="module")
def serve_cfg(mlflow_server: local_services.Service, tmp_path_factory) -> PipelineConfig:
    return config.from_env(
        environ={},
        mlflow_tracking_uri=mlflow_server.url,
        registered_model=f"wc-serve-{uuid.uuid4().hex[:8]}",
        experiment_name="test-serving",
        image_size=32,
        work_dir=tmp_path_factory.mktemp("serve-work"),
    )


@pytest.fixture(scope="module")
def mlflow_process(serve_cfg: PipelineConfig) -> Iterator[None]:
    """This process tracks to the session's MLflow server, set as an entry point sets it."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.setenv(name, "")  # restored after the module
        tracking.configure_process(serve_cfg)
        yield


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    images = mwd_images()
    return [images / name for name in PHOTOS]


@pytest.fixture(scope="module")
def champion(serve_cfg: PipelineConfig, photos: list[Path], mlflow_process: None) -> str:
    """An (untrained) Model 3 logged by model_package.log_model, registered, alias champion."""
    import keras
    import mlflow

    from weather_tasks import models

    keras.utils.set_random_seed(7)
    mlflow.set_experiment(serve_cfg.experiment_name)
    with mlflow.start_run() as run:
        uri = model_package.log_model(models.build_model_3(serve_cfg.image_size), serve_cfg,
                                      str(photos[0]))
    assert uri == f"runs:/{run.info.run_id}/model"
    mv = mlflow.register_model(uri, serve_cfg.registered_model)
    tracking.client(serve_cfg).set_registered_model_alias(
        serve_cfg.registered_model, "champion", mv.version
    )
    return tracking.champion_uri(serve_cfg.registered_model)


def _check_rows(frame: pd.DataFrame, classes: tuple[str, ...]) -> None:
    probs = frame[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    assert set(frame["label"]) <= set(classes)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert list(frame["label"]) == [classes[i] for i in probs.argmax(axis=1)]


def test_pyfunc_from_registry_takes_bytes_paths_and_reports_bad_rows(
    serve_cfg: PipelineConfig, champion: str, photos: list[Path]
) -> None:
    model = serving.load_model(champion, serve_cfg)
    schema = model.metadata.get_input_schema()
    assert schema is not None and set(schema.input_names()) == {"image", "path"}

    by_bytes = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in photos]}))
    by_path = model.predict(pd.DataFrame({"path": [str(p) for p in photos]}))
    assert list(by_bytes.columns) == ["label", *(f"prob_{c}" for c in serve_cfg.classes), "error"]
    _check_rows(by_bytes, serve_cfg.classes)
    assert by_bytes["error"].isna().all()
    # Same images, same answers, whichever way they arrive.
    pd.testing.assert_frame_equal(by_bytes, by_path)

    mixed = model.predict(
        pd.DataFrame(
            {
                "image": [photos[0].read_bytes(), b"not an image", None, None],
                "path": [None, None, str(photos[1]), "/nonexistent/x.jpg"],
            }
        )
    )
    assert mixed["error"].isna().tolist() == [True, False, True, False]
    assert "cannot identify image" in mixed.loc[1, "error"]
    assert "cannot read /nonexistent/x.jpg" in mixed.loc[3, "error"]
    assert mixed.loc[0, "label"] == by_bytes.loc[0, "label"]
    assert mixed.loc[2, "label"] == by_bytes.loc[1, "label"]
    assert np.isnan(mixed.loc[1, f"prob_{serve_cfg.classes[0]}"])


def test_models_load_from_the_configured_server_whatever_the_process_points_at(
    serve_cfg: PipelineConfig, champion: str, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_model resolves models:/ and runs:/ URIs with cfg's server, not the process's."""
    mv = tracking.client(serve_cfg).get_model_version_by_alias(
        serve_cfg.registered_model, "champion"
    )
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # the discard port: nothing answers
    for uri in (champion, tracking.version_uri(serve_cfg.registered_model, mv.version),
                tracking.run_model_uri(mv.run_id)):
        out = serving.load_model(uri, serve_cfg).predict(pd.DataFrame({"path": [str(photos[0])]}))
        _check_rows(out, serve_cfg.classes)


def test_serving_preprocessing_matches_training_pipeline(
    serve_cfg: PipelineConfig, champion: str, photos: list[Path]
) -> None:
    """No train/serve skew: the pyfunc's resize + rescale equals weather_tasks.data's."""
    from weather_tasks import data

    wrapper = serving.load_model(champion, serve_cfg).unwrap_python_model()
    for path in photos:
        served = wrapper._preprocess(path.read_bytes())
        trained = data.load_resized_uint8(str(path), serve_cfg.image_size).numpy() / 255.0
        assert served.shape == trained.shape == (32, 32, 3)
        # JPEG decoders may differ by a rounding step; anything more would be skew.
        assert np.abs(served - trained).max() <= 2 / 255 + 1e-6, path.name


@pytest.fixture(scope="module")
def rest_server(
    serve_cfg: PipelineConfig, champion: str, mlflow_server: local_services.Service,
    tmp_path_factory,
) -> Iterator[str]:
    """``mlflow models serve -m models:/<name>@champion --env-manager local`` as a process."""
    server = local_services.start_model_server(
        tmp_path_factory.mktemp("serve"), champion, mlflow_server.url, timeout=180
    )
    try:
        yield server.url
    finally:
        server.stop()


def _post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(
        url + "/invocations", data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def test_rest_invocations_with_real_photos(
    rest_server: str, serve_cfg: PipelineConfig, photos: list[Path]
) -> None:
    b64 = [base64.b64encode(p.read_bytes()).decode("ascii") for p in photos]
    split = _post(rest_server, {"dataframe_split": {"columns": ["image"],
                                                    "data": [[x] for x in b64]}})
    records = _post(rest_server, {"dataframe_records": [{"image": x} for x in b64]})
    for answer in (split, records):
        frame = pd.DataFrame(answer["predictions"])
        assert len(frame) == len(photos)
        _check_rows(frame, serve_cfg.classes)
        assert frame["error"].isna().all()
    assert [r["label"] for r in split["predictions"]] == [
        r["label"] for r in records["predictions"]
    ]

    bad = _post(rest_server, {"dataframe_split": {
        "columns": ["image"],
        "data": [[b64[0]], [base64.b64encode(b"garbage").decode()]],
    }})["predictions"]
    assert bad[0]["label"] in serve_cfg.classes and not bad[0].get("error")
    assert bad[1]["label"] is None and "cannot identify image" in bad[1]["error"]


def test_weather_predict_cli_good_and_bad_image(
    serve_cfg: PipelineConfig, champion: str, photos: list[Path], tmp_path: Path,
    mlflow_server: local_services.Service,
) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(photos[0].read_bytes()[:200])  # a truncated JPEG
    env = {
        **os.environ,
        "WEATHER_MLFLOW_TRACKING_URI": mlflow_server.url,
        "WEATHER_REGISTERED_MODEL": serve_cfg.registered_model,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "weather_tasks.cli", "predict", "--json",
         str(photos[0]), str(bad)],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]  # one image failed: exit 1, all printed
    out = json.loads(proc.stdout)
    assert out["model_uri"] == champion
    assert (out["n_ok"], out["n_error"]) == (1, 1)
    good, broken = out["predictions"]
    assert good["label"] in serve_cfg.classes and good["error"] is None
    assert sum(good["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert broken["label"] is None and broken["error"]
