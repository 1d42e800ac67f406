"""Train one model on one manifest version with the seed's recipe, tracked in one MLflow run.

The recipe itself (model, optimizer, callbacks, precision, float32 export) is
:mod:`weather_tasks.recipe`; this module is its tracking: one MLflow run per training, with

- every config value as a param, plus the resolved precision and the split sizes;
- per-epoch loss, accuracy, val_loss, val_accuracy and learning rate (:class:`_MlflowEpochLogger`:
  a tracking server that cannot take them never stops the training; see there);
- the manifest as an MLflow dataset input (its digest and S3 URI);
- a learning-curve plot, a confusion matrix on the val split and the val report
  (:mod:`weather_tasks.plots`, :mod:`weather_tasks.metrics`), computed with the restored best
  weights (tag ``best_checkpoint``) and the calibrated probabilities the served model gives;
- calibration: a temperature fitted on the val split's probabilities of the float32 model as
  served (``tta_flip`` included), by :func:`weather_tasks.calibration.fit_temperature`;
  metrics ``temperature``, ``val_ece_uncalibrated`` and ``val_ece`` (calibrated), the
  reliability diagram before and after, and ``reports/calibration.json`` (see
  :func:`calibration_report`). The temperature is stored in the logged model's config and
  applied inside the served model, so its ``prob_*`` are calibrated; it never changes the
  predicted class, so accuracy and the promotion rule are unaffected. Fitted on val, which
  also chose the best epoch: the test split, on which a challenger is judged, stays unseen;
- tags for the manifest version, code version, settings digest and Airflow run id;
- the float32 model as a pyfunc (:func:`weather_tasks.model_package.log_model`);
- last, the train report: a finished run with it is a complete training (one written before
  calibration existed still loads: temperature 1, as its model is served, ECE unknown).

The summary metrics, the evaluation artifacts, the model and the report are essential: if
MLflow cannot take them (after its own HTTP retries), the training fails (the DAG task and the
CLI see a transient :class:`weather_tasks.tracking.TrackingError`; Airflow retries it). A
retry (any ``train_model`` with the same ``airflow_run_id``) first marks the runs a killed
attempt left RUNNING as FAILED (:func:`weather_tasks.tracking.fail_abandoned_runs`).

MLflow's fluent API logs to the process's tracking server, which the entry point sets
(:func:`weather_tasks.tracking.configure_process`); reads go through ``tracking.client(cfg)``.
Names of artifacts and tags read elsewhere are in :mod:`weather_tasks.tracking`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import mlflow
import numpy as np
from mlflow.entities import Metric

from weather_tasks import (
    calibration,
    config,
    data,
    manifest,
    metrics,
    model_package,
    plots,
    recipe,
    storage,
    tracking,
)
from weather_tasks.config import PipelineConfig

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

BEST_CHECKPOINT_NOTE = "weights of the best val_accuracy epoch restored (ModelCheckpoint)"
ENDED_BY_RETRY = "train_model: a later attempt of the same Airflow run (this one's process died)"


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
    # Calibration (defaults: a report written before it existed still loads; its model is
    # served uncalibrated, T = 1). ECE None: not measured, or no usable val row.
    temperature: float = 1.0
    val_ece_uncalibrated: float | None = None
    val_ece: float | None = None

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
                *self._calibration_lines(),
                f"  MLflow run {self.run_id}; model {self.model_uri}",
            ]
        )

    def _calibration_lines(self) -> list[str]:
        if self.val_ece is None or self.val_ece_uncalibrated is None:
            return []
        return [
            f"  temperature {self.temperature:.3f}: val ECE {self.val_ece_uncalibrated:.4f} "
            f"uncalibrated, {self.val_ece:.4f} as served"
        ]


def train_model(
    cfg: PipelineConfig,
    manifest_version: str | None = None,
    *,
    s3: S3Client | None = None,
    airflow_run_id: str | None = None,
) -> TrainReport:
    """Train ``cfg.model`` on a manifest version (default: the latest); one MLflow run.

    Idempotent per Airflow run: when ``airflow_run_id`` is given and a finished run of the
    same Airflow run, manifest version and training settings exists, its report is returned
    and nothing is trained or logged again (a cleared task does not make a second model).
    With ``airflow_run_id``, the runs of that Airflow run left RUNNING by a killed attempt are
    marked FAILED first; without one (the CLI) no run is marked, since a run without an
    Airflow run id may be another training going on right now.
    """
    tracking.check_process(cfg)
    s3 = storage.make_client(cfg) if s3 is None else s3
    version = manifest_version or manifest.read_manifest(s3, cfg).version
    settings_digest = training_settings_digest(cfg)
    if airflow_run_id:
        for abandoned in tracking.fail_abandoned_runs(cfg, airflow_run_id, ENDED_BY_RETRY):
            log.warning(
                "MLflow run %s of Airflow run %s was left RUNNING by a killed attempt: "
                "marked FAILED",
                abandoned,
                airflow_run_id,
            )
        previous = _finished_report(cfg, airflow_run_id, version, settings_digest)
        if previous is not None:
            log.info("run %s already trained this; reusing it", previous.run_id)
            return previous

    device = recipe.configure_devices()
    precision = recipe.resolve_precision(cfg.precision, has_gpu=device.startswith("GPU"))
    recipe.seed_process(cfg)  # before the datasets: their seeds combine with the global one
    training = data.load_training_data(cfg, s3, version)
    m = training.manifest
    log.info("manifest %s: %s", m.version, training.counts())

    experiment = mlflow.set_experiment(cfg.experiment_name)
    tags = {
        tracking.MANIFEST_VERSION_TAG: m.version,
        "manifest_uri": manifest.manifest_uri(cfg, m.version),
        "code_version": tracking.code_version(),
        "model_name": cfg.model,
        "precision": precision,
        "device": device,
        "best_checkpoint": BEST_CHECKPOINT_NOTE,
        tracking.SETTINGS_DIGEST_TAG: settings_digest,
    }
    if airflow_run_id:
        tags[tracking.AIRFLOW_RUN_ID_TAG] = airflow_run_id

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
        timer = recipe.EpochTimer()
        epoch_logger = _MlflowEpochLogger(cfg, run.info.run_id, timer)
        with recipe.precision_policy(precision):
            model = recipe.build_and_compile(cfg)
            fit = recipe.fit(
                model, cfg, training.train.dataset, training.val.dataset,
                n_train=training.train.size, checkpoint_dir=Path(tmp),
                timer=timer, callbacks=[epoch_logger],
            )
        serving_model = recipe.float32_copy(model, cfg)

        calibrated = _log_evaluation_artifacts(serving_model, cfg, training, fit.history)
        mlflow.log_metrics(
            {
                "best_epoch": fit.best_epoch,
                "best_val_accuracy": fit.best_val_accuracy,
                "best_val_loss": fit.best_val_loss,
                "images_per_second": fit.images_per_second,
                "train_seconds": fit.train_seconds,
            }
        )
        # The server has just taken the essential metrics: send what it refused during fit,
        # before log_model links the run's metrics to the model.
        epoch_logger.finish()
        model_uri = model_package.log_model(
            serving_model, cfg, training.val.paths[0], temperature=calibrated.temperature
        )
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
            best_epoch=fit.best_epoch,
            best_val_accuracy=fit.best_val_accuracy,
            best_val_loss=fit.best_val_loss,
            final_val_accuracy=fit.history["val_accuracy"][-1],
            epochs_run=fit.epochs_run,
            train_images=training.train.size,
            val_images=training.val.size,
            test_images=training.test.size,
            images_per_second=fit.images_per_second,
            train_seconds=fit.train_seconds,
            airflow_run_id=airflow_run_id,
            temperature=calibrated.temperature,
            val_ece_uncalibrated=_finite_or_none(calibrated.ece_uncalibrated),
            val_ece=_finite_or_none(calibrated.ece_calibrated),
        )
        # Last thing in the run: a finished run with this file is a complete training.
        mlflow.log_dict(report.as_dict(), tracking.TRAIN_REPORT_ARTIFACT)
    log.info("%s", report.summary())
    return report


def training_settings_digest(cfg: PipelineConfig) -> str:
    """sha256 of the settings that change what a training produces (not where it logs): those
    declared ``affects_model`` (:func:`weather_tasks.config.training_settings`)."""
    settings = config.training_settings(cfg)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _finished_report(
    cfg: PipelineConfig, airflow_run_id: str, version: str, settings_digest: str
) -> TrainReport | None:
    client = tracking.client(cfg)
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        experiment_ids=[experiment.experiment_id],
        filter_string=(
            f"{tracking.airflow_run_filter(airflow_run_id)} "
            f"and tags.{tracking.MANIFEST_VERSION_TAG} = '{version}' "
            f"and tags.{tracking.SETTINGS_DIGEST_TAG} = '{settings_digest}' "
            "and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
    )
    for run in runs:
        try:
            saved = tracking.load_run_dict(client, run.info.run_id, tracking.TRAIN_REPORT_ARTIFACT)
        except Exception:  # noqa: BLE001 - no report: not a complete training, look further
            continue
        return TrainReport(**saved)
    return None


def _log_dataset(cfg: PipelineConfig, m: manifest.Manifest, training: data.TrainingData) -> None:
    """The manifest as the run's dataset input: its S3 URI and digest (MLflow keeps 36 chars)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    uri = manifest.manifest_uri(cfg, m.version)
    # MetaDataset is concrete at run time; its type stubs leave ``profile`` abstract.
    dataset = MetaDataset(  # type: ignore[abstract]
        source=resolve_dataset_source(uri), name=f"weather-manifest-{m.version}",
        digest=m.digest[:36],
    )
    mlflow.log_input(
        dataset,
        context="training",
        tags={
            "manifest_version": m.version,
            "manifest_sha256": m.digest,
            "splits": json.dumps(training.counts(), sort_keys=True),
        },
    )


class _MlflowEpochLogger(keras.callbacks.Callback):
    """One ``log_batch`` call per epoch: losses, accuracies and the epoch's LR.

    An epoch's metrics are worth less than the training: when the tracking server cannot take
    them (MLflow's own HTTP retries spent on 5xx answers, timeouts or refused connections), a
    one-line warning names the server, the points are kept and sent again with the next
    epoch's, and a last time by :meth:`finish` once the essential metrics have gone through.
    The points still missing then are counted in the run's ``METRICS_INCOMPLETE_TAG``. Any other
    MLflow error (a bad value, a deleted run) is a bug and stops the training.
    """

    def __init__(self, cfg: PipelineConfig, run_id: str, timer: recipe.EpochTimer) -> None:
        super().__init__()
        self.cfg = cfg
        self.run_id = run_id
        self.timer = timer
        self.client = tracking.client(cfg)
        self.pending: list[Metric] = []

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        logs = logs or {}
        values = {
            k: float(logs[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs
        }
        values["lr"] = self.timer.learning_rates[epoch]
        if epoch < len(self.timer.train_seconds):
            values["epoch_train_seconds"] = self.timer.train_seconds[epoch]
        now = int(time.time() * 1000)
        self.pending += [Metric(k, v, now, epoch) for k, v in values.items()]
        error = self._send_pending()
        if error is not None:
            log.warning(
                "epoch %d metrics not logged (training goes on; %d points kept to send with "
                "the next epoch's): %s",
                epoch + 1,
                len(self.pending),
                error,
            )

    def finish(self) -> None:
        """Send what is still pending; tag the run with the count of points that stay missing."""
        error = self._send_pending()
        if error is None:
            return
        log.warning(
            "%d epoch metric points of run %s are missing (tag %s): %s",
            len(self.pending),
            self.run_id,
            tracking.METRICS_INCOMPLETE_TAG,
            error,
        )
        self.client.set_tag(self.run_id, tracking.METRICS_INCOMPLETE_TAG, len(self.pending))

    def _send_pending(self) -> tracking.TrackingError | None:
        """One batch of every pending point (resent ones keep their timestamps: MLflow stores a
        point once); the error when the server could not take it."""
        if not self.pending:
            return None
        try:
            with tracking.mlflow_errors(self.cfg):
                self.client.log_batch(self.run_id, metrics=self.pending)
        except tracking.TrackingError as error:
            return error
        self.pending = []
        return None


@dataclass(frozen=True)
class CalibrationReport:
    """Temperature scaling fitted on one split: the temperature and what it changed."""

    temperature: float
    n: int
    ece_uncalibrated: float  # NaN without a usable row
    ece_calibrated: float
    log_loss_uncalibrated: float
    log_loss_calibrated: float
    reliability_uncalibrated: list[dict[str, Any]]
    reliability_calibrated: list[dict[str, Any]]
    fitted_on: str = "val"
    bins: int = calibration.ECE_BINS

    def as_dict(self) -> dict[str, Any]:
        """``reports/calibration.json``: strict JSON (NaN written as null)."""
        return {
            "method": "temperature scaling",
            "fitted_on": self.fitted_on,
            "n": self.n,
            "temperature": self.temperature,
            "bins": self.bins,
            "ece_uncalibrated": _finite_or_none(self.ece_uncalibrated),
            "ece_calibrated": _finite_or_none(self.ece_calibrated),
            "reliability_uncalibrated": self.reliability_uncalibrated,
            "reliability_calibrated": self.reliability_calibrated,
            "log_loss_uncalibrated": _finite_or_none(self.log_loss_uncalibrated),
            "log_loss_calibrated": _finite_or_none(self.log_loss_calibrated),
        }


def calibration_report(
    labels: Sequence[str], probs: Any, classes: Sequence[str], *, fitted_on: str = "val"
) -> tuple[CalibrationReport, np.ndarray]:
    """Fit the temperature on ``probs`` (uncalibrated, as the model gives them) and ``labels``;
    the report and the calibrated probabilities (NaN rows, images the model could not
    classify, stay NaN and are left out of the fit and of the ECE)."""
    uncalibrated = np.asarray(probs, dtype=np.float64)
    indices = calibration.label_indices(labels, classes)
    temperature = calibration.fit_temperature(uncalibrated, indices)
    calibrated = calibration.apply_temperature(uncalibrated, temperature)
    report = CalibrationReport(
        temperature=temperature,
        n=len(labels),
        ece_uncalibrated=calibration.expected_calibration_error(uncalibrated, indices),
        ece_calibrated=calibration.expected_calibration_error(calibrated, indices),
        log_loss_uncalibrated=metrics.compute_metrics(labels, uncalibrated, classes).log_loss,
        log_loss_calibrated=metrics.compute_metrics(labels, calibrated, classes).log_loss,
        reliability_uncalibrated=calibration.reliability_bins(uncalibrated, indices),
        reliability_calibrated=calibration.reliability_bins(calibrated, indices),
        fitted_on=fitted_on,
    )
    return report, calibrated


def _finite_or_none(value: float) -> float | None:
    """A float for JSON: NaN/inf (not valid JSON, and unequal to itself) as None."""
    return float(value) if np.isfinite(value) else None


def _log_evaluation_artifacts(
    model: keras.Model,
    cfg: PipelineConfig,
    training: data.TrainingData,
    history: dict[str, list[float]],
) -> CalibrationReport:
    """Fit the temperature on val, then log the learning curve, the val confusion matrix (PNG),
    the val report (JSON), the calibration report and reliability diagram, and their metrics;
    all of the model as it is served: ``tta_flip`` and the temperature included.

    The val split is predicted once: the calibrated probabilities are derived from the
    uncalibrated ones (temperature scaling keeps every argmax, so the confusion matrix and
    accuracy are the same either way; the log loss is the calibrated one)."""
    uncalibrated = recipe.predict_probabilities(model, training.val.dataset, cfg)
    cal, probs = calibration_report(training.val.labels, uncalibrated, cfg.classes)
    val = metrics.compute_metrics(training.val.labels, probs, cfg.classes)
    report = (
        {"classes": list(cfg.classes)}
        | val.as_dict()
        | {
            "split": "val",
            "manifest_version": training.manifest.version,
            "temperature": cal.temperature,
        }
    )
    mlflow.log_dict(report, tracking.VAL_REPORT_ARTIFACT)
    title = f"{cfg.model}, {cfg.image_size} px, manifest {training.manifest.version}"
    curve = plots.learning_curve_figure(history, title=title)
    mlflow.log_figure(curve, tracking.LEARNING_CURVE_PLOT)
    mlflow.log_figure(
        plots.confusion_matrix_figure(np.asarray(report["confusion_matrix"]), cfg.classes, "val"),
        tracking.CONFUSION_MATRIX_VAL_PLOT,
    )
    mlflow.log_dict(cal.as_dict(), tracking.CALIBRATION_ARTIFACT)
    mlflow.log_figure(
        plots.reliability_figure(
            {
                f"uncalibrated (ECE {cal.ece_uncalibrated:.3f})": cal.reliability_uncalibrated,
                f"T={cal.temperature:.2f}, as served (ECE {cal.ece_calibrated:.3f})":
                    cal.reliability_calibrated,
            },
            title=f"reliability, val n={cal.n} ({cfg.model}, {training.manifest.version})",
        ),
        tracking.RELIABILITY_VAL_PLOT,
    )
    mlflow.log_metrics(
        {"val_accuracy_best_model": val.accuracy}
        | {f"val_recall_{c}": val.per_class[c].recall for c in cfg.classes}
        | {
            tracking.TEMPERATURE_METRIC: cal.temperature,
            tracking.VAL_ECE_UNCALIBRATED_METRIC: cal.ece_uncalibrated,
            tracking.VAL_ECE_METRIC: cal.ece_calibrated,
        }
    )
    return cal
