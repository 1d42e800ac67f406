"""The MLflow pyfunc model that downstream services load: image bytes in, label + probabilities out.

This file is logged with every model as MLflow "model from code": MLflow copies it into the
model directory and executes it at load time, so a consumer needs only mlflow and the model's
own requirements (keras + its backend, pillow, numpy, pandas), never ``weather_tasks``. That is
why it imports nothing from this package and keeps Keras lazy (inside ``load_context``).

Input: a DataFrame with one column, ``image``: raw image bytes (the REST scoring server decodes
the base64 that JSON carries; base64 text is also accepted in process). The model reads no
files: behind ``mlflow models serve`` a file path would be the *client's* choice of a file on the
*server*, and the model cannot tell a REST call from an in-process one, so callers read their
files and send bytes. A frame without ``image``, or with any other column, is a malformed
request (``MlflowException`` INVALID_PARAMETER_VALUE, which the scoring server answers with 400;
through the logged signature MLflow itself rejects a missing ``image`` and drops unknown columns
before the model sees them).

Decoding (by content, any format Pillow reads, first frame of a GIF, converted to RGB), resizing
to the training size and rescaling by 1/255 happen here, so callers never preprocess. Output: one
row per input row with ``label``, ``prob_<class>`` for every class, ``error`` (a message) and
``error_code`` (stable, for programs: see ``ERROR_CODES``). A bad image is a per-row error, not
a failed batch: its label and probabilities are None (JSON null; NaN is not valid JSON).

Test-time augmentation: a model logged with ``tta_flip`` true in its config returns, for each
image, the mean of the probabilities of the image and of its horizontal flip (the flip is one
of training's augmentations, so both views are in-distribution); models without the key
predict once.

Calibration: a model logged with ``temperature`` T in its config returns, after the flip
average, ``softmax(log(p) / T)``: temperature scaling, fitted by training on the val split
(``weather_tasks.calibration.apply_temperature``, written out again here since this file
imports nothing from the package; a test holds the two together). It never changes the label,
only how confident ``prob_*`` are. Models logged before it existed have no key and predict as
before (T = 1). A non-finite row stays NaN, so it is still reported as ``non_finite``.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

# Prediction batch size: large enough to amortize the call, small enough for any host's memory.
_BATCH = 32
# Probabilities are clipped to this before their log, as weather_tasks.calibration does.
_EPS = 1e-12

# Per-row error codes: part of the served contract, so never renamed.
EMPTY = "empty"  # null, NaN or zero-length image
NOT_BYTES = "not_bytes"  # neither bytes nor base64 text
UNDECODABLE = "undecodable"  # Pillow cannot decode the bytes as an image
NON_FINITE = "non_finite"  # the model returned NaN/inf (a diverged model is no answer)
ERROR_CODES = (EMPTY, NOT_BYTES, UNDECODABLE, NON_FINITE)


class RowError(Exception):
    """One row cannot be classified: a stable ``code`` and a message for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class WeatherClassifier(PythonModel):
    """Wraps the trained Keras model with decoding and preprocessing."""

    def load_context(self, context: Any) -> None:
        import keras  # lazy: importing a backend is slow and only needed to predict

        config = context.model_config or {}
        self.classes: list[str] = list(config["classes"])
        self.image_size: int = int(config["image_size"])
        self.interpolation: str = str(config.get("interpolation", "bilinear"))
        self.antialias: bool = bool(config.get("antialias", False))
        self.tta_flip: bool = bool(config.get("tta_flip", False))
        self.temperature: float = float(config.get("temperature", 1.0))
        self._keras = keras
        self._model = keras.models.load_model(context.artifacts["keras_model"], compile=False)

    # No type hints on predict: MLflow would try to derive (and enforce) a schema from them;
    # the logged signature is the contract instead. ``params`` is ignored: the scoring server
    # passes a client's params through, so they can carry nothing the server should trust.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        images = _image_column(model_input)
        n = len(images)
        labels: list[str | None] = [None] * n
        probs: list[list[float] | None] = [None] * n
        errors: list[str | None] = [None] * n
        codes: list[str | None] = [None] * n

        # Preprocess one batch at a time: memory stays bounded whatever the request size.
        for start in range(0, n, _BATCH):
            arrays: list[np.ndarray] = []
            rows: list[int] = []
            for i in range(start, min(start + _BATCH, n)):
                try:
                    arrays.append(self._preprocess(image_bytes(images[i])))
                    rows.append(i)
                except RowError as exc:
                    errors[i], codes[i] = exc.message, exc.code
                except Exception as exc:  # noqa: BLE001 - one bad image must not fail the batch
                    errors[i], codes[i] = _decode_error(exc), UNDECODABLE
            if not arrays:
                continue
            out = self._predict_batch(np.stack(arrays))
            for j, row in enumerate(rows):
                if not np.isfinite(out[j]).all():
                    # A diverged model (NaN weights) must not look like a confident answer.
                    errors[row] = "the model returned non-finite probabilities"
                    codes[row] = NON_FINITE
                    continue
                probs[row] = [float(p) for p in out[j]]
                labels[row] = self.classes[int(np.argmax(out[j]))]
        return result_frame(self.classes, labels, probs, errors, codes)

    def _predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities of (n, h, w, 3) images; with ``tta_flip`` the mean over each image and
        its horizontal flip (as ``weather_tasks.recipe.predict_probabilities``), then scaled by
        the model's temperature (as ``weather_tasks.calibration.apply_temperature``).

        Pad to the next power of two so the compiled predict function is traced at most
        log2(_BATCH)+1 times, whatever batch sizes requests come in with."""
        n = len(batch)
        size = 1 << (n - 1).bit_length()
        if size != n:
            pad = np.zeros((size - n, *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, pad])
        out = self._predict_padded(batch)
        if self.tta_flip:
            out = (out + self._predict_padded(batch[:, :, ::-1])) / 2  # NHWC: width
        return apply_temperature(out[:n], self.temperature)

    def _predict_padded(self, batch: np.ndarray) -> np.ndarray:
        out = self._model.predict_on_batch(batch)
        return np.asarray(self._keras.ops.convert_to_numpy(out), dtype=np.float64)

    def _preprocess(self, data: bytes) -> np.ndarray:
        """Decode by content, convert to RGB, resize and rescale to [0, 1], as training did.

        Training (weather_tasks.data) resizes with the method and antialias setting recorded
        in the model config, rounds to uint8 (its cache) and divides by 255; doing exactly
        the same here avoids train/serve skew (a test compares the two).
        """
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            img.seek(0)  # GIF/animated WebP: the first frame, as ingest validates it
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
        resized = self._keras.ops.image.resize(
            rgb,
            (self.image_size, self.image_size),
            interpolation=self.interpolation,
            antialias=self.antialias,
        )
        resized = np.asarray(self._keras.ops.convert_to_numpy(resized), dtype=np.float32)
        return np.clip(np.round(resized), 0.0, 255.0) / 255.0


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / temperature)`` row by row; a row with any non-finite value comes
    out all NaN (clipping alone would turn an infinity into a confident-looking answer)."""
    if temperature == 1.0:
        return probs
    finite = np.isfinite(probs).all(axis=-1, keepdims=True)
    logits = np.log(np.clip(np.where(finite, probs, 1.0), _EPS, 1.0)) / temperature
    logits -= np.max(logits, axis=-1, keepdims=True)
    e = np.exp(logits)
    return np.where(finite, e / e.sum(axis=-1, keepdims=True), np.nan)


def result_frame(
    classes: list[str],
    labels: list[str | None],
    probs: list[list[float] | None],
    errors: list[str | None],
    codes: list[str | None],
) -> pd.DataFrame:
    """The output frame: ``label``, ``prob_<class>``..., ``error``, ``error_code``.

    Every column has dtype object holding Python values or None, so a failed row serializes as
    JSON null: a float column would hold NaN, which the scoring server writes as the bare token
    ``NaN`` (not JSON), and pandas' default string dtype would turn None into NaN as well.
    """
    out = {"label": pd.Series(labels, dtype=object)}
    for k, c in enumerate(classes):
        out[f"prob_{c}"] = pd.Series([None if p is None else p[k] for p in probs], dtype=object)
    out["error"] = pd.Series(errors, dtype=object)
    out["error_code"] = pd.Series(codes, dtype=object)
    return pd.DataFrame(out)


def _decode_error(exc: Exception) -> str:
    """The message of a decoding failure, without the memory address of the buffer Pillow names
    ("cannot identify image file <_io.BytesIO object at 0x...>"): the same bytes give the same
    answer, and the server's addresses stay its own."""
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", f"{type(exc).__name__}: {exc}")


def _malformed(message: str) -> MlflowException:
    """A request the model cannot take at all: the scoring server answers 400 with ``message``."""
    return MlflowException.invalid_parameter_value(message)


def _image_column(model_input: Any) -> list[Any]:
    """The ``image`` values; a frame of any other shape is a malformed request, not a row error."""
    if isinstance(model_input, dict):
        model_input = pd.DataFrame(model_input)
    if not isinstance(model_input, pd.DataFrame):
        kind = type(model_input).__name__
        raise _malformed(f"expected a DataFrame with one column 'image' (bytes), got {kind}")
    columns = [str(c) for c in model_input.columns]
    if columns != ["image"]:
        raise _malformed(
            "expected one column 'image' (image bytes; the model reads no files), "
            f"got columns {columns}"
        )
    return list(model_input["image"])


def image_bytes(value: Any) -> bytes:
    """One row's image: raw bytes as given, or base64 text decoded; a :class:`RowError` if none."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        raise RowError(EMPTY, "no image in this row")
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        value = value.tobytes()
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise RowError(NOT_BYTES, f"'image' is text but not base64: {exc}") from exc
    if not isinstance(value, bytes | bytearray | memoryview):
        kind = type(value).__name__
        raise RowError(NOT_BYTES, f"'image' must be bytes or base64 text, got {kind}")
    if len(value) == 0:
        raise RowError(EMPTY, "the image is empty (0 bytes)")
    return bytes(value)


# MLflow "model from code": executed when MLflow loads the model from this file.
mlflow.models.set_model(WeatherClassifier())
