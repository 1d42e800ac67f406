"""Pure parts of the training stage's tracking: which settings identify a training, the train
report read back across versions, and the calibration report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from weather_tasks import config, train

# One other value for every setting that changes the model a training produces.
TRAINING_CHANGES: dict[str, object] = {
    "classes": ("rain", "shine"),
    "model": "model_1",
    "image_size": 128,
    "epochs": 99,
    "batch_size": 8,
    "learning_rate": 0.01,
    "lr_factor": 0.5,
    "lr_patience": 10,
    "lr_min": 1e-6,
    "lr_cooldown": 0,
    "label_smoothing": 0.1,
    "weight_decay": 0.004,
    "bn_momentum": 0.9,
    "progressive_resize": 128,
    "tta_flip": True,
    "precision": "mixed_bfloat16",
    "seed": 1,
}


def test_every_training_setting_has_a_row() -> None:
    assert set(TRAINING_CHANGES) == set(config.training_settings(config.from_env(environ={})))


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({"mlflow_tracking_uri": "http://elsewhere:5000"}, True),
        ({"bucket": "other-bucket", "parallelism": 2}, True),
        ({"min_delta": 0.01, "non_inferiority_margin": 0.02}, True),
        *(({name: value}, False) for name, value in TRAINING_CHANGES.items()),
    ],
)
def test_settings_digest_tracks_only_what_changes_the_model(
    change: dict[str, object], same: bool
) -> None:
    base = config.from_env(environ={})
    changed = config.override(base, **change)
    digest_equal = train.training_settings_digest(base) == train.training_settings_digest(changed)
    assert digest_equal is same


def _report_fields() -> dict[str, object]:
    """A train report as written before calibration existed (no temperature, no ECE)."""
    return {
        "run_id": "r", "experiment_id": "1", "model_uri": "runs:/r/model",
        "manifest_version": "v000001", "manifest_digest": "d", "model": "model_3",
        "image_size": 32, "precision": "float32", "device": "CPU", "best_epoch": 1,
        "best_val_accuracy": 0.5, "best_val_loss": 1.2, "final_val_accuracy": 0.5,
        "epochs_run": 2, "train_images": 28, "val_images": 8, "test_images": 4,
        "images_per_second": 10.0, "train_seconds": 3.0, "airflow_run_id": "manual__x",
    }


def test_a_train_report_from_before_calibration_still_loads() -> None:
    """What the idempotency check reads back: an older run's report, served with T = 1."""
    old = train.TrainReport(**_report_fields())
    assert (old.temperature, old.val_ece_uncalibrated, old.val_ece) == (1.0, None, None)
    assert "temperature" not in old.summary()
    new = train.TrainReport(**_report_fields(), temperature=1.8, val_ece_uncalibrated=0.2,
                            val_ece=0.05)
    assert train.TrainReport(**json.loads(json.dumps(new.as_dict()))) == new
    assert "temperature 1.800: val ECE 0.2000 uncalibrated, 0.0500 as served" in new.summary()


CLASSES = ("cloudy", "rain", "shine", "sunrise")


def _overconfident(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Labels drawn from softmax(z), probabilities softmax(3 z): over-confident by T = 3."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, (n, len(CLASSES)))
    true = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    idx = np.minimum((rng.random((n, 1)) > true.cumsum(axis=1)).sum(axis=1), len(CLASSES) - 1)
    shown = np.exp(3 * z) / np.exp(3 * z).sum(axis=1, keepdims=True)
    return [CLASSES[i] for i in idx], shown


def test_calibration_report_fits_the_temperature_and_shows_what_it_changed() -> None:
    labels, probs = _overconfident(4000)
    probs[7] = np.nan  # an image the model could not classify: left out, stays NaN
    report, calibrated = train.calibration_report(labels, probs, CLASSES)
    assert report.temperature == pytest.approx(3.0, rel=0.1)
    assert report.n == 4000
    assert report.ece_calibrated < 0.03 < 0.1 < report.ece_uncalibrated
    assert report.log_loss_calibrated < report.log_loss_uncalibrated
    assert np.isnan(calibrated[7]).all()
    ok = np.isfinite(probs).all(axis=1)
    assert (calibrated[ok].argmax(axis=1) == probs[ok].argmax(axis=1)).all()
    np.testing.assert_allclose(calibrated[ok].sum(axis=1), 1.0)

    saved = json.loads(json.dumps(report.as_dict(), allow_nan=False))  # strict JSON
    assert saved["method"] == "temperature scaling" and saved["fitted_on"] == "val"
    assert saved["bins"] == 15 == len(saved["reliability_calibrated"])
    assert saved["temperature"] == report.temperature
    assert sum(b["count"] for b in saved["reliability_uncalibrated"]) == 3999
    assert set(saved) >= {"ece_uncalibrated", "ece_calibrated", "log_loss_uncalibrated",
                          "log_loss_calibrated", "reliability_uncalibrated", "n"}


def test_calibration_report_without_a_usable_row_keeps_t_one_and_writes_null() -> None:
    report, calibrated = train.calibration_report(["rain", "shine"], np.full((2, 4), np.nan),
                                                  CLASSES)
    assert report.temperature == 1.0 and np.isnan(calibrated).all()
    saved = json.loads(json.dumps(report.as_dict(), allow_nan=False))
    assert saved["ece_uncalibrated"] is None and saved["ece_calibrated"] is None
