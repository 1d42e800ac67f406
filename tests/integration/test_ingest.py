"""Ingest against a real S3 server process over HTTP (boto3, no patching)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import threading
from collections import Counter
from pathlib import Path

import pytest
from botocore.exceptions import BotoCoreError

from devtools.corpus import BAD, GOOD, image_bytes
from devtools.netproxy import FlakyProxy
from tests.support import MWD, mwd_images
from weather_tasks import config, ingest, manifest, storage
from weather_tasks.ingest import IngestError

pytestmark = pytest.mark.integration


def _put(s3, cfg, name: str, body: bytes) -> str:
    key = cfg.incoming_prefix + name
    s3.put_object(Bucket=cfg.bucket, Key=key, Body=body)
    return key


def _snapshot(s3, bucket: str, prefix: str) -> dict[str, str]:
    """key -> ETag of everything under ``prefix``."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return out


def _good_batch(s3, cfg, start: int, per_class: int) -> list[str]:
    keys = []
    for i, cls in enumerate(cfg.classes):
        for j in range(start, start + per_class):
            body = image_bytes("JPEG", size=(48, 40), seed=1000 * i + j)
            keys.append(_put(s3, cfg, f"{cls}_{j:03d}.jpg", body))
    return keys


def test_first_incremental_and_nothing_new(cfg, s3) -> None:
    _good_batch(s3, cfg, 0, 10)
    dup = s3.get_object(Bucket=cfg.bucket, Key=cfg.incoming_prefix + "rain_000.jpg")["Body"]
    _put(s3, cfg, "copies/Rain-copy.JPG", dup.read())
    incoming = _snapshot(s3, cfg.bucket, cfg.incoming_prefix)

    first = ingest.ingest(cfg, s3)
    assert (first.listed, first.new, first.accepted, first.duplicate) == (41, 41, 40, 1)
    assert first.quarantined == {} and first.split_method == "bulk"
    assert (first.previous_version, first.manifest_version) == (None, "v000001")
    m1 = manifest.read_manifest(s3, cfg)
    assert len(m1.images) == 40
    rain0 = next(r for r in m1.images.values() if "incoming/rain_000.jpg" in r.source_keys)
    assert rain0.source_keys == ("incoming/copies/Rain-copy.JPG", "incoming/rain_000.jpg")
    for rec in m1.images.values():  # stored once, by content
        body = s3.get_object(Bucket=cfg.bucket, Key=manifest.curated_key(cfg, rec.sha256, "jpg"))
        assert hashlib.sha256(body["Body"].read()).hexdigest() == rec.sha256
    assert m1.counts()["train"] == dict.fromkeys(cfg.classes, 7)

    _good_batch(s3, cfg, 10, 1)  # one new image per class
    second = ingest.ingest(cfg, s3)
    assert (second.new, second.accepted, second.duplicate) == (4, 4, 0)
    assert (second.previous_version, second.manifest_version) == ("v000001", "v000002")
    assert second.split_method == "incremental"
    m2 = manifest.read_manifest(s3, cfg)
    assert m2.parent == "v000001" and len(m2.images) == 44
    for sha, rec in m1.images.items():  # an image keeps its split forever
        assert m2.images[sha].split == rec.split

    third = ingest.ingest(cfg, s3)
    assert (third.new, third.accepted, third.manifest_version) == (0, 0, "v000002")
    assert manifest.list_versions(s3, cfg) == ["v000001", "v000002"]
    incoming_after = _snapshot(s3, cfg.bucket, cfg.incoming_prefix)
    assert {k: v for k, v in incoming_after.items() if k in incoming} == incoming


def test_bad_files_and_hostile_keys_are_quarantined(cfg, s3, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    expected: dict[str, str] = {}  # key -> reason
    for name, (body, reason) in BAD.items():
        expected[_put(s3, cfg, f"bad/rain_{name}.jpg", body)] = reason
    for name, (body, _fmt, _ext) in GOOD.items():
        _put(s3, cfg, f"good/shine_{name}.img", body)
    expected[_put(s3, cfg, "rainy_day.jpg", image_bytes("JPEG", seed=50))] = "no_class"
    expected[_put(s3, cfg, "shine_rain.jpg", image_bytes("JPEG", seed=51))] = "ambiguous_class"
    same = image_bytes("JPEG", seed=52)
    expected[_put(s3, cfg, "a/cloudy_1.jpg", same)] = "conflicting_label"
    expected[_put(s3, cfg, "b/sunrise_1.jpg", same)] = "conflicting_label"
    big = config.override(cfg, max_object_bytes=200_000)
    expected[_put(s3, cfg, "huge_cloudy.jpg", b"\xff" * 200_001)] = "too_many_bytes"
    hostile = [
        "../../escape_rain.jpg",
        "/abs/olute_rain.jpg",
        "..\\..\\windows_rain.jpg",
        "x" * 900 + "_rain.jpg",
        "유니코드_rain_☔.jpg",
        "tab\tbed_rain.jpg",
        "rtl\u202egpj.rain.jpg",
        "./dot/./rain.jpg",
        "%2e%2e/percent_rain.jpg",
    ]
    for i, name in enumerate(hostile):
        _put(s3, cfg, name, image_bytes("PNG", seed=200 + i))
    incoming = _snapshot(s3, cfg.bucket, cfg.incoming_prefix)
    files_before = sorted(p for p in Path("/").glob("*"))

    report = ingest.ingest(big, s3)

    reasons = Counter(expected.values())
    assert report.quarantined == dict(sorted(reasons.items()))
    assert report.accepted == len(GOOD) + len(hostile)
    assert report.new == len(incoming)
    m = manifest.read_manifest(s3, cfg)
    keys_in_manifest = {k for r in m.images.values() for k in r.source_keys}
    assert {cfg.incoming_prefix + h for h in hostile} <= keys_in_manifest
    assert {r.format for r in m.images.values()} == {"JPEG", "PNG", "GIF", "BMP", "WEBP"}
    records = {}
    for key in _snapshot(s3, cfg.bucket, cfg.quarantine_prefix):
        rec = storage.get_json(s3, cfg.bucket, key)
        assert key.startswith(f"{cfg.quarantine_prefix}v000001/")
        records[rec["source_key"]] = rec["reason"]
    assert records == expected
    # nothing lost, nothing written locally, source objects untouched
    assert _snapshot(s3, cfg.bucket, cfg.incoming_prefix) == incoming
    assert list(tmp_path.iterdir()) == []
    assert sorted(Path("/").glob("*")) == files_before
    # rejected objects are remembered: not fetched again until they change
    again = ingest.ingest(big, s3)
    assert (again.new, again.manifest_version) == (0, "v000001")
    _put(s3, cfg, "bad/rain_empty.jpg", image_bytes("JPEG", seed=99))  # fixed upstream
    fixed = ingest.ingest(big, s3)
    assert (fixed.new, fixed.accepted, fixed.manifest_version) == (1, 1, "v000002")


def test_server_dies_mid_ingest_then_clean_rerun(cfg, s3, s3_server) -> None:
    keys = _good_batch(s3, cfg, 0, 25)
    proxy = FlakyProxy(int(s3_server.url.rsplit(":", 1)[1]))
    try:
        via_proxy = config.override(cfg, s3_endpoint_url=proxy.url, s3_max_attempts=2)
        client = storage.make_client(via_proxy)
        proxy.die_after(30)  # list + a few downloads/uploads, then the server is gone
        with pytest.raises(BotoCoreError, match="(?i)connect|connection"):
            ingest.ingest(via_proxy, client)
        assert proxy.refused > 0
        assert manifest.list_versions(s3, cfg) == []  # no manifest written

        proxy.revive()
        report = ingest.ingest(via_proxy, client)
        assert (report.new, report.accepted, report.duplicate) == (100, 100, 0)
        m = manifest.read_manifest(s3, cfg)
        assert len(m.images) == 100 and sorted(m.objects) == sorted(keys)
        assert manifest.list_versions(s3, cfg) == ["v000001"]
    finally:
        proxy.close()


def test_throttling_is_retried_with_backoff(cfg, s3, s3_server) -> None:
    _good_batch(s3, cfg, 0, 2)
    proxy = FlakyProxy(int(s3_server.url.rsplit(":", 1)[1]))
    try:
        via_proxy = config.override(cfg, s3_endpoint_url=proxy.url, s3_max_attempts=5)
        proxy.fail_next(3, status=503)
        report = ingest.ingest(via_proxy, storage.make_client(via_proxy))
        assert report.accepted == 8
        assert proxy._fail == []  # all three 503s were served and retried past
    finally:
        proxy.close()


def test_missing_bucket_fails_clearly(cfg, s3) -> None:
    missing = config.override(cfg, bucket="no-such-bucket-here")
    with pytest.raises(IngestError, match="no-such-bucket-here.*does not exist"):
        ingest.ingest(missing, s3)


def test_pagination_over_many_keys(cfg, s3) -> None:
    body = image_bytes("JPEG", seed=7)
    keys = [f"many/cloudy_{i:05d}.jpg" for i in range(2_500)]
    threads = [
        threading.Thread(target=lambda ks: [_put(s3, cfg, k, body) for k in ks], args=(keys[i::8],))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = ingest.ingest(cfg, s3)
    assert (report.listed, report.accepted, report.duplicate) == (2_500, 1, 2_499)
    assert ingest.ingest(cfg, s3).new == 0


def test_real_photos_match_the_dataset_manifest(cfg, s3) -> None:
    images = mwd_images()
    with open(MWD / "MANIFEST.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    ingest.upload_folder(cfg, s3, images)
    report = ingest.ingest(cfg, s3)

    distinct = {r["sha256"]: r for r in rows}
    assert report.listed == len(rows) == 868
    assert report.quarantined == {}
    assert report.accepted == len(distinct) == 848
    assert report.duplicate == len(rows) - len(distinct)
    m = manifest.read_manifest(s3, cfg)
    assert set(m.images) == set(distinct)
    assert Counter(r.label for r in m.images.values()) == Counter(
        r["class"] for r in distinct.values()
    )
    assert Counter(r.format for r in m.images.values()) == Counter(
        r["format"] for r in distinct.values()
    )
    for r in rows:  # every file is filed under its class, duplicates under their first image
        assert m.images[r["sha256"]].label == r["class"]
        assert cfg.incoming_prefix + r["filename"] in m.images[r["sha256"]].source_keys
    print(json.dumps(report.as_dict()["split_counts"]))
    assert os.environ.get("AWS_ACCESS_KEY_ID") == "local-test-key"
