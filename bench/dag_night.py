"""Benchmark: a nightly ``weather_retrain`` run with nothing new, on a real local Airflow.

Starts a local S3 server and Airflow's components (``local_services.start_airflow_stack``:
scheduler, dag-processor, triggerer, API server; SQLite, LocalExecutor) and reports their
start-up time. Then, for each bucket size (default 1,000 and 10,000 objects in ``incoming/``,
one bucket grown in turn): fill ``incoming/`` with small JPEGs, ingest them once (so the
manifest's ledger knows every key), run the real DAG twice with nothing new through the REST
API (``devtools.night``) and report:
- the night: trigger to end of run, as a user waits for it,
- the tasks: the sum of the task instances' durations (the rest is scheduling: queueing, the
  executor starting each task's process, the scheduler's loop),
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
from devtools.night import DAG_ID, run_night
from weather_tasks import config, ingest, storage

RUNS = 2


def main(sizes: list[int]) -> None:
    os.environ.update(local_services.LOCAL_S3_ENV)
    root = Path(tempfile.mkdtemp(prefix="bench-dag-night-"))
    s3_server = local_services.start_s3_server(root / "logs")
    cfg = config.from_env(
        environ={}, bucket="bench-nights", s3_endpoint_url=s3_server.url, parallelism=8
    )
    s3 = storage.make_client(cfg)
    local_services.ensure_bucket(s3, cfg.bucket)
    env = local_services.airflow_env(
        root / "home",
        s3_endpoint_url=s3_server.url,
        # A nothing-new night never reaches MLflow; nothing listens here.
        mlflow_tracking_uri="http://127.0.0.1:9",
    )
    env.update(WEATHER_WORK_DIR=str(root / "work"), WEATHER_BUCKET=cfg.bucket,
               WEATHER_SCHEDULE="none")
    started = time.monotonic()
    stack = local_services.start_airflow_stack(
        env, root / "logs", say=lambda m: print(f"  [{time.monotonic() - started:5.0f}s] {m}")
    )
    try:
        stack.api.wait_for_dag(DAG_ID, stack.started, timeout=300)
        stack.api.set_paused(DAG_ID, False)
        print(f"Airflow started (db migrate included) and DAG parsed: "
              f"{time.monotonic() - started:.1f}s (load {os.getloadavg()[0]:.1f})")
        header = ("objects", "first ingest", "night", "tasks", "ingest task")
        print("{:>8} {:>13} {:>9} {:>9} {:>12}".format(*header))
        for size in sorted(sizes):
            fill_incoming(cfg, s3, size, side=40)
            t0 = time.monotonic()
            first = ingest.ingest(cfg, s3)
            first_s = time.monotonic() - t0
            assert first.listed == size, first.as_dict()
            for _ in range(RUNS):
                night = run_night(stack.api, {}, timeout=900)
                report = night.report or {}
                if night.state != "success" or report.get("outcome") != "nothing new":
                    raise SystemExit(f"night failed: {night.as_dict()}")
                assert night.run_id is not None
                tis = stack.api.task_instances(DAG_ID, night.run_id).values()
                tasks_s = sum(ti["duration"] or 0 for ti in tis)
                ing = report["ingest"]
                assert ing["listed"] == size and ing["new"] == 0, ing
                print(
                    f"{size:>8} {first_s:>12.1f}s {night.seconds:>8.1f}s {tasks_s:>8.1f}s "
                    f"{ing['seconds']:>11.2f}s"
                )
    finally:
        stack.stop()
        s3_server.stop()


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 10_000])
