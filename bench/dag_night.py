"""Benchmark: a nightly ``weather_retrain`` run with nothing new, through ``dag.test()``.

For each bucket size (default 1,000 and 10,000 objects in ``incoming/``): fill a fresh bucket
on a local S3 server with small JPEGs, ingest them once (so the manifest's ledger knows every
key), then run the real DAG twice with nothing new and report:
- the child process wall time (Python + Airflow start, DAG parse, the run),
- ``dag.test()`` time (the run itself: Airflow's in-process execution API, the tasks),
- the ingest task's own time (list incoming/, compare with the ledger: the part that grows).
A nothing-new night should be flat in the bucket size: listing is 1 request per 1,000 keys
and nothing is downloaded. Prints what it measured; asserts nothing about time.

Run: .venv/bin/python bench/dag_night.py [SIZE ...]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from devtools import local_services
from devtools.corpus import fill_incoming
from devtools.night import run_night
from weather_tasks import config, ingest, storage

RUNS = 2


def main(sizes: list[int]) -> None:
    os.environ.update(local_services.LOCAL_S3_ENV)
    root = Path(tempfile.mkdtemp(prefix="bench-dag-night-"))
    s3_server = local_services.start_s3_server(root / "logs")
    try:
        env = local_services.airflow_env(
            root / "home",
            s3_endpoint_url=s3_server.url,
            # A nothing-new night never reaches MLflow; nothing listens here.
            mlflow_tracking_uri="http://127.0.0.1:9",
        )
        env["WEATHER_WORK_DIR"] = str(root / "work")
        started = time.monotonic()
        local_services.run_airflow(env, "db", "migrate", log_dir=root / "logs")
        print(f"airflow db migrate (SQLite): {time.monotonic() - started:.1f}s")
        header = ("objects", "first ingest", "process", "dag.test", "ingest task")
        print("{:>8} {:>13} {:>9} {:>9} {:>12}".format(*header))
        for size in sizes:
            cfg = config.from_env(
                environ={}, bucket=f"bench-{size}", s3_endpoint_url=s3_server.url, parallelism=8
            )
            s3 = storage.make_client(cfg)
            local_services.ensure_bucket(s3, cfg.bucket)
            fill_incoming(cfg, s3, size, side=40)
            t0 = time.monotonic()
            first = ingest.ingest(cfg, s3)
            first_s = time.monotonic() - t0
            assert first.listed == size, first.as_dict()
            for i in range(RUNS):
                t0 = time.monotonic()
                night = run_night(
                    {**env, "WEATHER_BUCKET": cfg.bucket}, {}, cwd=root, timeout=900,
                    log_path=root / "logs" / f"night-{size}-{i + 1}.log",
                )
                wall = time.monotonic() - t0
                summary = night.summary
                if night.returncode != 0 or summary["report"]["outcome"] != "nothing new":
                    print(night.output[-3000:])
                    raise SystemExit(f"night failed: {summary}")
                ing = summary["report"]["ingest"]
                assert ing["listed"] == size and ing["new"] == 0, ing
                print(
                    f"{size:>8} {first_s:>12.1f}s {wall:>8.1f}s {summary['seconds']:>8.1f}s "
                    f"{ing['seconds']:>11.2f}s"
                )
    finally:
        s3_server.stop()


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 10_000])
