"""Train one model on one manifest version with the seed's recipe, tracked in one MLflow run.

The recipe (all settings from :class:`PipelineConfig`): Adam(``learning_rate``),
categorical cross-entropy, accuracy, ``batch_size`` 16, ``epochs`` 100,
``ReduceLROnPlateau(monitor="val_accuracy", factor, patience, min_lr, cooldown)``, seeded
with ``keras.utils.set_random_seed(seed)``. Unlike the seed, the weights of the best
val-accuracy epoch are kept (a ``ModelCheckpoint``) and restored before the model is
logged; the run says so (tag ``best_checkpoint``).

Precision (``cfg.precision``):

- ``auto``: ``mixed_float16`` when a GPU is present (memory growth on), else ``float32``.
  bfloat16 is *not* chosen automatically on CPUs: on the AVX512-BF16 CPU (no AMX) this was
  developed on, ``bench/train.py`` measured Model 3 training at 0.66-0.69x the float32
  speed under ``mixed_bfloat16``; CPUs with AMX may differ, so it stays an explicit choice.
- ``float32``, ``mixed_bfloat16``, ``mixed_float16``: as asked.

The output layer stays float32 under every policy (see :mod:`weather_tasks.models`), and the
model handed to serving is always a float32 copy, so serving never depends on how it was
trained.

The run records: every config value as a param; per-epoch loss, accuracy, val_loss,
val_accuracy and learning rate; the manifest as an MLflow dataset input (its digest and
S3 URI); a learning-curve plot, a confusion matrix on the val split and a per-class report;
tags for the manifest version, code version and Airflow run id. The model itself is logged
by :func:`weather_tasks.serving.log_model` (a pyfunc that takes image bytes or paths).
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np

import weather_tasks
from weather_tasks import data, manifest, storage
from weather_tasks.config import PipelineConfig

log = logging.getLogger(__name__)

BEST_CHECKPOINT_NOTE = "weights of the best val_accuracy epoch restored (ModelCheckpoint)"
REPORT_ARTIFACT = "reports/train_report.json"


@dataclass(frozen=True)
class TrainReport:
    run_id: str
    experiment_id: str
    model_uri: str
    manifest_version: str
    manifest_digest: str
    model: str
    image_size: int
    precision: str
    device: str
    best_epoch: int  # 1-based, as Keras prints it
    best_val_accuracy: float
    best_val_loss: float
    final_val_accuracy: float
    epochs_run: int
    train_images: int
    val_images: int
    test_images: int
    images_per_second: float  # training throughput, steady state (epochs after the first)
    train_seconds: float
    airflow_run_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return "\n".join(
            [
                f"trained {self.model} at {self.image_size}px on manifest {self.manifest_version} "
                f"({self.train_images} train / {self.val_images} val / {self.test_images} test)",
                f"  device {self.device}, precision {self.precision}, {self.epochs_run} epochs "
                f"in {self.train_seconds:.1f}s, {self.images_per_second:.1f} images/s",
                f"  best epoch {self.best_epoch}: val_accuracy {self.best_val_accuracy:.4f}, "
                f"val_loss {self.best_val_loss:.4f} (final epoch: {self.final_val_accuracy:.4f})",
                f"  MLflow run {self.run_id}; model {self.model_uri}",
            ]
        )


def resolve_precision(requested: str, has_gpu: bool) -> str:
    """The Keras dtype policy for ``requested`` (see the module docstring for ``auto``)."""
    if requested == "auto":
        return "mixed_float16" if has_gpu else "float32"
    return requested


def configure_devices() -> str:
    """Turn on GPU memory growth (before TensorFlow claims the memory); name the device."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process: growth is fixed by then
            pass
    return f"GPU x{len(gpus)}" if gpus else "CPU"


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    version = weather_tasks.__version__
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{sha}" if sha else version


def train_model(
    cfg: PipelineConfig,
    manifest_version: str | None = None,
    *,
    s3: Any = None,
    airflow_run_id: str | None = None,
) -> TrainReport:
    """Train ``cfg.model`` on a manifest version (default: the latest); one MLflow run.

    Idempotent per Airflow run: when ``airflow_run_id`` is given and a finished run of the
    same Airflow run, manifest version and training settings exists, its report is returned
    and nothing is trained or logged again (a cleared task does not make a second model).
    """
    s3 = storage.make_client(cfg) if s3 is None else s3
    version = manifest_version or manifest.read_manifest(s3, cfg).version
    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
    settings_digest = training_settings_digest(cfg)
    if airflow_run_id:
        previous = _finished_report(cfg, airflow_run_id, version, settings_digest)
        if previous is not None:
            log.info("run %s already trained this; reusing it", previous.run_id)
            return previous

    device = configure_devices()
    precision = resolve_precision(cfg.precision, has_gpu=device.startswith("GPU"))
    training = data.load_training_data(cfg, s3, version)
    m = training.manifest
    log.info("manifest %s: %s", m.version, training.counts())

    experiment = mlflow.set_experiment(cfg.experiment_name)
    tags = {
        "manifest_version": m.version,
        "manifest_uri": manifest.manifest_uri(cfg, m.version),
        "code_version": code_version(),
        "model_name": cfg.model,
        "precision": precision,
        "device": device,
        "best_checkpoint": BEST_CHECKPOINT_NOTE,
        "training_settings_sha256": settings_digest,
    }
    if airflow_run_id:
        tags["airflow_run_id"] = airflow_run_id

    previous_policy = keras.config.dtype_policy()
    with (
        mlflow.start_run(run_name=f"{cfg.model}-{m.version}", tags=tags) as run,
        tempfile.TemporaryDirectory(prefix="weather-train-") as tmp,
    ):
        # str() of lists, as MLflow itself writes the model config (classes, image_size)
        # when the model is logged: a different spelling would be a conflicting param.
        mlflow.log_params({k: str(v) for k, v in cfg.as_dict().items()})
        mlflow.log_params(
            {
                "precision_resolved": precision,
                "train_images": training.train.size,
                "val_images": training.val.size,
                "test_images": training.test.size,
            }
        )
        _log_dataset(cfg, m, training)
        try:
            keras.config.set_dtype_policy(precision)
            keras.utils.set_random_seed(cfg.seed)  # weights, dropout; the data has its own seeds
            model = _build_and_compile(cfg)
            fit = _fit(model, cfg, training, Path(tmp))
        finally:
            # The policy is process-global; an Airflow worker runs other tasks after us.
            keras.config.set_dtype_policy(previous_policy)
        serving_model = _float32_copy(model, cfg)

        _log_evaluation_artifacts(serving_model, cfg, training, fit["history"])
        mlflow.log_metrics(
            {
                "best_epoch": fit["best_epoch"],
                "best_val_accuracy": fit["best_val_accuracy"],
                "best_val_loss": fit["best_val_loss"],
                "images_per_second": fit["images_per_second"],
                "train_seconds": fit["train_seconds"],
            }
        )
        from weather_tasks import serving  # pyfunc with decoding and resizing inside

        model_uri = serving.log_model(serving_model, cfg, training.val.paths[0])
        report = TrainReport(
            run_id=run.info.run_id,
            experiment_id=experiment.experiment_id,
            model_uri=model_uri,
            manifest_version=m.version,
            manifest_digest=m.digest,
            model=cfg.model,
            image_size=cfg.image_size,
            precision=precision,
            device=device,
            best_epoch=fit["best_epoch"],
            best_val_accuracy=fit["best_val_accuracy"],
            best_val_loss=fit["best_val_loss"],
            final_val_accuracy=fit["history"]["val_accuracy"][-1],
            epochs_run=fit["epochs_run"],
            train_images=training.train.size,
            val_images=training.val.size,
            test_images=training.test.size,
            images_per_second=fit["images_per_second"],
            train_seconds=fit["train_seconds"],
            airflow_run_id=airflow_run_id,
        )
        # Last thing in the run: a finished run with this file is a complete training.
        mlflow.log_dict(report.as_dict(), REPORT_ARTIFACT)
    log.info("%s", report.summary())
    return report


def training_settings_digest(cfg: PipelineConfig) -> str:
    """sha256 of the settings that change what a training produces (not where it logs)."""
    keys = ("model", "image_size", "epochs", "batch_size", "learning_rate", "lr_factor",
            "lr_patience", "lr_min", "lr_cooldown", "precision", "seed", "classes")
    settings = {k: v for k, v in cfg.as_dict().items() if k in keys}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _finished_report(
    cfg: PipelineConfig, airflow_run_id: str, version: str, settings_digest: str
) -> TrainReport | None:
    experiment = mlflow.get_experiment_by_name(cfg.experiment_name)
    if experiment is None:
        return None
    quoted = airflow_run_id.replace("'", "\\'")
    runs = mlflow.search_runs(
        experiment_ids=[experiment.experiment_id],
        filter_string=(
            f"tags.airflow_run_id = '{quoted}' and tags.manifest_version = '{version}' "
            f"and tags.training_settings_sha256 = '{settings_digest}' "
            "and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    for run in runs:
        try:
            saved = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{REPORT_ARTIFACT}")
        except Exception:  # noqa: BLE001 - no report: not a complete training, look further
            continue
        return TrainReport(**saved)
    return None


def _log_dataset(cfg: PipelineConfig, m: manifest.Manifest, training: data.TrainingData) -> None:
    """The manifest as the run's dataset input: its S3 URI and digest (MLflow keeps 36 chars)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    uri = manifest.manifest_uri(cfg, m.version)
    dataset = MetaDataset(source=resolve_dataset_source(uri), name=f"weather-manifest-{m.version}",
                          digest=m.digest[:36])
    mlflow.log_input(
        dataset,
        context="training",
        tags={
            "manifest_version": m.version,
            "manifest_sha256": m.digest,
            "splits": json.dumps(training.counts(), sort_keys=True),
        },
    )


def _build_and_compile(cfg: PipelineConfig) -> keras.Model:
    from weather_tasks.models import build_model

    model = build_model(cfg.model, cfg.image_size, len(cfg.classes))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _fit(model: Any, cfg: PipelineConfig, training: data.TrainingData, tmp: Path) -> dict[str, Any]:
    checkpoint = tmp / "best.weights.h5"
    timer = _EpochTimer()
    callbacks = [
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_accuracy",
            factor=cfg.lr_factor,
            patience=cfg.lr_patience,
            min_lr=cfg.lr_min,
            cooldown=cfg.lr_cooldown,
        ),
        # Strictly-better only, so on ties the earliest best epoch is kept.
        keras.callbacks.ModelCheckpoint(
            str(checkpoint), monitor="val_accuracy", mode="max",
            save_best_only=True, save_weights_only=True,
        ),
        timer,
        _MlflowEpochLogger(timer),
    ]
    history = model.fit(
        training.train.dataset,
        validation_data=training.val.dataset,
        epochs=cfg.epochs,
        callbacks=callbacks,
        shuffle=False,  # the training dataset shuffles itself (seeded)
        verbose=2,
    ).history
    history["learning_rate"] = timer.learning_rates
    model.load_weights(str(checkpoint))
    val_acc = history["val_accuracy"]
    best = int(np.argmax(val_acc))  # first maximum, as the checkpoint keeps it
    return {
        "history": history,
        "epochs_run": len(val_acc),
        "best_epoch": best + 1,
        "best_val_accuracy": float(val_acc[best]),
        "best_val_loss": float(history["val_loss"][best]),
        "images_per_second": timer.images_per_second(training.train.size),
        "train_seconds": timer.total_seconds,
    }


class _EpochTimer(keras.callbacks.Callback):
    """Time the training part of each epoch (validation excluded) and record the LR."""

    def __init__(self) -> None:
        super().__init__()
        self.train_seconds: list[float] = []
        self.learning_rates: list[float] = []
        self.total_seconds = 0.0
        self._fit_start = 0.0
        self._epoch_start = 0.0

    def on_train_begin(self, logs: Any = None) -> None:
        self._fit_start = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._epoch_start = time.perf_counter()
        self.learning_rates.append(
            float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        )

    def on_test_begin(self, logs: Any = None) -> None:
        # Inside fit, validation starts right after the epoch's last training step.
        if len(self.train_seconds) < len(self.learning_rates):
            self.train_seconds.append(time.perf_counter() - self._epoch_start)

    def on_train_end(self, logs: Any = None) -> None:
        self.total_seconds = time.perf_counter() - self._fit_start

    def images_per_second(self, n_images: int) -> float:
        # The first epoch traces the graph and fills the decode cache: leave it out when
        # there are others (steady state is what a 100-epoch run sees).
        times = self.train_seconds[1:] or self.train_seconds
        total = sum(times)
        return n_images * len(times) / total if total > 0 else 0.0


class _MlflowEpochLogger(keras.callbacks.Callback):
    """One ``log_metrics`` call per epoch: losses, accuracies and the epoch's LR."""

    def __init__(self, timer: _EpochTimer) -> None:
        super().__init__()
        self.timer = timer

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        logs = logs or {}
        metrics = {
            k: float(logs[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs
        }
        metrics["lr"] = self.timer.learning_rates[epoch]
        if epoch < len(self.timer.train_seconds):
            metrics["epoch_train_seconds"] = self.timer.train_seconds[epoch]
        mlflow.log_metrics(metrics, step=epoch)


def _float32_copy(model: keras.Model, cfg: PipelineConfig) -> keras.Model:
    """The same architecture under the float32 policy with the trained weights."""
    from weather_tasks.models import build_model

    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy("float32")
        copy = build_model(cfg.model, cfg.image_size, len(cfg.classes))
    finally:
        keras.config.set_dtype_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


def _log_evaluation_artifacts(
    model: keras.Model,
    cfg: PipelineConfig,
    training: data.TrainingData,
    history: dict[str, list[float]],
) -> None:
    """Learning curve, val confusion matrix (PNG) and the per-class report (JSON)."""
    probs = model.predict(training.val.dataset, verbose=0)
    y_true = np.asarray(training.val.label_indices(cfg.classes))
    y_pred = np.argmax(probs, axis=1)
    report = class_report(y_true, y_pred, cfg.classes)
    report["split"] = "val"
    report["manifest_version"] = training.manifest.version
    mlflow.log_dict(report, "reports/val_class_report.json")
    mlflow.log_figure(learning_curve_figure(history), "plots/learning_curve.png")
    mlflow.log_figure(
        confusion_matrix_figure(np.asarray(report["confusion_matrix"]), cfg.classes, "val"),
        "plots/confusion_matrix_val.png",
    )
    mlflow.log_metrics(
        {"val_accuracy_best_model": report["accuracy"]}
        | {f"val_recall_{c}": report["per_class"][c]["recall"] for c in cfg.classes}
    )


def class_report(
    y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...] | list[str]
) -> dict[str, Any]:
    """Accuracy, confusion matrix (rows: true, columns: predicted), per-class P/R/F1/support."""
    k = len(classes)
    cm = np.zeros((k, k), dtype=int)
    for t, p in zip(y_true, y_pred, strict=True):
        cm[int(t), int(p)] += 1
    per_class = {}
    for i, name in enumerate(classes):
        tp = int(cm[i, i])
        predicted, support = int(cm[:, i].sum()), int(cm[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": precision, "recall": recall, "f1": f1, "support": support,
        }
    total = int(cm.sum())
    return {
        "classes": list(classes),
        "accuracy": float(np.trace(cm) / total) if total else 0.0,
        "n": total,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def learning_curve_figure(history: dict[str, list[float]]) -> Any:
    """The seed's ``train_curve_graph`` (train vs val accuracy) plus loss and learning rate."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    epochs = np.arange(1, len(history["accuracy"]) + 1)
    acc_ax.plot(epochs, history["accuracy"], label="train acc")
    acc_ax.plot(epochs, history["val_accuracy"], label="val acc")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy")
    acc_ax.legend(loc="lower left")
    loss_ax.plot(epochs, history["loss"], label="train loss")
    loss_ax.plot(epochs, history["val_loss"], label="val loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend(loc="upper right")
    if history.get("learning_rate"):
        lr_ax = loss_ax.twinx()
        lr_ax.semilogy(epochs, history["learning_rate"], "k:", label="learning rate")
        lr_ax.set_ylabel("learning rate (dotted)")
    return fig


def confusion_matrix_figure(cm: np.ndarray, classes: tuple[str, ...], split: str) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({split}, n={int(cm.sum())})")
    threshold = cm.max() / 2 if cm.size and cm.max() else 0
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if v > threshold else "black")
    return fig


