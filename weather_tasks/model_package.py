"""Package a trained Keras model as the MLflow pyfunc model that downstream services load.

The model is logged as MLflow "model from code" (``serving_model.py``): it decodes, resizes
(with :mod:`weather_tasks.image_spec`) and rescales inside, so downstream services only do::

    mlflow.pyfunc.load_model("models:/weather-classifier@champion").predict(
        pd.DataFrame({"image": [jpeg_bytes]})   # bytes only: the model reads no files
    )

and get ``label``, ``prob_<class>``, ``error`` and ``error_code`` per row (a failed row: None
label and probabilities, a message and a stable code). The Keras model travels as a
``.keras`` artifact; classes, image size and the resize as the model config, so the model alone
knows how to preprocess; the test-time flip and the calibration temperature (fitted by training
on the val split) are in the config too, so the served ``prob_*`` are the calibrated ones (a
model logged before the temperature existed has none and is served uncalibrated, T = 1).
Logged into the active run (MLflow's fluent API, so the process must be configured:
:func:`weather_tasks.tracking.configure_process`).
"""

from __future__ import annotations

import importlib.metadata
import math
import tempfile
from pathlib import Path
from typing import Any

from weather_tasks import tracking
from weather_tasks.config import PipelineConfig
from weather_tasks.image_spec import RESIZE_ANTIALIAS, RESIZE_METHOD

_MODEL_CODE = Path(__file__).with_name("serving_model.py")


def log_model(
    keras_model: Any,
    cfg: PipelineConfig,
    input_example_path: str | None = None,
    *,
    temperature: float = 1.0,
) -> str:
    """Log ``keras_model`` as the pyfunc model "model" of the active run; returns its URI.

    ``input_example_path``: an image file whose bytes become the input example (and let MLflow
    check the model loads and predicts). ``temperature``: the served model divides the log of
    its probabilities by it (:mod:`weather_tasks.calibration`); 1.0 leaves them as they are.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
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
                "tta_flip": cfg.tta_flip,  # average with the horizontal flip (recipe setting)
                # Applied after the flip average, as training fitted it (calibrated prob_*).
                "temperature": float(temperature),
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
    """What a consumer installs to load and predict: what ``serving_model.py`` imports, nothing
    of ``weather_tasks``, Airflow or the MLflow server.

    ``mlflow-skinny`` loads pyfunc models, reads the registry and runs ``mlflow models serve``;
    the full ``mlflow`` would add the tracking server, its UI, scipy, scikit-learn and pyarrow
    (0.5 GB of a consumer's 2.3 GB). Exactly the version that logged the model. Keras and
    TensorFlow within the trained minor release: the served resize, and so every prediction, is
    tested to the bit against training's. The CPU build of TensorFlow where there is a choice,
    whichever build trained: a consumer only predicts. Pillow, numpy and pandas from the oldest
    releases a consumer was checked with (a venv resolved to these lower bounds loaded a model
    and predicted the same probabilities) to the next major.
    """
    tensorflow = _installed_version("tensorflow-cpu", "tensorflow")
    return [
        f"mlflow-skinny=={_installed_version('mlflow-skinny')}",
        f"keras~={_installed_version('keras')}",
        f"tensorflow-cpu~={tensorflow}; {_LINUX_X86_64}",
        f"tensorflow~={tensorflow}; {_NOT_LINUX_X86_64}",
        "pillow>=10,<14",
        "numpy>=1.26,<3",
        "pandas>=2.2,<4",
    ]


# On Linux x86_64 the tensorflow wheel carries CUDA kernels and tensorflow-cpu is the smaller
# build; elsewhere tensorflow is the CPU build (PEP 508 markers have no "not").
_LINUX_X86_64 = "sys_platform == 'linux' and platform_machine == 'x86_64'"
_NOT_LINUX_X86_64 = "sys_platform != 'linux' or platform_machine != 'x86_64'"


def _installed_version(*names: str) -> str:
    """The version of the first of ``names`` installed in this process."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    raise importlib.metadata.PackageNotFoundError(names[0])
