"""Prediction latency of the served model (the pyfunc a downstream service loads). Not a test.

For each image size: Model 3 is logged with ``weather_tasks.model_package.log_model`` to a
local SQLite MLflow store, loaded back as a downstream service does
(``weather_tasks.serving.load_model``, via ``devtools.latency``) and timed end to end
(decode + resize + rescale + model) on real photos sent as bytes: single image and batch.
With ``--rest``, the same model behind ``mlflow models serve`` is timed over HTTP
(base64 JSON to ``/invocations``), which is what a REST client sees. Weights are untrained:
latency does not depend on their values.

    .venv/bin/python bench/predict.py [--sizes 128,250] [--batch 32] [--rest]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from devtools import latency, local_services
from weather_tasks import config, model_package, tracking
from weather_tasks.config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]

MWD = REPO.parent / "shared" / "datasets" / "mwd" / "images"


def _photos(n: int) -> list[Path]:
    if not MWD.is_dir():
        sys.exit(f"real photos not found at {MWD}")
    return sorted(MWD.glob("*.jpg"))[:: max(1, 868 // n)][:n]


def _log(size: int, tmp: Path, example: Path) -> tuple[str, PipelineConfig]:
    import keras
    import mlflow

    from weather_tasks import models

    tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = config.from_env(environ={}, image_size=size, mlflow_tracking_uri=tracking_uri)
    tracking.configure_process(cfg)  # this script is an entry point
    if mlflow.get_experiment_by_name("bench-predict") is None:
        mlflow.create_experiment("bench-predict", artifact_location=(tmp / "artifacts").as_uri())
    mlflow.set_experiment("bench-predict")
    keras.utils.set_random_seed(1)
    with mlflow.start_run():
        uri = model_package.log_model(models.build_model_3(size), cfg, str(example))
    return uri, cfg


def _rest(uri: str, tracking_uri: str, photos: list[Path], batch: int, repeats: int) -> str:
    try:
        server = local_services.start_model_server(Path(tempfile.mkdtemp()), uri, tracking_uri)
    except RuntimeError as exc:
        return f"model server did not start: {exc}"
    url = server.url
    try:
        b64 = [base64.b64encode(p.read_bytes()).decode() for p in photos]

        def post(rows: list[str]) -> float:
            body = json.dumps({"dataframe_split": {"columns": ["image"],
                                                   "data": [[r] for r in rows]}}).encode()
            req = urllib.request.Request(url + "/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
            t = time.perf_counter()
            with urllib.request.urlopen(req, timeout=120) as resp:
                resp.read()
            return (time.perf_counter() - t) * 1000

        rows = [b64[i % len(b64)] for i in range(batch)]
        post(rows[:1])
        post(rows)
        single = statistics.median(post([b64[i % len(b64)]]) for i in range(repeats))
        many = statistics.median(post(rows) for _ in range(max(3, repeats // 4)))
        return (f"REST /invocations: single image median {single:.1f} ms; batch of {batch}: "
                f"median {many:.1f} ms ({batch / many * 1000:.1f} images/s)")
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="128,250")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rest", action="store_true", help="also time mlflow models serve over HTTP")
    args = p.parse_args()
    photos = _photos(40)
    print(f"{len(photos)} real photos from {MWD}; cores: {os.cpu_count()}; "
          f"load average: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            uri, cfg = _log(size, Path(tmp), photos[0])
            report = latency.measure_latency(uri, photos, cfg, batch_size=args.batch,
                                             repeats=args.repeats)
            print(f"\n== Model 3 at {size}px, CPU ==\npyfunc in process: {report.summary()}")
            if args.rest:
                print(_rest(uri, cfg.mlflow_tracking_uri, photos, args.batch, args.repeats))


if __name__ == "__main__":
    main()
