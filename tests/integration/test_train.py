"""A tiny real training through the real code path: S3 server, ingest, tf.data, MLflow server.

Forty real photos (ten per class) at 32 px, two epochs: small enough for a 2-core CPU,
real enough that every artifact, metric, input and tag of the run can be checked.
"""

from __future__ import annotations

import csv
import json
import shutil
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.support import mwd_images
from weather_tasks import config, ingest, manifest, tracking, train
from weather_tasks.config import PipelineConfig

pytestmark = pytest.mark.integration

PER_CLASS = 10


@pytest.fixture(autouse=True)
def _mlflow_process(mlflow_server, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """This process tracks to the session's MLflow server, set as an entry point sets it."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(name, "")  # restored after the test
    tracking.configure_process(config.from_env(environ={}, mlflow_tracking_uri=mlflow_server.url))


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """Ten real photos per class, copied into a temporary folder (never into the repo)."""
    images = mwd_images()
    folder = tmp_path / "photos"
    folder.mkdir()
    with open(images.parent / "MANIFEST.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    seen: set[str] = set()
    taken: dict[str, int] = {}
    for row in rows:  # the first distinct photos of each class, in the manifest's order
        if row["sha256"] in seen or taken.get(row["class"], 0) >= PER_CLASS:
            continue
        seen.add(row["sha256"])
        taken[row["class"]] = taken.get(row["class"], 0) + 1
        shutil.copy(images / row["filename"], folder / row["filename"])
    assert sorted(taken.values()) == [PER_CLASS] * 4
    return folder


@pytest.fixture
def train_cfg(cfg: PipelineConfig, mlflow_server, photo_folder: Path, s3) -> PipelineConfig:  # noqa: ANN001
    ingest.upload_folder(cfg, s3, photo_folder)
    report = ingest.ingest(cfg, s3)
    assert report.manifest_version == "v000001"
    return config.override(
        cfg,
        image_size=32,
        epochs=2,
        batch_size=8,
        precision="float32",
        mlflow_tracking_uri=mlflow_server.url,
        experiment_name=f"test-train-{uuid.uuid4().hex[:8]}",
    )


def test_training_run_is_fully_tracked_and_its_model_loads(
    train_cfg: PipelineConfig, s3, photo_folder: Path  # noqa: ANN001
) -> None:
    cfg = train_cfg
    m = manifest.read_manifest(s3, cfg, "v000001")
    report = train.train_model(cfg, "v000001", s3=s3, airflow_run_id="manual__2026-01-01")

    # The report describes this training.
    counts = {s: len(m.split(s)) for s in ("train", "val", "test")}
    assert (report.train_images, report.val_images, report.test_images) == (
        counts["train"], counts["val"], counts["test"],
    )
    assert sum(counts.values()) == 4 * PER_CLASS
    assert report.manifest_version == "v000001" and report.manifest_digest == m.digest
    assert report.epochs_run == 2 and report.best_epoch in (1, 2)
    assert report.precision == "float32" and report.device == "CPU"
    assert report.images_per_second > 0
    assert report.model_uri == f"runs:/{report.run_id}/model"
    assert json.loads(json.dumps(report.as_dict()))["run_id"] == report.run_id  # XCom-safe
    assert "v000001" in report.summary()

    client = MlflowClient(cfg.mlflow_tracking_uri)
    run = client.get_run(report.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == report.experiment_id

    # Every config value is a param.
    for key, value in cfg.as_dict().items():
        assert run.data.params[key] == str(value), key
    assert run.data.params["precision_resolved"] == "float32"

    # Per-epoch metrics, one point per epoch.
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        history = client.get_metric_history(report.run_id, key)
        assert sorted(h.step for h in history) == [0, 1], key
    val_acc = [h.value for h in sorted(client.get_metric_history(report.run_id, "val_accuracy"),
                                      key=lambda h: h.step)]
    lrs = [h.value for h in client.get_metric_history(report.run_id, "lr")]
    assert lrs == [pytest.approx(cfg.learning_rate)] * 2
    assert report.best_val_accuracy == pytest.approx(max(val_acc))
    assert report.best_epoch == val_acc.index(max(val_acc)) + 1
    # The restored weights are the best epoch's: evaluated again on val, same accuracy.
    assert run.data.metrics["val_accuracy_best_model"] == pytest.approx(report.best_val_accuracy)

    # Tags.
    tags = run.data.tags
    assert tags["manifest_version"] == "v000001"
    assert tags["manifest_uri"] == manifest.manifest_uri(cfg, "v000001")
    assert tags["airflow_run_id"] == "manual__2026-01-01"
    assert tags["code_version"].startswith("0.1.0")
    assert "best val_accuracy epoch" in tags["best_checkpoint"]

    # The manifest is the run's dataset input: S3 URI and digest.
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == m.digest[:36]
    assert manifest.manifest_uri(cfg, "v000001") in dataset_input.dataset.source
    input_tags = {t.key: t.value for t in dataset_input.tags}
    assert input_tags["manifest_sha256"] == m.digest
    assert input_tags["mlflow.data.context"] == "training"

    # Plots and the per-class report.
    artifacts = {a.path for a in client.list_artifacts(report.run_id, "plots")}
    assert artifacts == {"plots/learning_curve.png", "plots/confusion_matrix_val.png",
                         tracking.RELIABILITY_VAL_PLOT}
    for name in artifacts:
        local = Path(mlflow.artifacts.download_artifacts(
            run_id=report.run_id, artifact_path=name, tracking_uri=cfg.mlflow_tracking_uri,
        ))
        assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    class_report = mlflow.artifacts.load_dict(
        f"{run.info.artifact_uri}/reports/val_class_report.json"
    )
    assert class_report["n"] == report.val_images
    assert sum(map(sum, class_report["confusion_matrix"])) == report.val_images
    assert set(class_report["per_class"]) == set(cfg.classes)
    assert class_report["accuracy"] == pytest.approx(report.best_val_accuracy)

    # Calibration: a temperature fitted on val, its metrics and report, the val report of the
    # calibrated (served) probabilities; the logged model holds the same temperature (below).
    metrics = run.data.metrics
    temperature = metrics[tracking.TEMPERATURE_METRIC]
    assert 0.05 <= temperature <= 20.0
    assert report.temperature == pytest.approx(temperature)
    assert 0.0 <= metrics[tracking.VAL_ECE_UNCALIBRATED_METRIC] <= 1.0
    assert 0.0 <= metrics[tracking.VAL_ECE_METRIC] <= 1.0
    assert report.val_ece == pytest.approx(metrics[tracking.VAL_ECE_METRIC])
    assert report.val_ece_uncalibrated == pytest.approx(
        metrics[tracking.VAL_ECE_UNCALIBRATED_METRIC])
    calibration_json = mlflow.artifacts.load_dict(
        f"{run.info.artifact_uri}/{tracking.CALIBRATION_ARTIFACT}"
    )
    assert calibration_json["method"] == "temperature scaling"
    assert calibration_json["fitted_on"] == "val"
    assert calibration_json["n"] == report.val_images
    assert calibration_json["temperature"] == pytest.approx(temperature)
    assert calibration_json["ece_calibrated"] == pytest.approx(metrics[tracking.VAL_ECE_METRIC])
    for curve in ("reliability_uncalibrated", "reliability_calibrated"):
        bins = calibration_json[curve]
        assert len(bins) == calibration_json["bins"] == 15
        assert sum(b["count"] for b in bins) == report.val_images
    # T minimizes the val log loss, and T = 1 (uncalibrated) was a candidate.
    log_losses = (calibration_json["log_loss_calibrated"],
                  calibration_json["log_loss_uncalibrated"])
    assert log_losses[0] <= log_losses[1] + 1e-4
    assert class_report["log_loss"] == pytest.approx(calibration_json["log_loss_calibrated"])
    print(f"calibration on {report.val_images} val images: T={temperature:.4f}, "
          f"ECE {metrics[tracking.VAL_ECE_UNCALIBRATED_METRIC]:.4f} -> "
          f"{metrics[tracking.VAL_ECE_METRIC]:.4f}, log loss "
          f"{calibration_json['log_loss_uncalibrated']:.4f} -> "
          f"{calibration_json['log_loss_calibrated']:.4f}")

    # A cleared Airflow task (same Airflow run, manifest and settings) trains nothing again.
    again = train.train_model(cfg, "v000001", s3=s3, airflow_run_id="manual__2026-01-01")
    assert again == report
    runs = client.search_runs([report.experiment_id])
    assert [r.info.run_id for r in runs] == [report.run_id]

    # The logged model loads as a pyfunc (as a downstream service loads it, with the process
    # pointed at the tracking server) and classifies real photos from their bytes.
    model = mlflow.pyfunc.load_model(report.model_uri)
    assert model.model_config["temperature"] == pytest.approx(temperature)
    photos = sorted(photo_folder.iterdir())[:5]
    out = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in photos]}))
    assert len(out) == 5
    assert set(out["label"]) <= set(cfg.classes)
    probs = out[[f"prob_{c}" for c in cfg.classes]].to_numpy(dtype=float)
    assert probs.sum(axis=1) == pytest.approx([1.0] * 5, abs=1e-4)


def test_training_refuses_a_manifest_without_validation_images(
    cfg: PipelineConfig, s3, mlflow_server  # noqa: ANN001
) -> None:
    """A dataset version with no val images cannot drive val_accuracy: a clear error, no run."""
    from weather_tasks.data import DataError

    rec = manifest.ImageRecord(
        sha256="0" * 64, stored_sha256="0" * 64, label="shine", split="train", ext="jpg",
        format="JPEG",
        width=40, height=40, source_keys=("incoming/shine1.jpg",),
        first_seen="2026-01-01T00:00:00Z", first_version="v000001",
    )
    empty_val = manifest.Manifest(
        version="v000001", parent=None, created_at="2026-01-01T00:00:00Z",
        classes=cfg.classes, split_ratios=cfg.split_ratios, split_seed=cfg.split_seed,
        images={rec.sha256: rec},
    )
    manifest.write_manifest(s3, cfg, empty_val)
    experiment = f"test-train-{uuid.uuid4().hex[:8]}"
    cfg = config.override(cfg, mlflow_tracking_uri=mlflow_server.url, experiment_name=experiment)
    with pytest.raises(DataError, match="no val images"):
        train.train_model(cfg, "v000001", s3=s3)
    assert MlflowClient(mlflow_server.url).get_experiment_by_name(experiment) is None


def test_recipe_options_train_through_the_real_path_and_reach_the_served_model(
    train_cfg: PipelineConfig, s3, photo_folder: Path  # noqa: ANN001
) -> None:
    """Every option on at once (each is unit-tested alone): logged as params, trained small then
    at image_size, and served at image_size with the test-time flip the model was logged with.

    Needs model_package.log_model to put ``tta_flip`` in the model config."""
    cfg = config.override(train_cfg, progressive_resize=16, label_smoothing=0.1,
                          weight_decay=0.004, bn_momentum=0.9, tta_flip=True)
    report = train.train_model(cfg, "v000001", s3=s3)

    params = MlflowClient(cfg.mlflow_tracking_uri).get_run(report.run_id).data.params
    assert {k: params[k] for k in ("progressive_resize", "label_smoothing", "weight_decay",
                                   "bn_momentum", "tta_flip")} == {
        "progressive_resize": "16", "label_smoothing": "0.1", "weight_decay": "0.004",
        "bn_momentum": "0.9", "tta_flip": "True"}
    assert report.epochs_run == 2

    model = mlflow.pyfunc.load_model(report.model_uri)
    assert model.model_config["tta_flip"] is True
    temperature = MlflowClient(cfg.mlflow_tracking_uri).get_run(report.run_id).data.metrics[
        tracking.TEMPERATURE_METRIC]
    assert model.model_config["temperature"] == pytest.approx(temperature)
    keras_model = model.unwrap_python_model()._model
    assert keras_model.input_shape == (None, 32, 32, 3)
    photo = sorted(photo_folder.iterdir())[0].read_bytes()
    out = model.predict(pd.DataFrame({"image": [photo]}))
    assert out["error"].isna().all() and out["label"][0] in cfg.classes
