"""Pure parts of the training stage's tracking: which settings identify a training."""

from __future__ import annotations

import pytest

from weather_tasks import config, train


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({"mlflow_tracking_uri": "http://elsewhere:5000"}, True),
        ({"bucket": "other-bucket", "parallelism": 2}, True),
        ({"epochs": 99}, False),
        ({"image_size": 128}, False),
        ({"precision": "mixed_bfloat16"}, False),
        ({"seed": 1}, False),
    ],
)
def test_settings_digest_tracks_only_what_changes_the_model(
    change: dict[str, object], same: bool
) -> None:
    base = config.from_env(environ={})
    changed = config.override(base, **change)
    digest_equal = train.training_settings_digest(base) == train.training_settings_digest(changed)
    assert digest_equal is same
