"""The MLflow pyfunc model that downstream services load: raw images in, label + probabilities out.

This file is logged with every model as MLflow "model from code": MLflow copies it into the
model directory and executes it at load time, so a consumer needs only mlflow and the model's
own requirements (keras + its backend, pillow, numpy, pandas), never ``weather_tasks``. That is
why it imports nothing from this package and keeps Keras lazy (inside ``load_context``).

Input: a DataFrame with a column ``image`` (raw image bytes, or base64 text as carried by the
REST ``/invocations`` JSON) and/or a column ``path`` (file paths); per row the image wins when
both are set. Decoding (by content, any format Pillow reads, first frame of a GIF, converted to
RGB), resizing to the training size and rescaling by 1/255 happen here, so callers never
preprocess. Output: one row per input row with ``label``, ``prob_<class>`` for every class and
``error``: an undecodable image gets its error text and empty label/probabilities instead of
failing the whole batch.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

# Prediction batch size: large enough to amortize the call, small enough for any host's memory.
_BATCH = 32


class WeatherClassifier(PythonModel):
    """Wraps the trained Keras model with decoding and preprocessing."""

    def load_context(self, context: Any) -> None:
        import keras  # lazy: importing a backend is slow and only needed to predict

        config = context.model_config or {}
        self.classes: list[str] = list(config["classes"])
        self.image_size: int = int(config["image_size"])
        self.interpolation: str = str(config.get("interpolation", "bilinear"))
        self.antialias: bool = bool(config.get("antialias", False))
        self._keras = keras
        self._model = keras.models.load_model(context.artifacts["keras_model"], compile=False)

    # No type hints on predict: MLflow would try to derive (and enforce) a schema from them;
    # the logged signature is the contract instead.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        frame = _as_frame(model_input)
        n = len(frame)
        columns = ["label", *(f"prob_{c}" for c in self.classes), "error"]
        labels: list[str | None] = [None] * n
        probs = np.full((n, len(self.classes)), np.nan, dtype=np.float64)
        errors: list[str | None] = [None] * n

        arrays: list[np.ndarray] = []
        rows: list[int] = []
        for i, (data, origin) in enumerate(_sources(frame)):
            try:
                if data is None:
                    raise ValueError(origin)
                arrays.append(self._preprocess(data))
                rows.append(i)
            except Exception as exc:  # noqa: BLE001 - one bad image must not fail the batch
                errors[i] = f"{type(exc).__name__}: {exc}"

        for start in range(0, len(arrays), _BATCH):
            batch = np.stack(arrays[start : start + _BATCH])
            out = self._predict_batch(batch)
            for j, row in enumerate(rows[start : start + _BATCH]):
                if not np.isfinite(out[j]).all():
                    # A diverged model (NaN weights) must not look like a confident answer.
                    errors[row] = "ModelError: non-finite probabilities"
                    continue
                probs[row] = out[j]
                labels[row] = self.classes[int(np.argmax(out[j]))]

        # dtype=object keeps None as None (JSON null over REST); pandas 3's default string
        # dtype would turn it into NaN.
        result = pd.DataFrame({"label": pd.Series(labels, dtype=object)})
        for k, c in enumerate(self.classes):
            result[f"prob_{c}"] = probs[:, k]
        result["error"] = pd.Series(errors, dtype=object)
        return result[columns]

    def _predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Pad to the next power of two so the compiled predict function is traced at most
        log2(_BATCH)+1 times, whatever batch sizes requests come in with."""
        n = len(batch)
        size = 1 << (n - 1).bit_length()
        if size != n:
            pad = np.zeros((size - n, *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, pad])
        out = self._model.predict_on_batch(batch)
        return np.asarray(self._keras.ops.convert_to_numpy(out), dtype=np.float64)[:n]

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


def _as_frame(model_input: Any) -> pd.DataFrame:
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, dict):
        return pd.DataFrame(model_input)
    raise TypeError(
        "expected a DataFrame with an 'image' (bytes) or 'path' (file path) column, "
        f"got {type(model_input).__name__}"
    )


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str | bytes | bytearray) and len(value) == 0


def _sources(frame: pd.DataFrame) -> list[tuple[bytes | None, str]]:
    """Per row: (image bytes or None, origin or the reason there are none)."""
    if "image" not in frame.columns and "path" not in frame.columns:
        raise ValueError(
            f"input needs an 'image' or 'path' column, got columns {list(frame.columns)}"
        )
    images = frame["image"] if "image" in frame.columns else [None] * len(frame)
    paths = frame["path"] if "path" in frame.columns else [None] * len(frame)
    out: list[tuple[bytes | None, str]] = []
    for image, path in zip(images, paths, strict=True):
        if not _missing(image):
            try:
                out.append((_image_bytes(image), "image"))
            except ValueError as exc:
                out.append((None, str(exc)))
        elif not _missing(path):
            try:
                with open(str(path), "rb") as f:
                    out.append((f.read(), str(path)))
            except OSError as exc:
                out.append((None, f"cannot read {path}: {exc.strerror or exc}"))
        else:
            out.append((None, "row has neither 'image' nor 'path'"))
    return out


def _image_bytes(value: Any) -> bytes:
    """Raw bytes as given, or base64 text (what JSON carries) decoded."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        return value.tobytes()
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"'image' is text but not base64: {exc}") from exc
    raise ValueError(f"'image' must be bytes or base64 text, got {type(value).__name__}")


# MLflow "model from code": executed when MLflow loads the model from this file.
mlflow.models.set_model(WeatherClassifier())
