"""One frozen configuration object for every stage, built from ``WEATHER_*`` variables.

Per-run overrides (DAG params, CLI flags) go through :func:`override`, which re-validates.
Credentials are never part of the config: boto3 reads them from the environment or the
standard AWS chain (in Airflow: from the ``aws`` connection).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CLASSES = ("shine", "sunrise", "cloudy", "rain")
MODELS = ("model_1", "model_2", "model_3")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


class ConfigError(ValueError):
    """A setting has an invalid value; the message names the setting."""


class PipelineError(RuntimeError):
    """An expected failure of a stage, with a message meant for the user (no traceback)."""


@dataclass(frozen=True)
class PipelineConfig:
    # Storage (S3 API). endpoint_url is for MinIO or a local server; None means AWS.
    bucket: str = "weather"
    incoming_prefix: str = "incoming/"
    curated_prefix: str = "curated/"
    quarantine_prefix: str = "quarantine/"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    # Labels and splits.
    classes: tuple[str, ...] = DEFAULT_CLASSES
    split_ratios: tuple[float, ...] = (0.7, 0.15, 0.15)
    split_seed: int = 123
    # Validation limits.
    min_image_side: int = 32
    max_image_pixels: int = 40_000_000
    max_object_bytes: int = 50 * 1024 * 1024
    # I/O.
    parallelism: int = 8
    s3_max_attempts: int = 5
    work_dir: Path = field(default_factory=lambda: Path(".weather-work"))
    # Training (the seed's recipe).
    model: str = "model_3"
    image_size: int = 250
    epochs: int = 100
    batch_size: int = 16
    learning_rate: float = 1e-3
    lr_factor: float = 0.1
    lr_patience: int = 5
    lr_min: float = 1e-30
    lr_cooldown: int = 3
    precision: str = "auto"
    seed: int = 123
    # Tracking and registry.
    mlflow_tracking_uri: str = "http://127.0.0.1:5000"
    # Where people open the MLflow UI (links from Airflow); None means mlflow_tracking_uri.
    mlflow_ui_url: str | None = None
    experiment_name: str = "weather-retrain"
    registered_model: str = "weather-classifier"
    # Champion/challenger decision.
    accuracy_floor: float = 0.70
    min_delta: float = 0.0
    max_class_recall_drop: float = 0.05

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def curated_images_prefix(self) -> str:
        return f"{self.curated_prefix}images/"

    @property
    def manifests_prefix(self) -> str:
        return f"{self.curated_prefix}manifests/"

    @property
    def has_test_split(self) -> bool:
        """False for the seed's two-way (train, val) ratio: then val doubles as test."""
        return len(self.split_ratios) == 3

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["work_dir"] = str(self.work_dir)
        out["classes"] = list(self.classes)
        out["split_ratios"] = list(self.split_ratios)
        return out


# Environment variable -> field. Every field is settable as WEATHER_<FIELD in upper case>.
ENV_PREFIX = "WEATHER_"


def from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> PipelineConfig:
    """Build the config from ``WEATHER_*`` variables, then apply keyword overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(PipelineConfig):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None and raw.strip() != "":
            values[f.name] = _parse(f.name, raw.strip())
    values.update(overrides)
    return _build(values)


def override(cfg: PipelineConfig, **changes: Any) -> PipelineConfig:
    """Per-run overrides (DAG params, CLI flags), validated like the rest."""
    changes = {k: v for k, v in changes.items() if v is not None}
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(PipelineConfig)})
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    try:
        return dataclasses.replace(cfg, **changes)
    except TypeError as exc:  # pragma: no cover - guarded by the check above
        raise ConfigError(str(exc)) from exc


def env_names() -> list[str]:
    """All environment variable names the config reads (the compose file is checked against it)."""
    return [ENV_PREFIX + f.name.upper() for f in dataclasses.fields(PipelineConfig)]


def _build(values: dict[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc


def _parse(name: str, raw: str) -> Any:
    kind = {f.name: f for f in dataclasses.fields(PipelineConfig)}[name].type
    env_name = ENV_PREFIX + name.upper()
    try:
        if name == "classes":
            return tuple(c.strip().lower() for c in raw.split(",") if c.strip())
        if name == "split_ratios":
            return tuple(float(x) for x in raw.split(",") if x.strip())
        if name == "work_dir":
            return Path(raw)
        if kind in ("int", int):
            return int(raw)
        if kind in ("float", float):
            return float(raw)
        return raw
    except ValueError as exc:
        raise ConfigError(f"{env_name}={raw!r} is not a valid {kind}: {exc}") from exc


def _require(ok: bool, setting: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{ENV_PREFIX}{setting.upper()} ({setting}): {message}")


def _validate(c: PipelineConfig) -> None:
    _require(
        3 <= len(c.bucket) <= 63 and c.bucket == c.bucket.lower() and " " not in c.bucket,
        "bucket",
        f"{c.bucket!r} is not a valid bucket name (3-63 lower-case characters)",
    )
    for name in ("incoming_prefix", "curated_prefix", "quarantine_prefix"):
        value = getattr(c, name)
        _require(
            value.endswith("/") and not value.startswith("/"),
            name,
            f"{value!r} must end with '/' and not start with it",
        )
    prefixes = [c.incoming_prefix, c.curated_prefix, c.quarantine_prefix]
    for a in prefixes:
        for b in prefixes:
            _require(
                a is b or not b.startswith(a),
                "curated_prefix",
                f"prefixes must not nest ({a!r} contains {b!r})",
            )
    _require(
        c.s3_endpoint_url is None or c.s3_endpoint_url.startswith(("http://", "https://")),
        "s3_endpoint_url",
        f"{c.s3_endpoint_url!r} must start with http:// or https://",
    )
    _require(len(c.classes) >= 2, "classes", "at least two classes are needed")
    _require(len(set(c.classes)) == len(c.classes), "classes", f"duplicates in {c.classes}")
    _require(
        all(x.isalnum() and x == x.lower() for x in c.classes),
        "classes",
        f"class names must be lower-case letters/digits, got {list(c.classes)}",
    )
    _require(
        len(c.split_ratios) in (2, 3)
        and all(0 < r < 1 for r in c.split_ratios)
        and math.isclose(sum(c.split_ratios), 1.0, abs_tol=1e-6),
        "split_ratios",
        f"{c.split_ratios} must be 2 or 3 fractions in (0, 1) summing to 1, "
        "e.g. 0.7,0.15,0.15 (train, val, test) or the seed's 0.7,0.3",
    )
    for name, low, high in (
        ("min_image_side", 1, 10_000),
        ("max_image_pixels", 1, 1_000_000_000),
        ("max_object_bytes", 1, 10 * 1024**3),
        ("parallelism", 1, 256),
        ("s3_max_attempts", 1, 20),
        ("image_size", 16, 1024),
        ("epochs", 1, 10_000),
        ("batch_size", 1, 4096),
        ("lr_patience", 0, 10_000),
        ("lr_cooldown", 0, 10_000),
    ):
        value = getattr(c, name)
        _require(
            isinstance(value, int) and low <= value <= high,
            name,
            f"{value!r} must be an integer in [{low}, {high}]",
        )
    _require(c.model in MODELS, "model", f"{c.model!r} must be one of {', '.join(MODELS)}")
    _require(c.precision in PRECISIONS, "precision", f"{c.precision!r} must be one of {PRECISIONS}")
    _require(0 < c.learning_rate < 1, "learning_rate", f"{c.learning_rate} must be in (0, 1)")
    _require(0 < c.lr_factor < 1, "lr_factor", f"{c.lr_factor} must be in (0, 1)")
    _require(0 <= c.lr_min < c.learning_rate, "lr_min", "must be in [0, learning_rate)")
    _require(0 <= c.accuracy_floor <= 1, "accuracy_floor", f"{c.accuracy_floor} not in [0, 1]")
    _require(-1 <= c.min_delta <= 1, "min_delta", f"{c.min_delta} not in [-1, 1]")
    _require(
        0 <= c.max_class_recall_drop <= 1,
        "max_class_recall_drop",
        f"{c.max_class_recall_drop} not in [0, 1]",
    )
    _require(bool(c.registered_model.strip()), "registered_model", "must not be empty")
    _require(
        c.mlflow_ui_url is None or c.mlflow_ui_url.startswith(("http://", "https://")),
        "mlflow_ui_url",
        f"{c.mlflow_ui_url!r} must start with http:// or https://",
    )
    _require(bool(c.experiment_name.strip()), "experiment_name", "must not be empty")
