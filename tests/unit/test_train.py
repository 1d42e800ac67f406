"""Pure parts of the training stage's tracking: which settings identify a training."""

from __future__ import annotations

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
