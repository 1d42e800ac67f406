"""Prediction latency of the served pyfunc model, end to end (decode + resize + model).

A development measurement (``bench/predict.py``, ``bench/train.py``), not part of the
pipeline: it loads the model the way a downstream service does
(:func:`weather_tasks.serving.load_model`) and times ``model.predict`` on image bytes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from weather_tasks import serving
from weather_tasks.config import PipelineConfig


@dataclass(frozen=True)
class LatencyReport:
    """Prediction latency of the pyfunc model, end to end (decode + resize + model)."""

    model_uri: str
    load_s: float
    single_ms_median: float
    single_ms_p90: float
    batch_size: int
    batch_ms_median: float
    batch_images_per_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"pyfunc load {self.load_s:.2f}s; single image: median {self.single_ms_median:.1f} ms, "
            f"p90 {self.single_ms_p90:.1f} ms; batch of {self.batch_size}: median "
            f"{self.batch_ms_median:.1f} ms ({self.batch_images_per_s:.1f} images/s)"
        )


def measure_latency(
    model_uri: str,
    image_paths: Sequence[str | Path],
    cfg: PipelineConfig,
    *,
    batch_size: int = 32,
    repeats: int = 20,
) -> LatencyReport:
    """Single-image and batch latency of ``model.predict`` on image bytes, after a warm-up.

    Bytes (not paths) are sent, as a REST client would, so file reads are not timed.
    """
    import pandas as pd

    t0 = time.perf_counter()
    model = serving.load_model(model_uri, cfg)
    load_s = time.perf_counter() - t0
    blobs = [Path(p).read_bytes() for p in image_paths]
    if not blobs:
        raise ValueError("measure_latency needs at least one image")
    batch = pd.DataFrame({"image": [blobs[i % len(blobs)] for i in range(batch_size)]})
    model.predict(pd.DataFrame({"image": blobs[:1]}))  # warm-up: traces the predict function
    model.predict(batch)

    singles = []
    for i in range(repeats):
        one = pd.DataFrame({"image": [blobs[i % len(blobs)]]})
        t = time.perf_counter()
        model.predict(one)
        singles.append((time.perf_counter() - t) * 1000)
    batches = []
    for _ in range(max(3, repeats // 4)):
        t = time.perf_counter()
        model.predict(batch)
        batches.append((time.perf_counter() - t) * 1000)
    batch_med = statistics.median(batches)
    return LatencyReport(
        model_uri=model_uri,
        load_s=round(load_s, 3),
        single_ms_median=round(statistics.median(singles), 2),
        single_ms_p90=round(statistics.quantiles(singles, n=10)[-1], 2),
        batch_size=batch_size,
        batch_ms_median=round(batch_med, 2),
        batch_images_per_s=round(batch_size / (batch_med / 1000), 1),
    )
