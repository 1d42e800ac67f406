"""The ``weather`` command's parser: flags come from the per-run settings, nothing else."""

from __future__ import annotations

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
