"""The pyfunc model's input and output handling (no services): which bytes each row means,
which requests are malformed as a whole, what a failed row looks like as JSON, the test-time
flip (with a tiny Keras model that sees the flip) and the calibration temperature."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server

from tests.support.keras_models import flip_sensitive_model
from weather_tasks import calibration, config, recipe, serving_model


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"raw", b"raw"),
        (bytearray(b"raw"), b"raw"),
        (memoryview(b"raw"), b"raw"),
        (np.frombuffer(b"raw", dtype=np.uint8), b"raw"),
        (base64.b64encode(b"b64").decode(), b"b64"),
    ],
)
def test_a_row_takes_image_bytes_or_base64_text(value: Any, expected: bytes) -> None:
    assert serving_model.image_bytes(value) == expected


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, serving_model.EMPTY),
        (math.nan, serving_model.EMPTY),
        (pd.NA, serving_model.EMPTY),
        (b"", serving_model.EMPTY),
        ("", serving_model.EMPTY),
        (12345, serving_model.NOT_BYTES),
        (1.5, serving_model.NOT_BYTES),
        (["/etc/passwd"], serving_model.NOT_BYTES),
        ("/etc/shadow", serving_model.NOT_BYTES),  # text is base64, never a path to open
    ],
)
def test_a_row_without_image_bytes_is_a_row_error_with_a_stable_code(
    value: Any, code: str
) -> None:
    with pytest.raises(serving_model.RowError) as info:
        serving_model.image_bytes(value)
    assert info.value.code == code and info.value.code in serving_model.ERROR_CODES


@pytest.mark.parametrize(
    "model_input",
    [
        pd.DataFrame({"path": ["/etc/shadow"]}),
        pd.DataFrame({"image": [b"x"], "path": ["/etc/shadow"]}),
        pd.DataFrame({"img": [b"x"]}),
        pd.DataFrame(),
        {"path": ["/etc/shadow"]},
        ["/etc/shadow"],
        "/etc/shadow",
    ],
)
def test_anything_but_one_image_column_is_a_malformed_request(model_input: Any) -> None:
    """Rejected as a whole with the exception the scoring server answers with 400."""
    with pytest.raises(MlflowException, match="'image'") as info:
        serving_model._image_column(model_input)
    assert info.value.get_http_status_code() == 400


def test_one_image_column_gives_its_values_in_order() -> None:
    assert serving_model._image_column({"image": [b"a", None]}) == [b"a", None]


def _strict_json(body: str) -> Any:
    def reject(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(body, parse_constant=reject)


def test_a_failed_row_serializes_as_json_null_with_its_code() -> None:
    """The scoring server's own serializer: no NaN token, null label and probabilities."""
    frame = serving_model.result_frame(
        ["shine", "rain"],
        ["rain", None, None],
        [[0.25, 0.75], None, None],
        [None, "cannot identify image file", "the model returned non-finite probabilities"],
        [None, serving_model.UNDECODABLE, serving_model.NON_FINITE],
    )
    assert list(frame.columns) == ["label", "prob_shine", "prob_rain", "error", "error_code"]
    out = io.StringIO()
    scoring_server.predictions_to_json(frame, out)
    ok, bad, diverged = _strict_json(out.getvalue())["predictions"]
    assert ok == {"label": "rain", "prob_shine": 0.25, "prob_rain": 0.75, "error": None,
                  "error_code": None}
    assert bad == {"label": None, "prob_shine": None, "prob_rain": None,
                   "error": "cannot identify image file", "error_code": "undecodable"}
    assert diverged["error_code"] == "non_finite" and diverged["prob_rain"] is None


def test_failed_rows_read_as_nan_probabilities_in_process() -> None:
    """What evaluate relies on: None probabilities become a NaN row (counted as wrong)."""
    frame = serving_model.result_frame(["a", "b"], ["a", None], [[0.9, 0.1], None],
                                       [None, "x"], [None, serving_model.EMPTY])
    probs = frame[["prob_a", "prob_b"]].to_numpy(dtype=np.float64, na_value=np.nan)
    assert probs[0].tolist() == [0.9, 0.1] and np.isnan(probs[1]).all()


def test_an_undecodable_image_has_a_stable_message() -> None:
    """Same bytes, same answer: no memory address of the server's buffer in the message."""
    from PIL import Image, UnidentifiedImageError

    messages = set()
    for _ in range(2):
        with pytest.raises(UnidentifiedImageError) as info:
            Image.open(io.BytesIO(b"garbage"))
        messages.add(serving_model._decode_error(info.value))
    (message,) = messages
    assert message.startswith("UnidentifiedImageError: cannot identify image file")
    assert "0x" not in message


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _served(tmp_path: Path, **config: Any) -> serving_model.WeatherClassifier:
    """The pyfunc wrapper around :func:`flip_sensitive_model` (8 px, classes left/right)."""
    path = tmp_path / "model.keras"
    if not path.exists():
        flip_sensitive_model(8).save(path)
    served = serving_model.WeatherClassifier()
    served.load_context(SimpleNamespace(
        model_config={"classes": ["left", "right"], "image_size": 8, **config},
        artifacts={"keras_model": str(path)},
    ))
    return served


def _pixels(n: int = 3) -> np.ndarray:
    return np.random.default_rng(2).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def _served_probs(served: serving_model.WeatherClassifier, pixels: np.ndarray) -> np.ndarray:
    out = served.predict(None, pd.DataFrame({"image": [_png(p) for p in pixels]}))
    assert out["error"].isna().all()
    assert list(out["label"]) == [["left", "right"][i] for i in
                                  out[["prob_left", "prob_right"]].to_numpy(float).argmax(1)]
    return out[["prob_left", "prob_right"]].to_numpy(dtype=np.float64)


@pytest.mark.parametrize(
    ("tta_flip", "temperature"), [(False, None), (True, None), (False, 2.5), (True, 0.6)]
)
def test_the_served_model_predicts_as_training_with_flip_and_temperature(
    tmp_path: Path, tta_flip: bool, temperature: float | None
) -> None:
    """No train/serve skew: the pyfunc's probabilities are the training side's
    ``recipe.predict_probabilities`` scaled by ``calibration.apply_temperature`` (which training
    fits and logs with the model); without the key the model is served as before (T = 1)."""
    extra = {} if temperature is None else {"temperature": temperature}
    served = _served(tmp_path, tta_flip=tta_flip, **extra)
    pixels = _pixels()
    mirror = np.ascontiguousarray(pixels[:1, :, ::-1])
    probs = _served_probs(served, np.concatenate([pixels, mirror]))

    # The training side's prediction of the same (already 8 px) images agrees.
    cfg = config.from_env(environ={}, tta_flip=tta_flip)
    dataset = tf.data.Dataset.from_tensor_slices(
        (pixels.astype(np.float32) / 255, np.zeros((3, 2), np.float32))).batch(3)
    keras_model = keras.models.load_model(tmp_path / "model.keras")
    trained = calibration.apply_temperature(
        recipe.predict_probabilities(keras_model, dataset, cfg), temperature or 1.0)
    np.testing.assert_allclose(probs[:3], trained, rtol=1e-5)
    # An image and its mirror get one answer exactly when the flip is averaged in.
    assert np.allclose(probs[0], probs[3]) is tta_flip


def test_a_temperature_above_one_softens_the_served_probabilities_and_keeps_the_labels(
    tmp_path: Path,
) -> None:
    pixels = _pixels(6)
    outs = {}
    for temperature in (1.0, 2.0):
        served = _served(tmp_path, temperature=temperature)
        out = served.predict(None, pd.DataFrame({"image": [_png(p) for p in pixels]}))
        outs[temperature] = out
    plain = outs[1.0][["prob_left", "prob_right"]].to_numpy(dtype=np.float64)
    soft = outs[2.0][["prob_left", "prob_right"]].to_numpy(dtype=np.float64)
    assert list(outs[2.0]["label"]) == list(outs[1.0]["label"])
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-9)
    assert (soft.max(axis=1) < plain.max(axis=1)).all()
    assert (soft.max(axis=1) > 0.5).all()  # softer, not flipped
    # T = 2 on two classes: the odds become their square root.
    np.testing.assert_allclose(soft[:, 0] / soft[:, 1], np.sqrt(plain[:, 0] / plain[:, 1]),
                               rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7, 4.0])
def test_the_served_temperature_is_training_s_and_keeps_bad_rows_nan(temperature: float) -> None:
    """serving_model may import nothing from weather_tasks: its copy of apply_temperature must
    agree with calibration's on good rows, and leave a NaN or infinite row all NaN (reported as
    ``non_finite``, never a confident answer)."""
    probs = np.random.default_rng(4).dirichlet(np.ones(4) * 0.3, size=50)
    probs[3, 0] = 0.0  # a zero probability: clipped the same way on both sides
    np.testing.assert_allclose(serving_model.apply_temperature(probs, temperature),
                               calibration.apply_temperature(probs, temperature), atol=1e-12)
    bad = np.array([[np.nan, 0.5, 0.25, 0.25], [np.inf, 0.0, 0.0, 0.0]])
    out = serving_model.apply_temperature(bad, temperature)
    assert not np.isfinite(out).all(axis=1).any()  # what predict checks per row
    if temperature != 1.0:
        assert np.isnan(out).all()


def test_a_nan_model_output_is_a_non_finite_row_with_a_temperature(tmp_path: Path) -> None:
    served = _served(tmp_path, temperature=2.0)
    served._model.set_weights([np.full_like(w, np.nan) for w in served._model.get_weights()])
    out = served.predict(None, pd.DataFrame({"image": [_png(_pixels(1)[0])]}))
    assert out["error_code"][0] == serving_model.NON_FINITE and out["prob_left"][0] is None
