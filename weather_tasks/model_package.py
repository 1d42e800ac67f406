"""Package a trained Keras model as the MLflow pyfunc model that downstream services load.

The model is logged as MLflow "model from code" (``serving_model.py``): it decodes, resizes
(with :mod:`weather_tasks.image_spec`) and rescales inside, so downstream services only do::

    mlflow.pyfunc.load_model("models:/weather-classifier@champion").predict(
        pd.DataFrame({"image": [jpeg_bytes]})   # bytes only: the model reads no files
    )

and get ``label``, ``prob_<class>``, ``error`` and ``error_code`` per row (a failed row: None
label and probabilities, a message and a stable code). The Keras model travels as a
``.keras`` artifact; classes, image size and the resize as the model config, so the model alone
knows how to preprocess. Logged into the active run (MLflow's fluent API, so the process must
be configured: :func:`weather_tasks.tracking.configure_process`).
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from pathlib import Path
from typing import Any

from weather_tasks import tracking
from weather_tasks.config import PipelineConfig
from weather_tasks.image_spec import RESIZE_ANTIALIAS, RESIZE_METHOD

_MODEL_CODE = Path(__file__).with_name("serving_model.py")


def log_model(keras_model: Any, cfg: PipelineConfig, input_example_path: str | None = None) -> str:
    """Log ``keras_model`` as the pyfunc model "model" of the active run; returns its URI.

    ``input_example_path``: an image file whose bytes become the input example (and let MLflow
    check the model loads and predicts).
    """
    import mlflow

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
            name=tracking.MODEL_ARTIFACT,
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
    return tracking.run_model_uri(run.info.run_id)


def model_signature(cfg: PipelineConfig) -> Any:
    """Input: the required ``image`` (binary) column, nothing else; outputs: label, probs, error,
    error_code.

    No ``path`` input: behind ``mlflow models serve`` a path names a file on the server chosen by
    the client (a probe of its file system), and the model cannot tell REST from in process.
    MLflow enforces this signature: a request without ``image`` is answered 400, and columns the
    signature does not name are dropped before the model sees them.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("binary", "image")])
    outputs = Schema(
        [
            ColSpec("string", "label", required=False),
            *(ColSpec("double", f"prob_{c}", required=False) for c in cfg.classes),
            ColSpec("string", "error", required=False),
            ColSpec("string", "error_code", required=False),
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
