"""Benchmark: the project's ingest against a notebook-style sequential boto3 loop.

Both run in this process against one local S3 server (a real HTTP server process):
1. 1,000 small JPEGs in incoming/: ``weather_tasks.ingest.ingest`` (parallel downloads,
   validation, hashing, curated upload, manifest) vs a plain loop that downloads each
   object and writes it to a local file (what a notebook would do, with no validation).
   Measured twice: straight to the server on loopback (no network latency at all, so
   the local server's CPU is the limit), and through a proxy adding 20 ms per request,
   about the first-byte latency of S3 within a region, which is what parallelism hides.
2. a second ingest with nothing new, at 1,000 and at 10,000 objects in incoming/.
Prints times and ratios; asserts nothing about time. Run: .venv/bin/python bench/ingest.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from devtools import local_services
from devtools.corpus import fill_incoming
from devtools.netproxy import FlakyProxy
from weather_tasks import config, ingest, storage

LATENCY_S = 0.020


def _sequential_loop(cfg, s3, out: Path) -> int:
    """The notebook way: list, then get and write each object, one after another."""
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=cfg.bucket, Prefix=cfg.incoming_prefix
    ):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=cfg.bucket, Key=obj["Key"])["Body"].read()
            (out / f"{n}.jpg").write_bytes(body)
            n += 1
    return n


def _list_all(s3, cfg) -> int:
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=cfg.bucket, Prefix=cfg.incoming_prefix
    )
    return sum(len(p.get("Contents", [])) for p in pages)


def _timed(fn, *args):
    t = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t, result


def _first_ingest(base, tmp: Path, bucket: str, endpoint: str, label: str) -> None:
    cfg = config.override(base, bucket=bucket, s3_endpoint_url=endpoint)
    s3 = storage.make_client(cfg)
    local_services.ensure_bucket(s3, bucket)
    fill_incoming(cfg, s3, 1_000, side=64)
    out = tmp / f"loop-{bucket}"
    out.mkdir()
    loop_s, count = _timed(_sequential_loop, cfg, s3, out)
    ours_s, report = _timed(ingest.ingest, cfg, s3)
    assert count == 1_000 and report.accepted == 1_000, report.as_dict()
    print(f"first ingest of 1,000 objects, {label}:")
    print(f"  sequential boto3 loop (download + write only):        {loop_s:7.2f} s")
    what = f"weather ingest (x{cfg.parallelism}: validate, hash, store, manifest)"
    print(f"  {what}: {ours_s:7.2f} s")
    print(f"  speed-up of weather ingest over the loop: {loop_s / ours_s:.2f}x")


def main() -> None:
    os.environ.update(local_services.LOCAL_S3_ENV)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server = local_services.start_s3_server(tmp)
        proxy = FlakyProxy(int(server.url.rsplit(":", 1)[1]), delay=LATENCY_S)
        try:
            base = config.from_env(s3_endpoint_url=server.url, work_dir=tmp / "work")
            _first_ingest(base, tmp, "bench-direct", server.url, "loopback, no latency")
            _first_ingest(
                base, tmp, "bench-remote", proxy.url, f"{LATENCY_S * 1000:.0f} ms per request"
            )
            rows = []
            for bucket, n in (("bench-idle-1k", 1_000), ("bench-idle-10k", 10_000)):
                cfg = config.override(base, bucket=bucket)
                s3 = storage.make_client(cfg)
                local_services.ensure_bucket(s3, bucket)
                fill_incoming(cfg, s3, n, side=64)
                ingest.ingest(cfg, s3)
                idle_s, report = _timed(ingest.ingest, cfg, s3)
                assert report.new == 0
                list_s, _ = _timed(_list_all, s3, cfg)
                rows.append((n, idle_s, list_s))
            print("second ingest with nothing new (loopback):")
            for n, s, list_s in rows:
                print(
                    f"  {n:>6} objects: {s:6.2f} s, of which the server's listing alone "
                    f"takes {list_s:5.2f} s (ours: {s - list_s:5.2f} s)"
                )
            print(f"  ratio 10k/1k: {rows[1][1] / rows[0][1]:.2f}x for 10x the objects")
        finally:
            proxy.close()
            server.stop()


if __name__ == "__main__":
    main()
