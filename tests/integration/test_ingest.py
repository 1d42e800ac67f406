"""Ingest against a real S3 server process over HTTP (boto3, no patching)."""

from __future__ import annotations

import csv
import dataclasses
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


# --- one label per content: the conflict rule, orphans, quarantine records, restore ----------
_CONFLICT = "conflicting_label"


def _records(s3, cfg) -> dict[str, tuple[str, str]]:
    """source key -> (manifest version, reason) of every quarantine record."""
    out = {}
    for key in _snapshot(s3, cfg.bucket, cfg.quarantine_prefix):
        rec = storage.get_json(s3, cfg.bucket, key)
        assert key.startswith(f"{cfg.quarantine_prefix}{rec['manifest_version']}/")
        out[rec["source_key"]] = (rec["manifest_version"], rec["reason"])
    return out


def _curated(s3, cfg, sha: str, ext: str = "jpg") -> bool:
    return manifest.curated_key(cfg, sha, ext) in _snapshot(
        s3, cfg.bucket, cfg.curated_images_prefix
    )


def _outcome(m: manifest.Manifest) -> tuple[dict, dict, dict]:
    """What the rule decides, without what depends on when (splits, versions, dates)."""
    images = {sha: (r.label, r.source_keys) for sha, r in m.images.items()}
    objects = {k: (o.status, o.sha256, o.reason) for k, o in m.objects.items()}
    return images, m.conflicts, objects


def test_conflict_in_one_batch_quarantines_every_key_and_deletes_the_orphan(cfg, s3) -> None:
    same = image_bytes("JPEG", seed=300)
    sha = hashlib.sha256(same).hexdigest()
    a = _put(s3, cfg, "a/cloudy_1.jpg", same)
    b = _put(s3, cfg, "b/sunrise_1.jpg", same)
    good = _put(s3, cfg, "shine_1.jpg", image_bytes("JPEG", seed=301))
    incoming = _snapshot(s3, cfg.bucket, cfg.incoming_prefix)

    report = ingest.ingest(cfg, s3)

    assert (report.accepted, report.quarantined, report.requarantined) == (1, {_CONFLICT: 2}, 0)
    m = manifest.read_manifest(s3, cfg)
    assert m.conflicts == {sha: ("cloudy", "sunrise")}
    assert sha not in m.images
    assert {k: (o.status, o.reason) for k, o in m.objects.items()} == {
        a: ("quarantined", _CONFLICT),
        b: ("quarantined", _CONFLICT),
        good: ("accepted", None),
    }
    assert _records(s3, cfg) == {a: ("v000001", _CONFLICT), b: ("v000001", _CONFLICT)}
    assert not _curated(s3, cfg, sha)  # stored by this run, in no manifest: deleted
    assert _curated(s3, cfg, hashlib.sha256(image_bytes("JPEG", seed=301)).hexdigest())
    assert _snapshot(s3, cfg.bucket, cfg.incoming_prefix) == incoming


def test_accepted_content_under_another_label_leaves_the_dataset(cfg, s3) -> None:
    same = image_bytes("JPEG", seed=310)
    sha = hashlib.sha256(same).hexdigest()
    first = _put(s3, cfg, "shine_1.jpg", same)
    copy = _put(s3, cfg, "copies/shine_copy.jpg", same)
    _put(s3, cfg, "cloudy_1.jpg", image_bytes("JPEG", seed=311))
    assert ingest.ingest(cfg, s3).accepted == 2
    m1 = manifest.read_manifest(s3, cfg)
    assert m1.images[sha].source_keys == (copy, first)

    rain = _put(s3, cfg, "rain_1.jpg", same)
    report = ingest.ingest(cfg, s3)

    assert (report.new, report.accepted, report.duplicate) == (1, 0, 0)
    assert (report.quarantined, report.requarantined) == ({_CONFLICT: 1}, 2)
    assert "2 earlier keys quarantined (conflicting_label)" in report.summary()
    assert report.images_total == 1
    m2 = manifest.read_manifest(s3, cfg)
    assert sha not in m2.images and m2.conflicts == {sha: ("rain", "shine")}
    for key in (first, copy, rain):
        assert m2.objects[key] == manifest.ObjectRecord(
            m2.objects[key].etag, "quarantined", sha, _CONFLICT
        )
    assert _records(s3, cfg) == {k: ("v000002", _CONFLICT) for k in (first, copy, rain)}
    # v000001 still lists it: its curated object stays, and that version stays as it was
    assert _curated(s3, cfg, sha)
    assert manifest.read_manifest(s3, cfg, "v000001") == m1


def test_remembered_conflict_stays_quarantined_under_any_label(cfg, s3) -> None:
    same = image_bytes("JPEG", seed=320)
    sha = hashlib.sha256(same).hexdigest()
    _put(s3, cfg, "a/cloudy_1.jpg", same)
    _put(s3, cfg, "b/sunrise_1.jpg", same)
    ingest.ingest(cfg, s3)

    again = _put(s3, cfg, "c/cloudy_2.jpg", same)  # one of its labels: was accepted before
    report = ingest.ingest(cfg, s3)
    assert (report.accepted, report.duplicate, report.quarantined) == (0, 0, {_CONFLICT: 1})
    m2 = manifest.read_manifest(s3, cfg)
    assert sha not in m2.images and m2.conflicts == {sha: ("cloudy", "sunrise")}
    assert m2.objects[again].status == "quarantined"
    assert not _curated(s3, cfg, sha)  # not stored again

    third = _put(s3, cfg, "d/rain_1.jpg", same)  # a third label: the recorded set grows
    report = ingest.ingest(cfg, s3)
    assert (report.accepted, report.quarantined) == (0, {_CONFLICT: 1})
    m3 = manifest.read_manifest(s3, cfg)
    assert m3.conflicts == {sha: ("cloudy", "rain", "sunrise")}
    assert (m3.objects[third].status, m3.objects[third].reason) == ("quarantined", _CONFLICT)
    assert _records(s3, cfg)[third] == ("v000003", _CONFLICT)


def test_the_same_label_again_is_a_duplicate(cfg, s3) -> None:
    same = image_bytes("JPEG", seed=330)
    sha = hashlib.sha256(same).hexdigest()
    first = _put(s3, cfg, "shine_1.jpg", same)
    ingest.ingest(cfg, s3)
    again = _put(s3, cfg, "later/shine_2.jpg", same)
    report = ingest.ingest(cfg, s3)
    assert (report.accepted, report.duplicate, report.quarantined) == (0, 1, {})
    m = manifest.read_manifest(s3, cfg)
    assert m.images[sha].source_keys == (first, again) and m.conflicts == {}
    assert m.objects[again].status == "duplicate"
    assert _records(s3, cfg) == {}


_X, _Y, _Z = (image_bytes("JPEG", seed=s) for s in (340, 341, 342))
_KEYS = {  # name -> content: X under shine (twice), rain and cloudy; Y twice as sunrise
    "shine_1.jpg": _X,
    "shine_2.jpg": _X,
    "rain_1.jpg": _X,
    "cloudy_x.jpg": _X,
    "sunrise_1.jpg": _Y,
    "sunrise_2.jpg": _Y,
    "cloudy_1.jpg": _Z,
}
_ORDERS = {
    "accepted_first": [
        ["shine_1.jpg", "sunrise_1.jpg", "cloudy_1.jpg"],
        ["shine_2.jpg"],
        ["rain_1.jpg"],
        ["cloudy_x.jpg", "sunrise_2.jpg"],
    ],
    "conflict_first": [
        ["rain_1.jpg", "shine_1.jpg"],
        ["cloudy_1.jpg", "sunrise_1.jpg", "shine_2.jpg"],
        ["cloudy_x.jpg", "sunrise_2.jpg"],
    ],
}


def test_the_rule_does_not_depend_on_arrival_order(cfg, s3) -> None:
    def run(name: str, batches: list[list[str]]) -> tuple[dict, dict, dict]:
        c = config.override(cfg, bucket=f"{cfg.bucket}-{name.replace('_', '-')}")
        s3.create_bucket(Bucket=c.bucket)
        for batch in batches:
            for key in batch:
                _put(s3, c, key, _KEYS[key])
            ingest.ingest(c, s3)
        return _outcome(manifest.read_manifest(s3, c))

    one_batch = run("one", [list(_KEYS)])
    sha = {content: hashlib.sha256(content).hexdigest() for content in (_X, _Y, _Z)}
    images, conflicts, objects = one_batch
    assert images == {
        sha[_Y]: ("sunrise", ("incoming/sunrise_1.jpg", "incoming/sunrise_2.jpg")),
        sha[_Z]: ("cloudy", ("incoming/cloudy_1.jpg",)),
    }
    assert conflicts == {sha[_X]: ("cloudy", "rain", "shine")}
    assert {k for k, (status, _, _) in objects.items() if status == "quarantined"} == {
        "incoming/" + k for k, v in _KEYS.items() if v == _X
    }
    for name, batches in _ORDERS.items():
        assert run(name, batches) == one_batch, name


def test_a_lost_manifest_race_writes_and_deletes_nothing(cfg, s3, monkeypatch) -> None:
    """Another ingest (its own incoming prefix, the same manifests) writes v000001 while
    this one runs; it lists the content this run finds conflicting, so the curated object
    must stay, and this run must leave no quarantine record."""
    same = image_bytes("JPEG", seed=350)
    sha = hashlib.sha256(same).hexdigest()
    a = _put(s3, cfg, "a/cloudy_1.jpg", same)
    b = _put(s3, cfg, "b/sunrise_1.jpg", same)
    rival = config.override(cfg, incoming_prefix="other/")
    rival_key = _put(s3, rival, "shine_1.jpg", same)
    real_merge = ingest._merge
    raced: list[ingest.IngestReport] = []

    def merge_then_lose_the_race(
        base: manifest.Manifest, outcomes: list[ingest._Outcome]
    ) -> ingest._Merge:
        merged = real_merge(base, outcomes)
        monkeypatch.setattr(ingest, "_merge", real_merge)  # the rival merges as usual
        raced.append(ingest.ingest(rival, s3))
        return merged

    monkeypatch.setattr(ingest, "_merge", merge_then_lose_the_race)
    with pytest.raises(manifest.ManifestError, match="v000001.json already exists") as lost:
        ingest.ingest(cfg, s3)
    assert lost.value.transient  # Airflow retries: the rerun applies its batch on top
    assert raced[0].manifest_version == "v000001" and raced[0].accepted == 1
    m1 = manifest.read_manifest(s3, cfg)
    assert m1.images[sha].source_keys == (rival_key,)
    assert _curated(s3, cfg, sha)  # the winner lists it
    assert _records(s3, cfg) == {}

    report = ingest.ingest(cfg, s3)  # the rerun applies the rule on top of the winner
    assert (report.manifest_version, report.quarantined) == ("v000002", {_CONFLICT: 2})
    assert report.requarantined == 1
    m2 = manifest.read_manifest(s3, cfg)
    assert m2.conflicts == {sha: ("cloudy", "shine", "sunrise")} and sha not in m2.images
    assert _records(s3, cfg) == {k: ("v000002", _CONFLICT) for k in (a, b, rival_key)}
    assert _curated(s3, cfg, sha)  # v000001 lists it
    record = storage.get_json(
        s3, cfg.bucket, next(iter(_snapshot(s3, cfg.bucket, cfg.quarantine_prefix)))
    )
    assert set(record) >= {"size", "etag", "detail", "label", "sha256"}


def test_a_failed_manifest_write_leaves_no_quarantine_record(
    cfg, s3, s3_server, monkeypatch
) -> None:
    same = image_bytes("JPEG", seed=360)
    sha = hashlib.sha256(same).hexdigest()
    keys = [_put(s3, cfg, "a/cloudy_1.jpg", same), _put(s3, cfg, "b/rain_1.jpg", same)]
    unlabelled = _put(s3, cfg, "photo.jpg", image_bytes("JPEG", seed=361))
    _put(s3, cfg, "shine_1.jpg", image_bytes("JPEG", seed=362))
    proxy = FlakyProxy(int(s3_server.url.rsplit(":", 1)[1]))
    real_merge = ingest._merge

    def merge_then_die(base: manifest.Manifest, outcomes: list[ingest._Outcome]) -> ingest._Merge:
        merged = real_merge(base, outcomes)
        proxy.die_after(0)  # the next request is the manifest's PUT
        return merged

    try:
        via_proxy = config.override(cfg, s3_endpoint_url=proxy.url, s3_max_attempts=2)
        monkeypatch.setattr(ingest, "_merge", merge_then_die)
        with pytest.raises(BotoCoreError):
            ingest.ingest(via_proxy, storage.make_client(via_proxy))
    finally:
        proxy.close()
    assert manifest.list_versions(s3, cfg) == []
    assert _records(s3, cfg) == {}
    assert _curated(s3, cfg, sha)  # stored, but left for the run that writes a manifest

    monkeypatch.setattr(ingest, "_merge", real_merge)
    report = ingest.ingest(cfg, s3)
    assert (report.accepted, report.quarantined) == (1, {_CONFLICT: 2, "no_class": 1})
    assert _records(s3, cfg) == {
        keys[0]: ("v000001", _CONFLICT),
        keys[1]: ("v000001", _CONFLICT),
        unlabelled: ("v000001", "no_class"),
    }
    assert not _curated(s3, cfg, sha)


def test_reupload_restores_a_missing_curated_image(cfg, s3, caplog) -> None:
    jpeg, gif = image_bytes("JPEG", seed=370), GOOD["gif"][0]
    kept = image_bytes("JPEG", seed=371)
    _put(s3, cfg, "shine_1.jpg", jpeg)
    _put(s3, cfg, "rain_1.gif", gif)
    _put(s3, cfg, "cloudy_1.jpg", kept)
    ingest.ingest(cfg, s3)
    m1 = manifest.read_manifest(s3, cfg)
    lost = [m1.images[hashlib.sha256(body).hexdigest()] for body in (jpeg, gif)]
    for rec in lost:
        s3.delete_object(Bucket=cfg.bucket, Key=manifest.curated_key(cfg, rec.sha256, rec.ext))

    _put(s3, cfg, "again/shine_1.jpg", jpeg)
    _put(s3, cfg, "again/rain_1.gif", gif)
    _put(s3, cfg, "again/rain_2.gif", gif)  # two copies in one batch: restored once
    _put(s3, cfg, "again/cloudy_1.jpg", kept)  # still there: nothing to restore
    report = ingest.ingest(cfg, s3)

    assert (report.duplicate, report.restored) == (4, 2)
    assert "2 missing curated images restored" in report.summary()
    assert manifest.read_manifest(s3, cfg).images.keys() == m1.images.keys()
    fetched = manifest.fetch_images(s3, cfg, lost)  # verifies stored_sha256
    assert [label for _, label in fetched] == ["shine", "rain"]

    # A copy that converts to another file than the manifest lists is not stored.
    rec = lost[1]
    s3.delete_object(Bucket=cfg.bucket, Key=manifest.curated_key(cfg, rec.sha256, rec.ext))
    m2 = manifest.read_manifest(s3, cfg)
    tampered = dataclasses.replace(rec, stored_sha256="0" * 64)
    manifest.write_manifest(
        s3,
        cfg,
        dataclasses.replace(
            m2, version="v000003", parent=m2.version, images={**m2.images, rec.sha256: tampered}
        ),
    )
    _put(s3, cfg, "third/rain_3.gif", gif)
    report = ingest.ingest(cfg, s3)
    assert (report.duplicate, report.restored) == (1, 0)
    assert not _curated(s3, cfg, rec.sha256, rec.ext)
    assert manifest.read_manifest(s3, cfg).images[rec.sha256].stored_sha256 == "0" * 64
    assert "cannot be restored" in caplog.text
