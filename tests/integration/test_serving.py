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
import urllib.error
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


def test_pyfunc_from_registry_takes_image_bytes_only_and_reports_bad_rows(
    serve_cfg: PipelineConfig, champion: str, photos: list[Path]
) -> None:
    from mlflow.exceptions import MlflowException

    model = serving.load_model(champion, serve_cfg)
    schema = model.metadata.get_input_schema()
    assert schema is not None and schema.input_names() == ["image"]
    assert schema.required_input_names() == ["image"]
    outputs = model.metadata.get_output_schema()
    assert outputs is not None and outputs.input_names()[-2:] == ["error", "error_code"]

    by_bytes = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in photos]}))
    assert list(by_bytes.columns) == [
        "label", *(f"prob_{c}" for c in serve_cfg.classes), "error", "error_code"
    ]
    _check_rows(by_bytes, serve_cfg.classes)
    assert by_bytes["error"].isna().all() and by_bytes["error_code"].isna().all()
    # In-process callers read their files and send bytes: same images, same answers.
    pd.testing.assert_frame_equal(serving.predictions_frame(model, photos), by_bytes)

    mixed = model.predict(
        pd.DataFrame({"image": [photos[0].read_bytes(), b"not an image", None, b"",
                                photos[1].read_bytes()]})
    )
    assert mixed["error_code"].tolist() == [None, "undecodable", "empty", "empty", None]
    assert "cannot identify image" in mixed.loc[1, "error"]
    assert mixed.loc[0, "label"] == by_bytes.loc[0, "label"]
    assert mixed.loc[4, "label"] == by_bytes.loc[1, "label"]
    assert mixed.loc[1, "label"] is None and mixed.loc[1, f"prob_{serve_cfg.classes[0]}"] is None

    # The model reads no files: a path column is refused as a whole, never opened.
    for frame in (pd.DataFrame({"path": [str(photos[0])]}),
                  pd.DataFrame({"path": ["/nonexistent/x.jpg"]})):
        with pytest.raises(MlflowException, match="missing inputs"):
            model.predict(frame)


def test_in_process_predict_files_reports_a_missing_file_as_its_own_error(
    serve_cfg: PipelineConfig, champion: str, photos: list[Path], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.jpg"
    report = serving.predict_files(champion, [photos[0], missing, tmp_path, photos[1]],
                                   serve_cfg)
    first, gone, folder, last = report.predictions
    assert first.label in serve_cfg.classes and first.error is None
    assert last.label in serve_cfg.classes and last.error is None
    for failed, path, why in ((gone, missing, "no such file or directory"),
                              (folder, tmp_path, "is a directory")):
        assert failed.path == str(path) and failed.label is None and failed.probabilities is None
        assert (failed.error_code, failed.error) == (serving.UNREADABLE, why)
    assert report.failed and report.as_dict()["n_error"] == 2

    # A file gone between the check and the read: still its own row, with the model's columns.
    model = serving.load_model(champion, serve_cfg)
    none_read = serving.predictions_frame(model, [missing])
    assert none_read["error_code"].tolist() == ["unreadable"]
    assert f"prob_{serve_cfg.classes[0]}" in none_read.columns


def test_predict_files_names_the_version_that_answered(
    serve_cfg: PipelineConfig, champion: str, photos: list[Path]
) -> None:
    version = tracking.alias_version(tracking.client(serve_cfg), serve_cfg.registered_model,
                                     "champion")
    pinned = tracking.version_uri(serve_cfg.registered_model, str(version))
    assert serving.resolve_model_uri(champion, serve_cfg) == pinned
    report = serving.predict_files(champion, [photos[0]], serve_cfg)
    assert (report.requested_model_uri, report.model_uri) == (champion, pinned)
    assert report.summary().splitlines()[0] == f"model: {pinned} ({champion})"
    assert serving.predict_files(pinned, [photos[0]], serve_cfg).model_uri == pinned


def test_an_alias_nobody_holds_is_one_line(serve_cfg: PipelineConfig, champion: str) -> None:
    uri = f"models:/{serve_cfg.registered_model}@nobody"
    with pytest.raises(serving.ServingError, match=f"^{uri}: no version of .* has alias "
                       "'nobody' on http://127.0.0.1:[0-9]+ .*weather status") as caught:
        serving.resolve_model_uri(uri, serve_cfg)
    assert "\n" not in str(caught.value)


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
        out = serving.load_model(uri, serve_cfg).predict(
            pd.DataFrame({"image": [photos[0].read_bytes()]})
        )
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


def _strict_json(body: bytes) -> dict:
    """Parse as a strict JSON parser does (JavaScript's JSON.parse): NaN/Infinity are errors."""
    def reject(token: str) -> None:
        raise ValueError(f"not valid JSON: {token}")

    return json.loads(body, parse_constant=reject)


def _post_raw(url: str, payload: dict) -> tuple[int, dict]:
    """(HTTP status, strictly parsed JSON body) of a POST to /invocations, 4xx/5xx included."""
    req = urllib.request.Request(
        url + "/invocations", data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, _strict_json(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, _strict_json(err.read())


def _post(url: str, payload: dict) -> dict:
    status, body = _post_raw(url, payload)
    assert status == 200, body
    return body


def _split(columns: list[str], rows: list[list]) -> dict:
    return {"dataframe_split": {"columns": columns, "data": rows}}


def test_rest_invocations_with_real_photos(
    rest_server: str, serve_cfg: PipelineConfig, photos: list[Path]
) -> None:
    b64 = [base64.b64encode(p.read_bytes()).decode("ascii") for p in photos]
    split = _post(rest_server, _split(["image"], [[x] for x in b64]))
    records = _post(rest_server, {"dataframe_records": [{"image": x} for x in b64]})
    for answer in (split, records):
        frame = pd.DataFrame(answer["predictions"])
        assert len(frame) == len(photos)
        _check_rows(frame, serve_cfg.classes)
        assert frame["error"].isna().all() and frame["error_code"].isna().all()
    assert [r["label"] for r in split["predictions"]] == [
        r["label"] for r in records["predictions"]
    ]


def test_rest_bad_image_is_a_row_with_null_probabilities_and_an_error_code(
    rest_server: str, serve_cfg: PipelineConfig, photos: list[Path]
) -> None:
    """200 for the batch; the bad rows carry JSON null (not NaN, which _post_raw rejects)."""
    good = base64.b64encode(photos[0].read_bytes()).decode()
    ok, garbage, empty = _post(rest_server, _split(
        ["image"], [[good], [base64.b64encode(b"garbage").decode()], [""]]
    ))["predictions"]
    assert ok["label"] in serve_cfg.classes and ok["error"] is None and ok["error_code"] is None
    for row, code in ((garbage, "undecodable"), (empty, "empty")):
        assert row["error_code"] == code and row["error"]
        assert row["label"] is None
        assert all(row[f"prob_{c}"] is None for c in serve_cfg.classes)
    assert "cannot identify image" in garbage["error"]


def test_rest_refuses_a_path_column_without_reading_the_file(
    rest_server: str, photos: list[Path], tmp_path: Path
) -> None:
    """A client cannot make the server read, or probe, its files: every path gets one answer."""
    unreadable = tmp_path / "unreadable.jpg"
    unreadable.write_bytes(photos[0].read_bytes())
    unreadable.chmod(0)
    probes = [str(photos[0]), str(unreadable), str(tmp_path), "/nonexistent/x.jpg",
              "/etc/shadow", "/root"]
    answers = []
    for path in probes:
        status, body = _post_raw(rest_server, _split(["path"], [[path]]))
        assert 400 <= status < 500, (path, status, body)
        assert "missing inputs ['image']" in body["message"]
        answers.append((status, body["error_code"]))
    assert len(set(answers)) == 1, answers

    # Beside an image, the path is dropped by the signature before the model: the answer is
    # the image's (undecodable garbage here, though the path names a good photo) whatever it is.
    garbage = base64.b64encode(b"garbage").decode()
    alone = _post(rest_server, _split(["image"], [[garbage]]))
    for path in probes:
        assert _post(rest_server, _split(["image", "path"], [[garbage, path]])) == alone
    assert alone["predictions"][0]["error_code"] == "undecodable"


@pytest.mark.parametrize(
    "payload",
    [
        _split(["img"], [["aGVsbG8="]]),  # no image column
        {"dataframe_split": {"columns": [], "data": []}},
        {"rows": [{"image": "aGVsbG8="}]},  # not an MLflow input format
        # MLflow's parser base64-decodes the binary column before the model: a value it cannot
        # decode fails the request, not a row.
        _split(["image"], [["aGVsbG8="], [None]]),
        _split(["image"], [["abc"]]),  # bad base64 padding
        _split(["image"], [[12345]]),
    ],
)
def test_rest_malformed_request_is_a_4xx(rest_server: str, payload: dict) -> None:
    status, body = _post_raw(rest_server, payload)
    assert 400 <= status < 500 and body["error_code"] in {"BAD_REQUEST",
                                                          "INVALID_PARAMETER_VALUE"}, body


def test_weather_predict_cli_good_and_bad_image(
    serve_cfg: PipelineConfig, champion: str, photos: list[Path], tmp_path: Path,
    mlflow_server: local_services.Service,
) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(photos[0].read_bytes()[:200])  # a truncated JPEG
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    env = {
        **os.environ,
        "WEATHER_MLFLOW_TRACKING_URI": mlflow_server.url,
        "WEATHER_REGISTERED_MODEL": serve_cfg.registered_model,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "weather_tasks.cli", "predict", "--json",
         str(photos[0]), str(bad), str(text)],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]  # two files failed: exit 1, all printed
    assert proc.stderr == ""  # quiet by default: no TensorFlow or MLflow chatter
    out = json.loads(proc.stdout)
    version = tracking.alias_version(tracking.client(serve_cfg), serve_cfg.registered_model,
                                     "champion")
    assert out["requested_model_uri"] == champion
    assert out["model_uri"] == tracking.version_uri(serve_cfg.registered_model, str(version))
    assert (out["n_ok"], out["n_error"]) == (1, 2)
    good, broken, notes = out["predictions"]
    assert good["label"] in serve_cfg.classes and good["error"] is None
    assert sum(good["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    # Checked as ingest checks an object, before the model: ingest's reason codes.
    assert broken["label"] is None and broken["error_code"] == "undecodable"
    assert broken["error"] == "OSError: Truncated File Read"  # no buffer address in it
    assert broken["probabilities"] is None
    assert (notes["error_code"], notes["error"]) == (
        "not_an_image", "content is not a recognised image format"
    )
