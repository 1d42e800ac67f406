"""Benchmark: wall time of demo nights (`weather demo`), as a user runs them.

Runs ``.venv/bin/weather demo`` N times (default 2: the first night, then an incremental one)
in a fresh state directory and prints each night's wall time, Airflow's start-up (database
migration on the first night, the four components until each heartbeats), the DAG run (trigger
to end) and its outcome. Not a test: it prints what it measured and never fails on a timing.

    .venv/bin/python bench/demo_night.py [--nights 2] [--images DIR] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nights", type=int, default=2)
    p.add_argument("--images", default=None, help="a real folder instead of synthetic scenes")
    p.add_argument("--keep", default=None, help="state directory to use and keep")
    args = p.parse_args()

    state = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="weather-demo-"))
    weather = Path(sys.executable).with_name("weather")
    print(f"demo nights in {state} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})",
          flush=True)
    rows = []
    try:
        for night in range(1, args.nights + 1):
            cmd = [str(weather), "demo", "--json", "--state-dir", str(state)]
            if args.images:
                cmd += ["--images", args.images]
            started = time.monotonic()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            wall = time.monotonic() - started
            report = _last_json(proc.stdout)
            rows.append({
                "night": night,
                "wall_s": round(wall, 1),
                "airflow_start_s": (report.get("steps") or {}).get("airflow"),
                "dag_run_s": (report.get("steps") or {}).get("night"),
                "dag_state": report.get("state"),
                "outcome": (report.get("report") or {}).get("outcome"),
                "load_after": round(os.getloadavg()[0], 1),
            })
            print(json.dumps(rows[-1]), flush=True)
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
                break
    finally:
        if not args.keep:
            shutil.rmtree(state, ignore_errors=True)
    for r in rows:
        print(f"night {r['night']}: {r['wall_s']:7.1f}s (Airflow start {r['airflow_start_s']}s, "
              f"DAG run {r['dag_run_s']}s)  {r['dag_state']}  {r['outcome']}")
    return 0


def _last_json(stdout: str) -> dict:
    """The JSON report `weather demo --json` prints after its progress lines."""
    start = stdout.rfind("\n{")
    try:
        return json.loads(stdout[start + 1 if start >= 0 else 0 :])
    except ValueError:
        return {}


if __name__ == "__main__":
    sys.exit(main())
