"""The ``weather`` command: flags from the per-run settings, help, version, verbosity, and
``predict``'s input checks (before anything is loaded)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from PIL import Image

from tests.support import REPO
from weather_tasks import cli, config


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


# --- help, version, verbosity ------------------------------------------------------------------
def _subparser(command: str) -> argparse.ArgumentParser:
    actions = [a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices[command]


@pytest.mark.parametrize("command", sorted(cli.READS))
def test_subcommand_help_has_a_description_an_example_and_its_settings(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(_subparser(command).description or "") > 40
    with pytest.raises(SystemExit) as exc:
        cli._parser().parse_args([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"examples:\n  weather {command}" in out
    settings = out.split("settings (environment variable=default):\n", 1)[1]
    listed = {line.split()[0].split("=")[0] for line in settings.splitlines()
              if line.startswith("  WEATHER_")}
    expected = set(cli.READS[command]) | set(config.per_run_settings(command))
    assert listed == {config.env_name(name) for name in expected}


def test_settings_help_shows_the_cli_defaults() -> None:
    text = cli.settings_help("predict")
    assert "WEATHER_MLFLOW_HTTP_RETRIES=1 " in text  # INTERACTIVE_DEFAULTS, not the DAG's 5
    assert "  WEATHER_MIN_IMAGE_SIDE=32 " in text
    assert "  WEATHER_REGISTERED_MODEL=weather-classifier\n" in text
    assert "MLflow registered model" in text


def test_commands_read_only_declared_settings() -> None:
    declared = set(config.settings())
    for command, names in cli.READS.items():
        assert set(names) <= declared, (command, sorted(set(names) - declared))


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"weather {metadata.version('weather-retrain')} (mlflow ")
    assert f"keras {metadata.version('keras')}" in out and "tensorflow " in out


@pytest.mark.parametrize(
    ("argv", "verbosity"),
    [(["predict", "x.jpg"], 0), (["-v", "predict", "x.jpg"], 1),
     (["predict", "-v", "x.jpg"], 1), (["-vv", "status"], 2), (["status", "-vv"], 2)],
)
def test_verbose_before_or_after_the_command(argv: list[str], verbosity: int) -> None:
    assert cli._parser().parse_args(argv).verbose == verbosity


# --- predict checks its inputs before loading anything ---------------------------------------
@pytest.fixture
def closed_mlflow(monkeypatch: pytest.MonkeyPatch) -> str:
    """A tracking URI where nothing listens: any attempt to resolve a model fails loudly."""
    from devtools.local_services import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("WEATHER_MLFLOW_TRACKING_URI", uri)
    for name in ("WEATHER_REGISTERED_MODEL", "WEATHER_MAX_OBJECT_BYTES",
                 "WEATHER_MIN_IMAGE_SIDE"):
        monkeypatch.delenv(name, raising=False)
    return uri


def _photo(path: Path, side: int = 64) -> Path:
    Image.new("RGB", (side, side), (90, 140, 200)).save(path)
    return path


def test_predict_reports_each_unusable_file_in_one_line_and_loads_no_model(
    tmp_path: Path, closed_mlflow: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.jpg"
    folder = tmp_path / "folder"
    folder.mkdir()
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    tiny = _photo(tmp_path / "tiny.png", side=8)
    rc = cli.main(["predict", *(str(p) for p in (missing, folder, text, empty, tiny))])
    out, err = capsys.readouterr()
    assert (rc, err) == (1, "")  # nothing asked the (closed) tracking server
    assert out.splitlines() == [
        "model: not loaded (models:/weather-classifier@champion): no usable image",
        f"{missing}: unreadable: no such file or directory",
        f"{folder}: unreadable: is a directory",
        f"{text}: not_an_image: content is not a recognised image format",
        f"{empty}: empty: the object has no bytes",
        f"{tiny}: too_small: 8x8 is below 32 px",
    ]


def test_predict_checks_the_size_before_reading(
    tmp_path: Path, closed_mlflow: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    photo = _photo(tmp_path / "photo.png")
    monkeypatch.setenv("WEATHER_MAX_OBJECT_BYTES", "100")
    assert cli.main(["predict", "--json", str(photo)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["model_uri"] is None
    assert out["requested_model_uri"] == "models:/weather-classifier@champion"
    (row,) = out["predictions"]
    assert row["error_code"] == "too_many_bytes" and row["error"].endswith("bytes > 100")


def test_predict_asks_mlflow_once_a_file_is_usable(
    tmp_path: Path, closed_mlflow: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other side of the check: a usable file goes on to resolve the model."""
    photo = _photo(tmp_path / "photo.png")
    assert cli.main(["predict", str(photo), str(tmp_path / "missing.jpg")]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip().splitlines() == [
        f"weather predict: error: MLflow tracking server {closed_mlflow}: cannot connect "
        "(2 attempts): is it running and WEATHER_MLFLOW_TRACKING_URI right?"
    ]


def test_predict_without_a_usable_file_imports_no_mlflow_or_tensorflow(
    tmp_path: Path, closed_mlflow: str
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    code = (
        "import sys\n"
        "from weather_tasks import cli\n"
        f"rc = cli.main(['predict', {str(text)!r}])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} "
        "& {'mlflow', 'tensorflow', 'keras', 'pandas'}))\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == "[]"
    assert proc.stderr == ""


def test_version_imports_neither_storage_nor_tracking_libraries() -> None:
    """`weather --version` (and the parser every command builds, with its entry-point
    subcommands such as the demo) stays quick: no boto3, MLflow or TensorFlow import."""
    code = (
        "import sys\n"
        "from weather_tasks import cli\n"
        "try:\n"
        "    cli.main(['--version'])\n"
        "except SystemExit as exit:\n"
        "    rc = exit.code\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} "
        "& {'boto3', 'botocore', 'mlflow', 'tensorflow', 'keras'}))\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[0].startswith("weather ")
    assert proc.stdout.splitlines()[-1] == "[]"


def test_native_startup_notices_are_filtered_from_fd2_and_the_rest_passes() -> None:
    """TensorFlow's C++ notices reach fd 2 before any setting can silence them (seen on
    AVX-512 Xeons): the quiet CLI drops exactly those lines and keeps the rest, in order."""
    script = """if True:
        import os, sys
        from weather_tasks import cli
        with cli._native_notices_filtered():
            os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called\\n")
            os.write(2, b"I0000 00:00:1795932283.724712   26814 port.cc:153] oneDNN on.\\n")
            os.write(2, b"E0000 00:00:1795932283.7 26814 x.cc:1] a real native error\\n")
            os.write(2, b"To enable the following instructions: AVX2 FMA, rebuild\\n")
            print("weather train: error: something failed", file=sys.stderr, flush=True)
        print("after", file=sys.stderr)
    """
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "E0000 00:00:1795932283.7 26814 x.cc:1] a real native error",
        "weather train: error: something failed",
        "after",
    ]
