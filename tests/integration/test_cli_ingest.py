"""`weather upload` and `weather ingest --json` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.corpus import image_bytes

pytestmark = pytest.mark.integration
WEATHER = str(Path(sys.executable).with_name("weather"))


def _weather(cfg, *args: str, extra_env: dict[str, str] | None = None):
    env = {
        **os.environ,
        "WEATHER_BUCKET": cfg.bucket,
        "WEATHER_S3_ENDPOINT_URL": cfg.s3_endpoint_url,
        "WEATHER_WORK_DIR": str(cfg.work_dir),
        **(extra_env or {}),
    }
    return subprocess.run(
        [WEATHER, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_upload_then_ingest_json(cfg, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, cls in enumerate(cfg.classes):
        (photos / f"{cls}{i}.jpg").write_bytes(image_bytes("JPEG", seed=i))
    (photos / "notes.jpg").write_bytes(b"not a photo")

    up = _weather(cfg, "upload", str(photos), "--json")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["uploaded"] == 5

    first = _weather(cfg, "ingest", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["new"] == 5 and report["accepted"] == 4
    assert report["quarantined"] == {"no_class": 1}
    assert report["manifest_version"] == "v000001"

    again = json.loads(_weather(cfg, "ingest", "--json").stdout)
    assert (again["new"], again["manifest_version"]) == (0, "v000001")
    text = _weather(cfg, "ingest")
    assert "0 new" in text.stdout and "manifest unchanged (v000001)" in text.stdout


def test_bad_setting_is_named(cfg) -> None:
    out = _weather(cfg, "ingest", extra_env={"WEATHER_SPLIT_RATIOS": "0.9,0.3"})
    assert out.returncode == 2
    assert "WEATHER_SPLIT_RATIOS" in out.stderr


def test_missing_bucket_is_a_clear_error(cfg) -> None:
    out = _weather(cfg, "ingest", extra_env={"WEATHER_BUCKET": "missing-bucket"})
    assert out.returncode == 1
    assert "bucket 'missing-bucket' does not exist" in out.stderr
    assert "Traceback" not in out.stderr
