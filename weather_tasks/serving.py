"""Serving side: log the Keras model as an MLflow pyfunc, find the champion, predict files.

The logged model (``serving_model.py``, logged as MLflow "model from code") decodes, resizes
and rescales inside, so downstream services only do::

    mlflow.pyfunc.load_model("models:/weather-classifier@champion").predict(
        pd.DataFrame({"image": [jpeg_bytes]})   # or {"path": ["/data/x.jpg"]}
    )

and get ``label``, ``prob_<class>`` and ``error`` per row.
"""

from __future__ import annotations

import importlib.metadata
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weather_tasks.config import PipelineConfig

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the artifact name inside a run: runs:/<run_id>/model
CHAMPION = "champion"
_MODEL_CODE = Path(__file__).with_name("serving_model.py")


def use_tracking(cfg: PipelineConfig) -> None:
    """Point the mlflow client at the configured tracking server (and its registry)."""
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
    mlflow.set_registry_uri(cfg.mlflow_tracking_uri)


def champion_uri(cfg: PipelineConfig) -> str:
    return f"models:/{cfg.registered_model}@{CHAMPION}"


def run_model_uri(run_id: str) -> str:
    return f"runs:/{run_id}/{MODEL_NAME}"


def log_model(keras_model: Any, cfg: PipelineConfig, input_example_path: str | None = None) -> str:
    """Log ``keras_model`` as the pyfunc model "model" of the active run; returns its URI.

    The Keras model travels as a ``.keras`` artifact; classes and image size as the model
    config, so the model alone knows how to preprocess. ``input_example_path``: an image file
    whose bytes become the input example (and let MLflow check the model loads and predicts).
    """
    import mlflow

    from weather_tasks.data import RESIZE_ANTIALIAS, RESIZE_METHOD  # TensorFlow: train's deps

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_model must be called inside an active MLflow run")
    with tempfile.TemporaryDirectory(prefix="weather-model-") as tmp:
        keras_path = Path(tmp) / "model.keras"
        keras_model.save(keras_path)
        example = None
        if input_example_path is not None:
            import pandas as pd

            example = pd.DataFrame({"image": [Path(input_example_path).read_bytes()]})
        mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(_MODEL_CODE),
            artifacts={"keras_model": str(keras_path)},
            model_config={
                "classes": list(cfg.classes),
                "image_size": cfg.image_size,
                # The training pipeline's resize, applied at serving too (no train/serve skew).
                "interpolation": RESIZE_METHOD,
                "antialias": RESIZE_ANTIALIAS,
            },
            signature=model_signature(cfg),
            input_example=example,
            pip_requirements=model_requirements(),
        )
    return run_model_uri(run.info.run_id)


def model_signature(cfg: PipelineConfig) -> Any:
    """Inputs: optional ``image`` (binary) and ``path`` (string); outputs: label, probs, error."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema(
        [
            ColSpec("binary", "image", required=False),
            ColSpec("string", "path", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("string", "label", required=False),
            *(ColSpec("double", f"prob_{c}", required=False) for c in cfg.classes),
            ColSpec("string", "error", required=False),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def model_requirements() -> list[str]:
    """What a consumer must install: mlflow, keras and its backend, pillow (exact versions)."""
    import keras

    backend = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "jax": ("jax",),
               "torch": ("torch",)}.get(keras.backend.backend(), ())
    reqs = []
    for names in (("mlflow",), ("keras",), backend, ("pillow",), ("numpy",), ("pandas",)):
        for name in names:
            try:
                reqs.append(f"{name}=={importlib.metadata.version(name)}")
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return reqs


@dataclass(frozen=True)
class ImagePrediction:
    path: str
    label: str | None
    probabilities: dict[str, float] | None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "label": self.label,
            "probabilities": self.probabilities,
            "error": self.error,
        }


@dataclass(frozen=True)
class PredictReport:
    model_uri: str
    predictions: tuple[ImagePrediction, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> bool:
        """True when any image could not be classified (the CLI then exits 1)."""
        return any(p.error for p in self.predictions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_uri": self.model_uri,
            "predictions": [p.as_dict() for p in self.predictions],
            "n_ok": sum(1 for p in self.predictions if not p.error),
            "n_error": sum(1 for p in self.predictions if p.error),
        }

    def summary(self) -> str:
        lines = [f"model: {self.model_uri}"]
        for p in self.predictions:
            if p.error:
                lines.append(f"{p.path}: ERROR {p.error}")
            else:
                probs = "  ".join(f"{c}={v:.3f}" for c, v in (p.probabilities or {}).items())
                lines.append(f"{p.path}: {p.label}  ({probs})")
        return "\n".join(lines)


def load_model(model_uri: str, cfg: PipelineConfig | None = None) -> Any:
    """Load the pyfunc model (``cfg`` points the client at the tracking server)."""
    import mlflow

    if cfg is not None:
        use_tracking(cfg)
    return mlflow.pyfunc.load_model(model_uri)


def predictions_frame(model: Any, paths: Sequence[str | Path]) -> Any:
    """The model's output DataFrame for image files (read by the model itself)."""
    import pandas as pd

    return model.predict(pd.DataFrame({"path": [str(p) for p in paths]}))


def predict_files(
    model_uri: str, paths: Sequence[str | Path], cfg: PipelineConfig | None = None
) -> PredictReport:
    """Classify image files; an unreadable or undecodable file gets an error, not a crash."""
    model = load_model(model_uri, cfg)
    frame = predictions_frame(model, paths)
    classes = [c.removeprefix("prob_") for c in frame.columns if c.startswith("prob_")]
    preds = []
    for path, row in zip(paths, frame.to_dict("records"), strict=True):
        if isinstance(row.get("error"), str) and row["error"]:  # NaN/None: no error
            preds.append(ImagePrediction(str(path), None, None, str(row["error"])))
        else:
            probs = {c: float(row[f"prob_{c}"]) for c in classes}
            preds.append(ImagePrediction(str(path), str(row["label"]), probs))
    return PredictReport(model_uri=model_uri, predictions=tuple(preds))


@dataclass(frozen=True)
class LatencyReport:
    """Prediction latency of the pyfunc model, end to end (decode + resize + model)."""

    model_uri: str
    load_s: float
    single_ms_median: float
    single_ms_p90: float
    batch_size: int
    batch_ms_median: float
    batch_images_per_s: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self) -> str:
        return (
            f"pyfunc load {self.load_s:.2f}s; single image: median {self.single_ms_median:.1f} ms, "
            f"p90 {self.single_ms_p90:.1f} ms; batch of {self.batch_size}: median "
            f"{self.batch_ms_median:.1f} ms ({self.batch_images_per_s:.1f} images/s)"
        )


def measure_latency(
    model_uri: str,
    image_paths: Sequence[str | Path],
    cfg: PipelineConfig | None = None,
    *,
    batch_size: int = 32,
    repeats: int = 20,
) -> LatencyReport:
    """Single-image and batch latency of ``model.predict`` on image bytes, after a warm-up.

    Bytes (not paths) are sent, as a REST client would, so file reads are not timed.
    """
    import pandas as pd

    t0 = time.perf_counter()
    model = load_model(model_uri, cfg)
    load_s = time.perf_counter() - t0
    blobs = [Path(p).read_bytes() for p in image_paths]
    if not blobs:
        raise ValueError("measure_latency needs at least one image")
    batch = pd.DataFrame({"image": [blobs[i % len(blobs)] for i in range(batch_size)]})
    model.predict(pd.DataFrame({"image": blobs[:1]}))  # warm-up: traces the predict function
    model.predict(batch)

    singles = []
    for i in range(repeats):
        one = pd.DataFrame({"image": [blobs[i % len(blobs)]]})
        t = time.perf_counter()
        model.predict(one)
        singles.append((time.perf_counter() - t) * 1000)
    batches = []
    for _ in range(max(3, repeats // 4)):
        t = time.perf_counter()
        model.predict(batch)
        batches.append((time.perf_counter() - t) * 1000)
    batch_med = statistics.median(batches)
    return LatencyReport(
        model_uri=model_uri,
        load_s=round(load_s, 3),
        single_ms_median=round(statistics.median(singles), 2),
        single_ms_p90=round(statistics.quantiles(singles, n=10)[-1], 2),
        batch_size=batch_size,
        batch_ms_median=round(batch_med, 2),
        batch_images_per_s=round(batch_size / (batch_med / 1000), 1),
    )
