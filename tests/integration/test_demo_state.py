"""The demo's S3 state on disk: a bucket mirrored and restored into a fresh S3 server process
looks the same to ingest (same keys, same ETags, content types and metadata)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools import demo, local_services
from weather_tasks import config, storage

pytestmark = pytest.mark.integration


def _listing(s3, bucket: str) -> dict[str, str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def test_snapshot_restore_round_trip(cfg, s3, tmp_path: Path, service_logs: Path) -> None:
    s3.put_object(Bucket=cfg.bucket, Key="incoming/rain_0001.jpg", Body=b"\xff\xd8jpeg",
                  ContentType="image/jpeg")
    s3.put_object(Bucket=cfg.bucket, Key="curated/manifests/v000001.json", Body=b"{}",
                  ContentType="application/json", Metadata={"images": "1"})
    dest = tmp_path / "s3"
    assert demo.snapshot_buckets(s3, [cfg.bucket], dest) == 2
    # Incremental: nothing changed -> nothing written; one changed object -> one written.
    assert demo.snapshot_buckets(s3, [cfg.bucket], dest) == 0
    s3.put_object(Bucket=cfg.bucket, Key="incoming/rain_0001.jpg", Body=b"\xff\xd8other")
    s3.put_object(Bucket=cfg.bucket, Key="incoming/cloudy_0001.jpg", Body=b"\xff\xd8c")
    assert demo.snapshot_buckets(s3, [cfg.bucket], dest) == 2
    before = _listing(s3, cfg.bucket)

    # A new server process: empty until restored.
    fresh = local_services.start_s3_server(service_logs)
    try:
        s3b = storage.make_client(config.override(cfg, s3_endpoint_url=fresh.url))
        assert demo.restore_buckets(s3b, dest) == 3
        assert _listing(s3b, cfg.bucket) == before
        head = s3b.head_object(Bucket=cfg.bucket, Key="curated/manifests/v000001.json")
        assert head["ContentType"] == "application/json"
        assert head["Metadata"] == {"images": "1"}
        body = s3b.get_object(Bucket=cfg.bucket, Key="incoming/rain_0001.jpg")["Body"].read()
        assert body == b"\xff\xd8other"
    finally:
        fresh.stop()


def test_restore_without_snapshot_is_a_no_op(s3, tmp_path: Path) -> None:
    assert demo.restore_buckets(s3, tmp_path / "nothing") == 0
