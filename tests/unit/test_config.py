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


def test_model_too_large_for_the_image_size_is_a_config_error() -> None:
    """A cross-field rule: caught when the config is built, before any run starts."""
    with pytest.raises(ConfigError, match="WEATHER_IMAGE_SIZE.*model_2.*at least 96"):
        config.from_env(environ={"WEATHER_MODEL": "model_2", "WEATHER_IMAGE_SIZE": "64"})
    base = config.from_env(environ={"WEATHER_IMAGE_SIZE": "64"})
    with pytest.raises(ConfigError, match="model_2"):
        config.override(base, model="model_2")
    assert config.override(base, model="model_2", image_size=96).image_size == 96


def test_every_setting_is_declared_once() -> None:
    """Help, type and default live on the field; env names, params and flags derive from it."""
    declared = config.settings()
    assert set(declared) == {f.removeprefix("WEATHER_").lower() for f in config.env_names()}
    for name, (_, setting, _) in declared.items():
        assert setting.help, name
        assert not setting.commands or setting.per_run, name  # flags only for per-run settings


def test_dag_params_come_from_the_declarations() -> None:
    params = config.dag_params()
    assert set(params) == set(config.per_run_settings())
    assert params["epochs"]["minimum"] == 1 and params["epochs"]["maximum"] == 10_000
    assert params["epochs"]["type"] == ["null", "integer"]
    assert params["model"]["enum"] == [None, *config.MODELS]
    assert params["force_retrain"] == {
        "default": False,
        "type": "boolean",
        "title": "Force retraining",
        "description": "Train even when ingest found no new images (on the latest manifest).",
    }
    assert "WEATHER_EPOCHS" in params["epochs"]["description"]


def test_cli_flags_come_from_the_declarations() -> None:
    train = dict(config.cli_flags("train"))
    assert set(train) == {
        "--recipe",
        "--model",
        "--image-size",
        "--epochs",
        "--batch-size",
        "--precision",
    }
    assert train["--epochs"]["type"] is int and "$WEATHER_EPOCHS" in train["--epochs"]["help"]
    assert train["--recipe"]["choices"] == ("default", "seed", "cpu")
    assert set(dict(config.cli_flags("evaluate"))) == {"--min-delta", "--non-inferiority-margin"}
    assert config.cli_flags("ingest") == []


@pytest.mark.parametrize(
    ("raw", "expected"), [("true", True), ("False", False), ("1", True), ("no", False)]
)
def test_switches_parse(raw: str, expected: bool) -> None:
    assert config.from_env(environ={"WEATHER_FORCE_RETRAIN": raw}).force_retrain is expected


def test_a_bad_switch_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="WEATHER_FORCE_RETRAIN"):
        config.from_env(environ={"WEATHER_FORCE_RETRAIN": "maybe"})


@pytest.mark.parametrize(
    ("raw", "cron"),
    [("", "0 2 * * *"), ("none", None), ("Manual", None), ("30 3 * * 1-5", "30 3 * * 1-5")],
)
def test_schedule(raw: str, cron: str | None) -> None:
    assert config.from_env(environ={"WEATHER_SCHEDULE": raw}).cron == cron


def test_parse_time_reads_only_what_it_names() -> None:
    """A bad training setting must fail its run, not hide the DAG: parse time ignores it."""
    env = {"WEATHER_EPOCHS": "0", "WEATHER_REGISTERED_MODEL": "wc"}
    assert config.from_env_only(("schedule", "registered_model"), env).registered_model == "wc"
    with pytest.raises(ConfigError):
        config.from_env(environ=env)


@pytest.mark.parametrize(
    "name",
    [
        "WEATHER_BUCKET",
        "WEATHER_MLFLOW_TRACKING_URI",
        "WEATHER_INCOMING_PREFIX",
        "WEATHER_CURATED_PREFIX",
        "WEATHER_QUARANTINE_PREFIX",
    ],
)
@pytest.mark.parametrize("raw", ["", "  "])
def test_an_empty_required_setting_is_an_error_naming_it(name: str, raw: str) -> None:
    """Falling back to the default bucket or tracking server would silently use other data."""
    with pytest.raises(ConfigError, match=f"{name} .*set but empty"):
        config.from_env(environ={name: raw})


def test_empty_means_the_default_where_compose_relies_on_it() -> None:
    """compose passes unset settings as "" (docker/compose.yaml's ${WEATHER_X:-})."""
    empty = {
        config.env_name(n): ""
        for n, (_, s, _) in config.settings().items()
        if s.empty_means_default
    }
    assert {
        "WEATHER_EPOCHS",
        "WEATHER_SCHEDULE",
        "WEATHER_REGISTERED_MODEL",
        "WEATHER_S3_ENDPOINT_URL",
    } <= set(empty)
    assert config.from_env(environ=empty) == config.from_env(environ={})


def test_timeouts_and_http_retries_are_settings() -> None:
    c = config.from_env(
        environ={
            "WEATHER_S3_CONNECT_TIMEOUT": "2.5",
            "WEATHER_S3_READ_TIMEOUT": "7",
            "WEATHER_MLFLOW_HTTP_RETRIES": "0",
            "WEATHER_MLFLOW_HTTP_TIMEOUT": "9",
        }
    )
    assert (c.s3_connect_timeout, c.s3_read_timeout) == (2.5, 7.0)
    assert (c.mlflow_http_retries, c.mlflow_http_timeout) == (0, 9)
    defaults = config.from_env(environ={})
    assert 0 < defaults.s3_connect_timeout <= 10 and 0 < defaults.s3_read_timeout <= 60
    for env in (
        {"WEATHER_S3_READ_TIMEOUT": "0"},
        {"WEATHER_S3_CONNECT_TIMEOUT": "-1"},
        {"WEATHER_MLFLOW_HTTP_RETRIES": "-1"},
    ):
        with pytest.raises(ConfigError, match=next(iter(env))):
            config.from_env(environ=env)


@pytest.mark.parametrize("url", ["http://127.0.0.1:70000", "http://:9000", "https://"])
def test_an_endpoint_without_a_valid_host_and_port_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="WEATHER_S3_ENDPOINT_URL"):
        config.from_env(environ={"WEATHER_S3_ENDPOINT_URL": url})


@pytest.mark.parametrize(
    ("variable", "instead"),
    [
        ("WEATHER_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"),
        ("WEATHER_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"),
        ("WEATHER_MLFLOW_UI_URL", "log in to MLflow in the browser"),
    ],
)
@pytest.mark.parametrize(
    "url",
    [
        "http://weather-pipeline:s3cr3t-Pa55@mlflow:5000",
        "https://weather-pipeline:s3cr3t-Pa55@mlflow.example/prefix?x=1",
        "http://s3cr3t-Pa55@127.0.0.1:9000",  # a token as the user name
        "http://weather-pipeline:s3cr3t-Pa55@x@mlflow:5000",  # an @ in the password
        "http://weather-pipeline:s3cr3t-Pa55@mlflow:70000",  # also a bad port: this error first
    ],
)
def test_a_url_carrying_credentials_is_refused_without_echoing_them(
    variable: str, instead: str, url: str
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        config.from_env(environ={variable: url})
    message = str(excinfo.value)
    assert message.startswith(variable) and "credentials" in message
    assert instead in message
    assert "s3cr3t-Pa55" not in message and "\n" not in message


@pytest.mark.parametrize("variable", ["WEATHER_S3_ENDPOINT_URL", "WEATHER_MLFLOW_UI_URL"])
def test_credentials_without_a_scheme_are_not_echoed_either(variable: str) -> None:
    """``user:pw@host:9000`` parses as scheme ``user``: the scheme check must not quote it."""
    with pytest.raises(ConfigError, match="carries credentials") as excinfo:
        config.from_env(environ={variable: "weather-admin:s3cr3t-Pa55@minio:9000"})
    assert "s3cr3t-Pa55" not in str(excinfo.value)


@pytest.mark.parametrize("setting", ["mlflow_tracking_uri", "s3_endpoint_url", "mlflow_ui_url"])
def test_an_at_sign_after_the_host_is_not_a_credential(setting: str) -> None:
    url = "http://mlflow.example:5000/team@weather"
    c = config.from_env(environ={config.env_name(setting): url})
    assert getattr(c, setting) == url


# The seed notebook's recipe, as its code says (DESIGN.md "What the seed does").
NOTEBOOK = {
    "model": "model_3",
    "image_size": 250,
    "epochs": 100,
    "batch_size": 16,
    "learning_rate": 1e-3,
    "lr_factor": 0.1,
    "lr_patience": 5,
    "lr_min": 1e-30,
    "lr_cooldown": 3,
    "label_smoothing": 0.0,
    "weight_decay": 0.0,
    "bn_momentum": 0.99,
    "progressive_resize": 0,
    "tta_flip": False,
}


def _recipe_of(c: config.PipelineConfig) -> dict[str, object]:
    return {k: getattr(c, k) for k in NOTEBOOK}


def test_the_seed_recipe_is_one_setting_away_whatever_the_deployment_says() -> None:
    env = {
        "WEATHER_EPOCHS": "7",
        "WEATHER_LABEL_SMOOTHING": "0.1",
        "WEATHER_TTA_FLIP": "true",
        "WEATHER_MODEL": "model_1",
        "WEATHER_IMAGE_SIZE": "64",
    }
    deployment = config.from_env(environ=env)
    assert (deployment.epochs, deployment.model, deployment.tta_flip) == (7, "model_1", True)
    run = config.override(deployment, recipe="seed")
    assert run.recipe == "seed" and _recipe_of(run) == NOTEBOOK


def test_settings_given_beside_the_recipe_win() -> None:
    from_env = config.from_env(environ={"WEATHER_RECIPE": "seed", "WEATHER_EPOCHS": "3"})
    assert from_env.epochs == 3 and _recipe_of(from_env) == NOTEBOOK | {"epochs": 3}
    run = config.override(config.from_env(environ={}), recipe="seed", batch_size=4)
    assert _recipe_of(run) == NOTEBOOK | {"batch_size": 4}


def test_the_default_recipe_is_the_current_defaults() -> None:
    tuned = config.from_env(environ={"WEATHER_WEIGHT_DECAY": "0.01", "WEATHER_EPOCHS": "9"})
    back = config.override(tuned, recipe="default")
    assert _recipe_of(back) == _recipe_of(config.from_env(environ={}))
    with pytest.raises(ConfigError, match="WEATHER_RECIPE.*default, seed, cpu"):
        config.from_env(environ={"WEATHER_RECIPE": "fast"})


def test_the_cpu_recipe_is_the_defaults_at_128_px_for_60_epochs() -> None:
    tuned = config.from_env(environ={"WEATHER_LABEL_SMOOTHING": "0.1", "WEATHER_EPOCHS": "9"})
    cpu = config.override(tuned, recipe="cpu")
    defaults = _recipe_of(config.from_env(environ={}))
    assert _recipe_of(cpu) == defaults | {"image_size": 128, "epochs": 60}
    assert _recipe_of(config.override(tuned, recipe="cpu", epochs=20))["epochs"] == 20


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"progressive_resize": 128, "image_size": 128}, "progressive_resize.*128 must be in"),
        ({"progressive_resize": 8, "image_size": 64}, r"progressive_resize.*must be in \[16"),
        ({"progressive_resize": 64, "model": "model_1"}, "model_1's weights depend on the input"),
        ({"label_smoothing": 0.6}, "WEATHER_LABEL_SMOOTHING"),
        ({"bn_momentum": 1.0}, "WEATHER_BN_MOMENTUM"),
        ({"weight_decay": -0.1}, "WEATHER_WEIGHT_DECAY"),
        ({"non_inferiority_margin": -0.01}, "WEATHER_NON_INFERIORITY_MARGIN"),
    ],
)
def test_recipe_options_are_validated(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.override(config.from_env(environ={}), **changes)


def test_training_settings_are_the_declared_ones() -> None:
    names = set(config.training_settings(config.from_env(environ={})))
    assert set(NOTEBOOK) | {"classes", "precision", "seed"} == names
