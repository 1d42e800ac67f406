"""PipelineConfig: defaults, environment parsing, validation messages name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from weather_tasks import config
from weather_tasks.config import ConfigError


def test_defaults_are_the_seeds() -> None:
    c = config.from_env(environ={})
    assert c.classes == ("shine", "sunrise", "cloudy", "rain")
    assert c.split_ratios == (0.7, 0.15, 0.15)
    assert c.split_seed == 123
    assert (c.batch_size, c.epochs, c.model, c.image_size) == (16, 100, "model_3", 250)
    assert c.has_test_split


def test_from_env_parses_every_kind() -> None:
    c = config.from_env(
        environ={
            "WEATHER_BUCKET": "photos",
            "WEATHER_CLASSES": "Fog, snow",
            "WEATHER_SPLIT_RATIOS": "0.7,0.3",
            "WEATHER_PARALLELISM": "3",
            "WEATHER_LEARNING_RATE": "0.01",
            "WEATHER_WORK_DIR": "/tmp/x",
            "WEATHER_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
        }
    )
    assert c.bucket == "photos"
    assert c.classes == ("fog", "snow")
    assert c.split_ratios == (0.7, 0.3) and not c.has_test_split
    assert c.parallelism == 3 and c.learning_rate == 0.01
    assert c.work_dir == Path("/tmp/x")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"WEATHER_SPLIT_RATIOS": "0.5,0.2"}, "WEATHER_SPLIT_RATIOS"),
        ({"WEATHER_SPLIT_RATIOS": "1"}, "WEATHER_SPLIT_RATIOS"),
        ({"WEATHER_PARALLELISM": "0"}, "WEATHER_PARALLELISM"),
        ({"WEATHER_PARALLELISM": "many"}, "WEATHER_PARALLELISM"),
        ({"WEATHER_BUCKET": "No Such"}, "WEATHER_BUCKET"),
        ({"WEATHER_CLASSES": "rain"}, "WEATHER_CLASSES"),
        ({"WEATHER_CLASSES": "rain,rain"}, "WEATHER_CLASSES"),
        ({"WEATHER_MODEL": "resnet"}, "WEATHER_MODEL"),
        ({"WEATHER_INCOMING_PREFIX": "incoming"}, "WEATHER_INCOMING_PREFIX"),
        ({"WEATHER_CURATED_PREFIX": "incoming/curated/"}, "WEATHER_CURATED_PREFIX"),
        ({"WEATHER_S3_ENDPOINT_URL": "127.0.0.1:9000"}, "WEATHER_S3_ENDPOINT_URL"),
        ({"WEATHER_IMAGE_SIZE": "8"}, "WEATHER_IMAGE_SIZE"),
        ({"WEATHER_ACCURACY_FLOOR": "1.5"}, "WEATHER_ACCURACY_FLOOR"),
    ],
)
def test_invalid_values_fail_naming_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        config.from_env(environ=env)


def test_override_validates_and_rejects_unknown() -> None:
    c = config.from_env(environ={})
    assert config.override(c, epochs=3, model=None).epochs == 3
    with pytest.raises(ConfigError, match="WEATHER_EPOCHS"):
        config.override(c, epochs=0)
    with pytest.raises(ConfigError, match="unknown setting"):
        config.override(c, nope=1)


def test_env_names_cover_every_field() -> None:
    names = config.env_names()
    assert "WEATHER_BUCKET" in names and "WEATHER_MLFLOW_TRACKING_URI" in names
    assert len(names) == len(set(names))
