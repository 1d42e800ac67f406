"""One frozen configuration object for every stage, every setting declared once.

Each field of :class:`PipelineConfig` carries its declaration (:class:`Setting`): help text,
bounds or choices, and whether a run may override it. From that one declaration come the
``WEATHER_*`` environment variables (:func:`from_env`), the validation messages (which name
the variable and the allowed range), the DAG's trigger-form params (:func:`dag_params`) and
the CLI's flags (:func:`cli_flags`). Only per-run settings become params and flags: the
trigger form never offers the bucket, the endpoint or the tracking URI.

Per-run overrides (DAG params, CLI flags) go through :func:`override`, which re-validates.
An empty variable means the built-in default where the setting says so (compose passes unset
settings as ""); for a setting without a safe default to fall back on (the bucket, the tracking
server, the prefixes) an empty variable is a configuration error naming it. Credentials
are never part of the config: boto3 reads them from the environment or the standard AWS chain
(in Airflow: from the ``aws`` connection).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CLASSES = ("shine", "sunrise", "cloudy", "rain")
MODELS = ("model_1", "model_2", "model_3")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
# The smallest image each model accepts: model 2's last convolution is "valid" after five
# poolings (needs a 3x3 map), model 1's after two; model 3 pools four times.
MIN_IMAGE_SIZE = {"model_1": 12, "model_2": 96, "model_3": 16}
# Models whose weights do not depend on the input size (global average pooling, no Flatten):
# only these can be trained at a smaller size first (progressive_resize).
SIZE_FREE_MODELS = ("model_3",)
# The seed notebook's exact recipe, one setting away: WEATHER_RECIPE=seed (or a run's
# recipe=seed). Settings given explicitly beside the preset win over it (see override).
# Precision is not part of a recipe: it is the device's choice (see recipe.resolve_precision).
SEED_RECIPE: dict[str, Any] = {
    "model": "model_3", "image_size": 250, "epochs": 100, "batch_size": 16,
    "learning_rate": 1e-3, "lr_factor": 0.1, "lr_patience": 5, "lr_min": 1e-30, "lr_cooldown": 3,
    "label_smoothing": 0.0, "weight_decay": 0.0, "bn_momentum": 0.99, "progressive_resize": 0,
    "tta_flip": False,
}
# "cpu": the best accuracy measured within 30 minutes of training on a 2-core CPU (README,
# "Presets"): the default recipe at 128 px for 60 epochs (250 px x 100 epochs would take
# about 3 hours there).
CPU_RECIPE_CHANGES: dict[str, Any] = {"image_size": 128, "epochs": 60}
# "default": this project's current defaults (each field's default); "seed": SEED_RECIPE;
# "cpu": the defaults with CPU_RECIPE_CHANGES.
RECIPES = ("default", "seed", "cpu")
# WEATHER_SCHEDULE values that mean "manual runs only".
MANUAL_SCHEDULES = ("none", "manual")
ENV_PREFIX = "WEATHER_"


class ConfigError(ValueError):
    """A setting has an invalid value; the message names the setting."""


class PipelineError(RuntimeError):
    """An expected failure of a stage, with a message meant for the user (no traceback).

    ``transient``: trying again later may succeed (a 503, a timeout, a refused connection), so
    the DAG lets Airflow retry it; otherwise (a bad setting, a missing bucket, access denied)
    retrying only delays the message, and the DAG fails the task at once.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Setting:
    """The declaration of one setting (kept in the field's metadata)."""

    help: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive: bool = False  # the bounds themselves are not allowed
    choices: tuple[str, ...] = ()
    # May a run override it (DAG param, CLI flag)? Deployment settings (storage, tracking,
    # names) may not: a trigger form must never point a run at another bucket or server.
    per_run: bool = False
    commands: tuple[str, ...] = ()  # the CLI subcommands that take it as a flag
    title: str = ""
    # Does an empty variable mean the default? Yes where compose passes "" for "unset" on
    # purpose; no where falling back would silently point the pipeline at other data (the
    # bucket, the tracking server, the prefixes): there, "" is a configuration error.
    empty_means_default: bool = True
    # Does it change the model a training produces (its weights, or how the logged model
    # predicts)? These settings identify a training (training_settings): a new one declared
    # so changes train.training_settings_digest, and the benchmark records it, with no list
    # to keep in sync.
    affects_model: bool = False


def _setting(default: Any, help: str, **declaration: Any) -> Any:
    meta = {"setting": Setting(help, **declaration)}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


_TRAINING = {"per_run": True, "commands": ("train",), "affects_model": True}
_MODEL = {"affects_model": True}
_REQUIRED = {"empty_means_default": False}


@dataclass(frozen=True)
class PipelineConfig:
    # Storage (S3 API).
    bucket: str = _setting("weather", "the S3 bucket holding incoming/, curated/, quarantine/",
                           **_REQUIRED)
    incoming_prefix: str = _setting("incoming/", "where producers drop photos (never modified)",
                                    **_REQUIRED)
    curated_prefix: str = _setting("curated/", "content-addressed images and manifests",
                                   **_REQUIRED)
    quarantine_prefix: str = _setting("quarantine/", "rejected objects with their reasons",
                                      **_REQUIRED)
    locks_prefix: str = _setting("locks/", "leases that serialize promotions and rollbacks",
                                 **_REQUIRED)
    nights_prefix: str = _setting("nights/", "each night's summary (the DAG's report task "
                                  "writes it, weather status reads it)", **_REQUIRED)
    predictions_prefix: str = _setting(
        "predictions/", "the serving endpoint's sampled prediction log (JSON lines per day)",
        **_REQUIRED,
    )
    s3_endpoint_url: str | None = _setting(
        None, "S3 endpoint for MinIO or a local server (empty: AWS)"
    )
    s3_region: str = _setting("us-east-1", "S3 region")
    # Labels and splits.
    classes: tuple[str, ...] = _setting(DEFAULT_CLASSES, "class names, comma-separated",
                                        **_MODEL)
    split_ratios: tuple[float, ...] = _setting(
        (0.7, 0.15, 0.15), "train,val,test fractions (or the seed's train,val)"
    )
    split_seed: int = _setting(123, "seed of the splits", minimum=0, maximum=2**32 - 1)
    # Validation limits.
    min_image_side: int = _setting(32, "smallest accepted image side (px)", minimum=1,
                                   maximum=10_000)
    max_image_pixels: int = _setting(40_000_000, "largest accepted image (pixels)", minimum=1,
                                     maximum=1_000_000_000)
    max_object_bytes: int = _setting(50 * 1024 * 1024, "largest accepted object (bytes)",
                                     minimum=1, maximum=10 * 1024**3)
    # I/O.
    parallelism: int = _setting(8, "parallel S3 downloads", minimum=1, maximum=256)
    s3_max_attempts: int = _setting(
        5, "S3 attempts per request, the first included (botocore standard retries)",
        minimum=1, maximum=20,
    )
    s3_connect_timeout: float = _setting(5.0, "seconds to wait for an S3 connection",
                                         minimum=0.1, maximum=300)
    s3_read_timeout: float = _setting(
        30.0, "seconds to wait for the S3 server's next bytes (per attempt)", minimum=0.1,
        maximum=3600,
    )
    work_dir: Path = _setting(lambda: Path(".weather-work"), "local cache of curated images")
    # Training (the seed's recipe; SEED_RECIPE lists its values).
    recipe: str = _setting(
        "default", "named recipe: default (the current defaults), seed (the seed notebook's "
        "exact recipe) or cpu (the defaults at 128 px for 60 epochs: ~30 min of training on 2 "
        "CPU cores); settings given beside it win", choices=RECIPES, per_run=True,
        commands=("train",),
    )
    model: str = _setting("model_3", "architecture from the seed", choices=MODELS, **_TRAINING)
    image_size: int = _setting(250, "square input side in pixels", minimum=16, maximum=1024,
                               **_TRAINING)
    epochs: int = _setting(100, "training epochs", minimum=1, maximum=10_000, **_TRAINING)
    batch_size: int = _setting(16, "batch size", minimum=1, maximum=4096, **_TRAINING)
    learning_rate: float = _setting(1e-3, "Adam learning rate", minimum=0, maximum=1,
                                    exclusive=True, **_MODEL)
    lr_factor: float = _setting(0.1, "ReduceLROnPlateau factor", minimum=0, maximum=1,
                                exclusive=True, **_MODEL)
    lr_patience: int = _setting(5, "ReduceLROnPlateau patience (epochs)", minimum=0,
                                maximum=10_000, **_MODEL)
    lr_min: float = _setting(1e-30, "ReduceLROnPlateau min_lr", **_MODEL)
    lr_cooldown: int = _setting(3, "ReduceLROnPlateau cooldown (epochs)", minimum=0,
                                maximum=10_000, **_MODEL)
    # Recipe options (issue 11): each off, or at the seed's value, until measured.
    label_smoothing: float = _setting(
        0.0, "label smoothing of the cross-entropy (0: none, as the seed)", minimum=0,
        maximum=0.5, **_MODEL,
    )
    weight_decay: float = _setting(
        0.0, "decoupled weight decay: > 0 trains with AdamW (0: Adam, as the seed)", minimum=0,
        maximum=1, **_MODEL,
    )
    bn_momentum: float = _setting(
        0.99, "batch-normalization momentum of model_3 (0.99: the Keras default, as the seed; "
        "lower adapts faster on small data)", minimum=0, maximum=1, exclusive=True, **_MODEL,
    )
    progressive_resize: int = _setting(
        0, "train the first half of the epochs at this smaller size (px), the rest at "
        "image_size (0: off)", minimum=0, maximum=1024, **_MODEL,
    )
    tta_flip: bool = _setting(
        False, "the served model averages the probabilities of the image and its horizontal "
        "flip", **_MODEL,
    )
    precision: str = _setting("auto", "Keras dtype policy (auto: mixed_float16 on a GPU, "
                              "else float32)", choices=PRECISIONS, **_TRAINING)
    seed: int = _setting(123, "seed of weights, dropout and augmentation", minimum=0,
                         maximum=2**32 - 1, **_MODEL)
    # Tracking and registry.
    mlflow_tracking_uri: str = _setting("http://127.0.0.1:5000", "MLflow tracking server",
                                        **_REQUIRED)
    # MLflow's process-wide HTTP settings, set by tracking.configure_process. A DAG task may
    # wait out a restart of the server; the CLI defaults to failing in seconds (cli.py).
    mlflow_http_retries: int = _setting(5, "MLflow HTTP retries per request (after the first "
                                        "attempt)", minimum=0, maximum=20)
    mlflow_http_timeout: int = _setting(120, "seconds to wait for an MLflow HTTP answer",
                                        minimum=1, maximum=3600)
    mlflow_ui_url: str | None = _setting(
        None, "where people open the MLflow UI (links from Airflow; empty: the tracking URI)"
    )
    experiment_name: str = _setting("weather-retrain", "MLflow experiment")
    registered_model: str = _setting("weather-classifier", "MLflow registered model")
    # The promotion lease (weather_tasks.lease): the expiry frees the lease of a holder that
    # died, so it must exceed the longest promotion (MLflow retries x timeout).
    lease_expiry: float = _setting(600.0, "seconds after which a promotion lease whose holder "
                                   "died may be taken over", minimum=1, maximum=86_400)
    lease_wait: float = _setting(120.0, "seconds to wait for a promotion lease another run "
                                 "holds", minimum=0, maximum=3600)
    # Champion/challenger decision.
    accuracy_floor: float = _setting(0.70, "accuracy a first champion needs", minimum=0,
                                     maximum=1)
    min_delta: float = _setting(
        0.0, "accuracy gain over the champion needed to promote", minimum=-1, maximum=1,
        per_run=True, commands=("evaluate",),
    )
    max_class_recall_drop: float = _setting(
        0.05, "largest per-class recall drop a challenger may have", minimum=0, maximum=1
    )
    non_inferiority_margin: float = _setting(
        0.0, "promote when the 95% interval of challenger-minus-champion accuracy lies above "
        "-margin, instead of the min_delta rule (0: off)", minimum=0, maximum=1, per_run=True,
        commands=("evaluate",),
    )
    # Screening of each night's new photos (weather_tasks/screen.py).
    drift_hold_p_value: float = _setting(
        0.0, "hold the promotion for review when the drift test of the night's new photos "
        "against the training photos (MMD on the champion's embeddings, permutation p-value) "
        "gives p below this (0: never hold; the drift is reported every night)", minimum=0,
        maximum=1,
    )
    suspect_labels: str = _setting(
        "train", "new train/val photos whose file-name label the champion confidently "
        "contradicts: train (train on them, listed in the report) or review (held out of "
        "training until `weather review accept|reject`); test photos are never held",
        choices=("train", "review"),
    )
    # Orchestration.
    schedule: str = _setting(
        "0 2 * * *", "the DAG's cron schedule, read when the DAG file is parsed "
        f"({' or '.join(MANUAL_SCHEDULES)}: manual runs only)"
    )
    force_retrain: bool = _setting(
        False, "train even when ingest found no new images (on the latest manifest)",
        per_run=True, title="Force retraining",
    )
    status_max_age_hours: float = _setting(
        26.0, "weather status --check fails when the newest night summary is older (hours)",
        minimum=0, maximum=24 * 366, exclusive=True,
    )
    # The serving endpoint (weather_tasks/endpoint.py, `weather serve`).
    serve_poll_seconds: float = _setting(
        30.0, "seconds between the endpoint's checks of @champion (a move is served after at "
        "most this plus a load)", minimum=0.1, maximum=86_400,
    )
    serve_max_request_bytes: int = _setting(
        20 * 1024 * 1024, "largest /invocations body the endpoint reads (bytes; larger: 413)",
        minimum=1, maximum=1024**3,
    )
    serve_log_sample: float = _setting(
        0.01, "fraction of requests whose predictions the endpoint logs to the bucket "
        "(predictions_prefix; 0: off)", minimum=0, maximum=1,
    )

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

    @property
    def cron(self) -> str | None:
        """The DAG's schedule; None means manual runs only."""
        return None if self.schedule.lower() in MANUAL_SCHEDULES else self.schedule

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["work_dir"] = str(self.work_dir)
        out["classes"] = list(self.classes)
        out["split_ratios"] = list(self.split_ratios)
        return out


def settings() -> dict[str, tuple[dataclasses.Field[Any], Setting, Any]]:
    """Every setting: name -> (dataclass field, declaration, resolved type)."""
    hints = typing.get_type_hints(PipelineConfig)
    return {f.name: (f, f.metadata["setting"], hints[f.name])
            for f in dataclasses.fields(PipelineConfig)}


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def env_names() -> list[str]:
    """All environment variable names the config reads (the compose file is checked against it)."""
    return [env_name(name) for name in settings()]


def training_settings(cfg: PipelineConfig) -> dict[str, Any]:
    """The settings that change the model a training produces (declared ``affects_model``),
    as ``as_dict`` spells them, sorted by name."""
    values = cfg.as_dict()
    return {name: values[name] for name, (_, s, _) in sorted(settings().items())
            if s.affects_model}


def recipe_values(name: str) -> dict[str, Any]:
    """The values of the named recipe (``RECIPES``) for every setting ``SEED_RECIPE`` names."""
    _require(name in RECIPES, "recipe", f"{name!r} must be one of {', '.join(RECIPES)}")
    if name == "seed":
        return dict(SEED_RECIPE)
    values = {k: default_of(k) for k in SEED_RECIPE}
    return values | CPU_RECIPE_CHANGES if name == "cpu" else values


def default_of(name: str) -> Any:
    f = settings()[name][0]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> PipelineConfig:
    """Build the config from ``WEATHER_*`` variables, then apply keyword overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, (_, s, _) in settings().items():
        raw = env.get(env_name(name))
        if raw is None:
            continue
        if raw.strip() == "":
            if not s.empty_means_default:
                raise ConfigError(
                    f"{env_name(name)} ({name}) is set but empty: unset it for the default "
                    f"{default_of(name)!r} or give a value"
                )
            continue
        values[name] = parse(name, raw.strip())
    values.update(overrides)
    return _build(_with_recipe(values))


def from_env_only(names: tuple[str, ...], environ: Mapping[str, str] | None = None
                  ) -> PipelineConfig:
    """The defaults plus only ``names`` from the environment (DAG parse time: a bad training
    setting must fail its run, not hide the DAG)."""
    env = os.environ if environ is None else environ
    return from_env({env_name(n): env[env_name(n)] for n in names if env_name(n) in env})


def override(cfg: PipelineConfig, **changes: Any) -> PipelineConfig:
    """Per-run overrides (DAG params, CLI flags), validated like the rest; None is "unchanged".

    A ``recipe`` among them sets all of its values for the run, over the deployment's, except
    the settings given beside it in the same call (``recipe="seed", epochs=3``: the seed's
    recipe with 3 epochs).
    """
    changes = {k: v for k, v in changes.items() if v is not None}
    unknown = sorted(set(changes) - set(settings()))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    return dataclasses.replace(cfg, **_with_recipe(changes))


def per_run_settings(command: str | None = None) -> dict[str, tuple[Setting, Any]]:
    """The settings a run may override (all, or those the CLI ``command`` takes as flags)."""
    return {
        name: (s, kind)
        for name, (_, s, kind) in settings().items()
        if s.per_run and (command is None or command in s.commands)
    }


def dag_params() -> dict[str, dict[str, Any]]:
    """The DAG's trigger-form params as ``Param`` keyword arguments (JSON schema).

    Empty (None) means the deployment's ``WEATHER_*`` value; a boolean is a plain switch.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, (s, kind) in per_run_settings().items():
        default = default_of(name)
        if kind is bool:
            spec: dict[str, Any] = {
                "default": default,
                "type": "boolean",
                "description": f"{s.help[0].upper()}{s.help[1:]}.",
            }
        else:
            json_type = {int: "integer", float: "number"}.get(kind, "string")
            spec = {
                "default": None,
                "type": ["null", json_type],
                "description": f"{s.help[0].upper()}{s.help[1:]} "
                f"(empty: {env_name(name)}, default {default}).",
            }
            if s.choices:
                spec["enum"] = [None, *s.choices]
            if s.minimum is not None:
                spec["exclusiveMinimum" if s.exclusive else "minimum"] = s.minimum
            if s.maximum is not None:
                spec["exclusiveMaximum" if s.exclusive else "maximum"] = s.maximum
        if s.title:
            spec["title"] = s.title
        out[name] = spec
    return out


def cli_flags(command: str) -> list[tuple[str, dict[str, Any]]]:
    """``argparse`` flags for ``command``'s per-run settings: (flag, add_argument kwargs)."""
    flags = []
    for name, (s, kind) in per_run_settings(command).items():
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": None,
            # argparse formats help with %: a literal one (e.g. "95%") is written %%.
            "help": f"{s.help} (default: ${env_name(name)} or {default_of(name)})".replace(
                "%", "%%"),
        }
        if s.choices:
            kwargs["choices"] = s.choices
        elif kind is bool:
            kwargs["action"] = "store_const"
            kwargs["const"] = True
        else:
            kwargs["type"] = kind
            kwargs["metavar"] = "N" if kind in (int, float) else "VALUE"
        flags.append(("--" + name.replace("_", "-"), kwargs))
    return flags


def parse(name: str, raw: str) -> Any:
    """One variable's text -> the setting's type; the error names the variable."""
    kind = settings()[name][2]
    try:
        if kind == tuple[str, ...]:
            return tuple(c.strip().lower() for c in raw.split(",") if c.strip())
        if kind == tuple[float, ...]:
            return tuple(float(x) for x in raw.split(",") if x.strip())
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("expected true or false")
            return raw.lower() in ("true", "1", "yes")
        if kind in (int, float, Path):
            return kind(raw)
        return raw
    except ValueError as exc:
        type_name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"{env_name(name)}={raw!r} is not a valid {type_name}: {exc}") from exc


def _with_recipe(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` over the values of the recipe they name (explicit settings win)."""
    if "recipe" not in values:
        return values
    return recipe_values(values["recipe"]) | values


def _build(values: dict[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc


def _require(ok: bool, setting: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{env_name(setting)} ({setting}): {message}")


def _check_declared(c: PipelineConfig) -> None:
    """Types, bounds and choices, from each setting's declaration."""
    for name, (_, s, kind) in settings().items():
        value = getattr(c, name)
        if s.choices:
            _require(value in s.choices, name, f"{value!r} must be one of {', '.join(s.choices)}")
        elif kind is bool:
            _require(isinstance(value, bool), name, f"{value!r} must be true or false")
        elif kind is int:
            low, high = s.minimum, s.maximum
            _require(
                isinstance(value, int) and not isinstance(value, bool)
                and (low is None or value >= low) and (high is None or value <= high),
                name,
                f"{value!r} must be an integer in [{low}, {high}]",
            )
        elif kind is float:
            _require(isinstance(value, int | float) and not isinstance(value, bool), name,
                     f"{value!r} must be a number")
            low, high = s.minimum, s.maximum
            if s.exclusive:
                ok = (low is None or value > low) and (high is None or value < high)
                _require(ok, name, f"{value} must be in ({low}, {high})")
            else:
                ok = (low is None or value >= low) and (high is None or value <= high)
                _require(ok, name, f"{value} not in [{low}, {high}]")


# Where each URL setting's credentials belong instead of its user:password@.
_CREDENTIALS_HINT = {
    "s3_endpoint_url": "remove them and set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
    "(or the Airflow connection) instead",
    "mlflow_tracking_uri": "remove them and set MLFLOW_TRACKING_USERNAME / "
    "MLFLOW_TRACKING_PASSWORD instead",
    "mlflow_ui_url": "remove them: the link is shown to people, who log in to MLflow in the "
    "browser (the pipeline's own account is MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)",
}


def _authority(url: str) -> tuple[str, str]:
    """``url``'s scheme (with ``://``; empty without one) and its ``[user[:password]@]host[:port]``.

    Split by hand, not by urllib: ``user:pw@host:9000`` (no scheme) parses as scheme ``user``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    return scheme + sep, re.split(r"[/?#]", rest, maxsplit=1)[0]


def _has_credentials(url: str) -> bool:
    """Whether ``url`` names a user (and maybe a password) before its host."""
    return "@" in _authority(url)[1]


def _without_credentials(url: str) -> str:
    """``url``'s scheme and host, its user:password replaced by ``***`` (for messages)."""
    scheme, authority = _authority(url)
    return f"{scheme}***@{authority.rpartition('@')[2]}"


def _valid_netloc(url: str) -> bool:
    """A host, and a port in range if one is given (urllib raises on 70000)."""
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port
    except ValueError:
        return False
    return bool(parts.hostname)


def _validate(c: PipelineConfig) -> None:
    _check_declared(c)
    _require(
        3 <= len(c.bucket) <= 63 and c.bucket == c.bucket.lower() and " " not in c.bucket,
        "bucket",
        f"{c.bucket!r} is not a valid bucket name (3-63 lower-case characters)",
    )
    for name in ("incoming_prefix", "curated_prefix", "quarantine_prefix", "locks_prefix",
                 "nights_prefix", "predictions_prefix"):
        value = getattr(c, name)
        _require(
            value.endswith("/") and not value.startswith("/"),
            name,
            f"{value!r} must end with '/' and not start with it",
        )
    prefixes = [c.incoming_prefix, c.curated_prefix, c.quarantine_prefix, c.locks_prefix,
                c.nights_prefix, c.predictions_prefix]
    for a in prefixes:
        for b in prefixes:
            _require(
                a is b or not b.startswith(a),
                "curated_prefix",
                f"prefixes must not nest ({a!r} contains {b!r})",
            )
    for name in ("s3_endpoint_url", "mlflow_ui_url", "mlflow_tracking_uri"):
        url = getattr(c, name)
        if name == "mlflow_tracking_uri" and not url.startswith(("http://", "https://")):
            continue  # a local store (file:, sqlite:, a path) is fine for tracking
        # Before any message that quotes the URL: a password in it would end up in task logs,
        # XCom and the UI's links; credentials come from their own variables.
        _require(
            url is None or not _has_credentials(url),
            name,
            f"{_without_credentials(url or '')} carries credentials (user:password@); "
            f"{_CREDENTIALS_HINT[name]}",
        )
        _require(
            url is None or url.startswith(("http://", "https://")),
            name,
            f"{url!r} must start with http:// or https://",
        )
        _require(url is None or _valid_netloc(url), name,
                 f"{url!r} has no valid host and port")
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
    # Cross-field: caught when the run starts, not after an MLflow run is open.
    _require(
        c.image_size >= MIN_IMAGE_SIZE[c.model],
        "image_size",
        f"{c.image_size} is too small for {c.model}: it needs at least "
        f"{MIN_IMAGE_SIZE[c.model]} px",
    )
    _require(0 <= c.lr_min < c.learning_rate, "lr_min", "must be in [0, learning_rate)")
    if c.progressive_resize:
        _require(
            c.model in SIZE_FREE_MODELS,
            "progressive_resize",
            f"{c.model}'s weights depend on the input size (Flatten): only "
            f"{', '.join(SIZE_FREE_MODELS)} can start at a smaller size",
        )
        _require(
            MIN_IMAGE_SIZE[c.model] <= c.progressive_resize < c.image_size,
            "progressive_resize",
            f"{c.progressive_resize} must be in [{MIN_IMAGE_SIZE[c.model]}, image_size "
            f"{c.image_size}) for {c.model}, or 0 (off)",
        )
    for name in ("registered_model", "experiment_name", "schedule"):
        _require(bool(getattr(c, name).strip()), name, "must not be empty")
