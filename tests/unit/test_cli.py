"""The ``weather`` command's parser: flags come from the per-run settings, nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from weather_tasks import cli


def test_train_flags_are_the_per_run_training_settings() -> None:
    args = cli._parser().parse_args(["train", "--epochs", "3", "--model", "model_1"])
    assert (args.epochs, args.model, args.batch_size) == (3, "model_1", None)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--bucket", "other"],  # deployment settings are never flags
        ["train", "--mlflow-tracking-uri", "http://x"],
        ["ingest", "--epochs", "3"],  # a flag belongs to the commands that use it
        ["train", "--model", "resnet"],
        ["train", "--epochs", "ten"],
    ],
)
def test_other_flags_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli._parser().parse_args(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_help_names_the_variable_and_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "$WEATHER_EPOCHS or 100" in out and "$WEATHER_MODEL or model_3" in out


def test_out_of_range_flag_is_a_configuration_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["evaluate", "some-run", "--min-delta", "2"]) == 2
    assert "WEATHER_MIN_DELTA" in capsys.readouterr().err


def test_a_failure_is_one_line_and_v_adds_the_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing")
    assert cli.main(["upload", missing]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"weather upload: error: {missing} is not a folder"]
    assert cli.main(["-v", "upload", missing]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "IngestError" in err
    assert err.strip().splitlines()[-1] == f"weather upload: error: {missing} is not a folder"


@pytest.mark.parametrize(("env", "retries"),
                         [({}, "1"), ({"WEATHER_MLFLOW_HTTP_RETRIES": "4"}, "4")])
def test_the_cli_waits_less_for_mlflow_unless_told(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], retries: str
) -> None:
    """Interactive defaults: an unreachable tracking server fails in seconds, not minutes."""
    monkeypatch.delenv("WEATHER_MLFLOW_HTTP_RETRIES", raising=False)
    monkeypatch.delenv("WEATHER_MLFLOW_HTTP_TIMEOUT", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cli.main(["upload", str(tmp_path / "missing")])
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == retries
    assert int(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]) <= 30
