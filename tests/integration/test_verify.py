"""`weather verify [--repair]` and damaged manifests, against a real S3 server over HTTP.

A small dataset is ingested first (3 photos per class and a file with no class); each test then
damages the bucket the way the issue describes and checks what the user sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.corpus import image_bytes
from weather_tasks import ingest, manifest, storage
from weather_tasks.manifest import ManifestError
from weather_tasks.verify import VerifyError, verify

pytestmark = pytest.mark.integration
WEATHER = str(Path(sys.executable).with_name("weather"))


def _weather(cfg, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "WEATHER_BUCKET": cfg.bucket,
        "WEATHER_S3_ENDPOINT_URL": cfg.s3_endpoint_url,
        "WEATHER_WORK_DIR": str(cfg.work_dir),
        "WEATHER_S3_MAX_ATTEMPTS": "2",
    }
    return subprocess.run(
        [WEATHER, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _put(s3, cfg, name: str, body: bytes) -> str:
    key = cfg.incoming_prefix + name
    s3.put_object(Bucket=cfg.bucket, Key=key, Body=body)
    return key


def _keys(s3, cfg, prefix: str) -> dict[str, str]:
    """key -> ETag under ``prefix``."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cfg.bucket, Prefix=prefix):
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return out


@pytest.fixture
def dataset(cfg, s3) -> manifest.Manifest:
    """v000001: 12 images (3 per class) and one quarantined object."""
    for i, cls in enumerate(cfg.classes):
        for j in range(3):
            _put(s3, cfg, f"{cls}_{j}.jpg", image_bytes("JPEG", size=(48, 40), seed=10 * i + j))
    _put(s3, cfg, "readme.jpg", image_bytes("JPEG", size=(48, 40), seed=99))  # no class
    report = ingest.ingest(cfg, s3)
    assert (report.accepted, report.quarantined) == (12, {"no_class": 1})
    return manifest.read_manifest(s3, cfg)


def _rain(m: manifest.Manifest) -> manifest.ImageRecord:
    return next(r for r in m.images.values() if r.source_keys == ("incoming/rain_0.jpg",))


def _delete_curated(s3, cfg, rec: manifest.ImageRecord) -> None:
    s3.delete_object(Bucket=cfg.bucket, Key=manifest.curated_key(cfg, rec.sha256, rec.ext))


def test_healthy_bucket_is_clean(cfg, s3, dataset) -> None:
    report = verify(cfg, s3)
    assert not report.failed
    assert (report.versions, report.checked_version, report.images_checked) == (1, "v000001", 12)
    assert (report.damaged, report.issues) == ({}, ())
    assert (report.orphans, report.stray_records) == ((), ())  # the no_class record is known
    out = _weather(cfg, "verify")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(
        f"verified s3://{cfg.bucket}: 1 manifest versions, 0 damaged; 12 images of v000001 "
        "checked: 0 missing, 0 corrupt; 0 orphans, 0 stray quarantine records;"
    )


def test_missing_image_is_named_then_restored_from_incoming(cfg, s3, dataset) -> None:
    rain = _rain(dataset)
    _delete_curated(s3, cfg, rain)
    uri = f"s3://{cfg.bucket}/curated/images/{rain.sha256}.jpg"

    with pytest.raises(ManifestError) as err:  # what training says
        manifest.fetch_images(s3, cfg, dataset.images.values())
    assert str(err.value) == (
        f"curated image {uri} (label rain, split {rain.split}, sha256 {rain.sha256}, from "
        "incoming/rain_0.jpg) is missing from the bucket: run `weather verify --repair` to "
        "restore it from incoming/ or drop it in a new manifest version"
    )
    assert not err.value.transient

    found = verify(cfg, s3)
    assert found.failed
    assert [(i.uri, i.problem, i.outcome) for i in found.issues] == [(uri, "missing", None)]
    out = _weather(cfg, "verify")
    assert out.returncode == 1
    assert f"  missing: {uri} (label rain, split {rain.split}, from incoming/rain_0.jpg)\n" in (
        out.stdout
    )
    assert "run `weather verify --repair`" in out.stdout

    repaired = _weather(cfg, "verify", "--repair", "--json")
    assert repaired.returncode == 0, repaired.stderr
    report = json.loads(repaired.stdout)
    assert [(i["outcome"], i["detail"]) for i in report["issues"]] == [
        ("restored", "from incoming/rain_0.jpg")
    ]
    assert (report["repaired_version"], report["failed"]) == (None, False)
    assert manifest.list_versions(s3, cfg) == ["v000001"]  # nothing to drop: no new version
    assert len(manifest.fetch_images(s3, cfg, dataset.images.values())) == 12
    assert not verify(cfg, s3).failed


def test_lost_image_is_dropped_in_a_new_version_and_comes_back_when_uploaded(
    cfg, s3, dataset
) -> None:
    rain = _rain(dataset)
    body = s3.get_object(Bucket=cfg.bucket, Key="incoming/rain_0.jpg")["Body"].read()
    _delete_curated(s3, cfg, rain)
    s3.delete_object(Bucket=cfg.bucket, Key="incoming/rain_0.jpg")
    incoming = _keys(s3, cfg, cfg.incoming_prefix)

    report = verify(cfg, s3, repair=True)
    assert not report.failed and report.repaired_version == "v000002"
    assert report.stray_records == ()  # its own new records are not strays
    assert [(i.outcome, i.detail) for i in report.issues] == [
        ("lost", "incoming/rain_0.jpg is gone")
    ]
    assert _keys(s3, cfg, cfg.incoming_prefix) == incoming  # never touched
    m2 = manifest.read_manifest(s3, cfg)
    assert (m2.version, m2.parent, len(m2.images)) == ("v000002", "v000001", 11)
    assert rain.sha256 not in m2.images
    assert m2.objects["incoming/rain_0.jpg"] == manifest.ObjectRecord(
        dataset.objects["incoming/rain_0.jpg"].etag, "quarantined", rain.sha256, "lost"
    )
    record = storage.get_json(
        s3, cfg.bucket, manifest.quarantine_key(cfg, "v000002", "incoming/rain_0.jpg")
    )
    assert (record["reason"], record["source_key"], record["sha256"]) == (
        "lost",
        "incoming/rain_0.jpg",
        rain.sha256,
    )
    assert record["manifest_version"] == "v000002" and record["label"] == "rain"
    again = verify(cfg, s3)
    assert not again.failed and (again.issues, again.stray_records) == ((), ())

    _put(s3, cfg, "later/rain_again.jpg", body)  # the same bytes under a new key
    back = ingest.ingest(cfg, s3)
    assert (back.accepted, back.manifest_version) == (1, "v000003")
    m3 = manifest.read_manifest(s3, cfg)
    assert m3.images[rain.sha256].source_keys == ("incoming/later/rain_again.jpg",)
    assert not verify(cfg, s3).failed


def test_corrupt_image_is_detected_and_restored(cfg, s3, dataset) -> None:
    rain = _rain(dataset)
    key = manifest.curated_key(cfg, rain.sha256, rain.ext)
    s3.put_object(Bucket=cfg.bucket, Key=key, Body=b"not the photo")
    bad = hashlib.sha256(b"not the photo").hexdigest()

    with pytest.raises(ManifestError, match=f"is corrupt \\(its bytes hash to {bad}, the manif"):
        manifest.fetch_images(s3, cfg, [rain])
    found = verify(cfg, s3)
    assert [(i.problem, i.detail) for i in found.issues] == [
        ("corrupt", f"its bytes hash to {bad}")
    ]
    fixed = verify(cfg, s3, repair=True)
    assert [i.outcome for i in fixed.issues] == ["restored"] and not fixed.failed
    stored = s3.get_object(Bucket=cfg.bucket, Key=key)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == rain.stored_sha256


def test_orphans_and_stray_records_are_listed_not_deleted(cfg, s3, dataset) -> None:
    orphan = f"{cfg.curated_images_prefix}{'0' * 64}.jpg"
    s3.put_object(Bucket=cfg.bucket, Key=orphan, Body=b"x")
    unknown_version = f"{cfg.quarantine_prefix}v000009/{'a' * 32}.json"
    unknown_key = manifest.quarantine_key(cfg, "v000001", "incoming/never-quarantined.jpg")
    for key in (unknown_version, unknown_key):
        storage.put_json(s3, cfg.bucket, key, {"reason": "no_class"})

    report = verify(cfg, s3, repair=True)
    assert report.orphans == (f"s3://{cfg.bucket}/{orphan}",)
    assert report.stray_records == tuple(
        f"s3://{cfg.bucket}/{k}" for k in sorted((unknown_version, unknown_key))
    )
    assert not report.failed  # no dataset version uses them
    assert orphan in _keys(s3, cfg, cfg.curated_images_prefix)  # repair deletes nothing


DAMAGE = {
    "empty": b"",
    "garbage": b"\x89PNG\r\n\x1a\n\x00\x00",
    "not_utf8": b"\xff\xfe{\x00}\x00",
    "truncated": None,  # the real manifest cut in half
    "wrong_shape": {"images": []},
    "bad_split": {"split": "bogus"},
    "version_mismatch": {"version": "v000001"},
    "newer_format": {"format_version": manifest.FORMAT_VERSION + 1},
}
PROBLEM = {
    "empty": "damaged: the object is empty (0 bytes)",
    "garbage": "damaged: not UTF-8 text (byte 0x89 at offset 0)",
    "not_utf8": "damaged: not UTF-8 text (byte 0xff at offset 0)",
    "truncated": "damaged: not valid JSON (",
    "wrong_shape": "damaged: images: input should be a valid dictionary (got [])",
    "bad_split": "…: split 'bogus' is not one of train, val, test",
    "version_mismatch": "damaged: version: 'v000001' differs from the object name's v000002",
    "newer_format": f"format_version {manifest.FORMAT_VERSION + 1}: written by a newer "
    "weather-retrain",
}


def _damage_v2(cfg, s3, m1: manifest.Manifest, kind: str) -> str:
    """Write a damaged v000002 (as a broken writer or a bad copy would) and return its URI."""
    doc = m1.to_json()
    doc["version"], doc["parent"] = "v000002", "v000001"
    damage = DAMAGE[kind]
    if damage is None:
        whole = json.dumps(doc).encode()
        body = whole[: len(whole) // 2]
    elif isinstance(damage, bytes):
        body = damage
    else:
        if "split" in damage:
            next(iter(doc["images"].values()))["split"] = damage["split"]
        else:
            doc.update(damage)
        body = json.dumps(doc).encode()
    key = manifest.manifest_key(cfg, "v000002")
    s3.put_object(Bucket=cfg.bucket, Key=key, Body=body)
    return f"s3://{cfg.bucket}/{key}"


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_ingest_refuses_a_damaged_newest_manifest_and_writes_nothing(
    cfg, s3, dataset, kind
) -> None:
    uri = _damage_v2(cfg, s3, dataset, kind)
    _put(s3, cfg, "new/cloudy_9.jpg", image_bytes("JPEG", size=(48, 40), seed=77))
    before = _keys(s3, cfg, "")

    out = _weather(cfg, "ingest")

    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith(
        f"weather ingest: error: cannot read the latest manifest: manifest {uri}: "
    )
    assert PROBLEM[kind] in lines[-1] and "Traceback" not in out.stderr
    assert _keys(s3, cfg, "") == before  # no new version, no curated object, no record


def test_verify_reports_a_damaged_newest_manifest_and_refuses_to_repair(cfg, s3, dataset) -> None:
    uri = _damage_v2(cfg, s3, dataset, "bad_split")
    _delete_curated(s3, cfg, _rain(dataset))

    out = _weather(cfg, "verify")
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0].startswith(
        f"verified s3://{cfg.bucket}: 2 manifest versions, 1 damaged; 12 images of v000001 "
        "checked: 1 missing, 0 corrupt;"
    )
    assert lines[1].startswith(f"  damaged: manifest {uri}: damaged: images.")
    before = _keys(s3, cfg, "")
    with pytest.raises(VerifyError) as err:
        verify(cfg, s3, repair=True)
    assert str(err.value).startswith(f"refusing to repair: the newest manifest {uri}: damaged: ")
    assert _keys(s3, cfg, "") == before
    refused = _weather(cfg, "verify", "--repair")
    assert refused.returncode == 1
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"weather verify: error: refusing to repair: the newest manifest {uri}: damaged: "
        )
    )


def test_train_fails_on_a_damaged_manifest_before_training(cfg, s3, dataset) -> None:
    uri = _damage_v2(cfg, s3, dataset, "bad_split")
    out = _weather(cfg, "train", "--epochs", "1")
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"weather train: error: manifest {uri}: damaged: images.")
    assert "split 'bogus' is not one of train, val, test" in last
    assert "Epoch" not in out.stdout + out.stderr
