"""The ``weather`` command: one subcommand per pipeline stage, plus ``status`` and ``predict``.

Every subcommand builds the config from ``WEATHER_*`` variables, applies its flags as
overrides (the flags are generated from the per-run settings of :mod:`weather_tasks.config`),
calls one library function and prints its report (JSON with ``--json``). Its ``--help`` lists
the variables it reads with their defaults, generated from the same declarations
(:data:`READS` names which).

Quiet by default: library loggers (botocore, urllib3, MLflow) speak only of errors,
TensorFlow's C++ log only of warnings, MLflow draws no download progress bar, and the notices
TensorFlow's native code writes to the process's stderr when it loads (absl's "before
InitializeLog" line, "oneDNN custom operations are on", the CPU-feature note: on some CPUs,
before any setting can silence them) are filtered out of fd 2 while the command runs
(:func:`_native_notices_filtered`; everything else passes through). ``-v`` shows their INFO
lines and this package's DEBUG lines, ``-vv`` all.

Other packages add subcommands through the entry-point group ``weather.commands``: each entry
is a ``register(subparsers)`` callable (the development package adds ``weather demo`` so).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import textwrap
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Any

from weather_tasks import config, tracking
from weather_tasks.config import ConfigError, PipelineConfig, PipelineError

COMMAND_GROUP = "weather.commands"
# A person at a terminal wants an unreachable MLflow server reported in seconds, not after
# MLflow's minutes of retries (DAG tasks keep the config's longer defaults). A WEATHER_*
# variable still wins.
INTERACTIVE_DEFAULTS: dict[str, Any] = {"mlflow_http_retries": 1, "mlflow_http_timeout": 30}
# Loggers that say what nobody at a terminal asked for ("Found credentials in environment
# variables", urllib3's retry warnings, which the one-line error sums up, MLflow's progress).
# Python warnings go to logger "py.warnings" (MLflow warns about type hints at every load).
CHATTY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "mlflow", "alembic", "absl",
                  "py.warnings")
# TensorFlow's native start-up notices, written to fd 2 whatever TF_CPP_MIN_LOG_LEVEL says:
# absl INFO/WARNING lines ("I0000 00:00:1795932283.72 26814 port.cc:153] ..." before absl is
# initialized), absl's own warning about that, and the CPU note's second line.
_NATIVE_NOTICE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] "
    rb"|To enable the following instructions: )"
)
# What `weather --version` names besides this package (metadata only: nothing is imported).
_COMPONENTS = (("mlflow", ("mlflow",)), ("tensorflow", ("tensorflow", "tensorflow-cpu")),
               ("keras", ("keras",)))

# Subcommand help: text width, and the widest NAME=default kept on its help's line.
_HELP_WIDTH = 79
_SETTING_COLUMN = 30
# The settings each subcommand reads (its flags' settings are added): its --help lists them.
_S3 = ("bucket", "s3_endpoint_url", "s3_region", "s3_max_attempts", "s3_connect_timeout",
       "s3_read_timeout")
_MLFLOW = ("mlflow_tracking_uri", "mlflow_http_retries", "mlflow_http_timeout")
_IMAGE_CHECKS = ("min_image_side", "max_image_pixels", "max_object_bytes")
_DATASET = ("curated_prefix", "classes", "split_ratios", "split_seed")
_LEASE = ("locks_prefix", "lease_expiry", "lease_wait")
READS: dict[str, tuple[str, ...]] = {
    "ingest": (*_S3, "incoming_prefix", "quarantine_prefix", *_DATASET, *_IMAGE_CHECKS,
               "parallelism"),
    "upload": (*_S3, "incoming_prefix", "parallelism"),
    "verify": (*_S3, "incoming_prefix", "quarantine_prefix", *_DATASET, *_IMAGE_CHECKS,
               "parallelism"),
    "train": (*_S3, *_DATASET, "work_dir", "parallelism", *_MLFLOW, "experiment_name",
              *(name for name, (_, s, _) in config.settings().items() if s.affects_model)),
    "evaluate": (*_S3, *_DATASET, "work_dir", "parallelism", *_MLFLOW, "registered_model",
                 "accuracy_floor", "max_class_recall_drop"),
    "promote": (*_MLFLOW, "registered_model", *_S3, *_LEASE),
    "rollback": (*_MLFLOW, "registered_model", *_S3, *_LEASE),
    "card": (*_MLFLOW, "registered_model", *_S3, "curated_prefix", "classes"),
    "predict": (*_MLFLOW, "registered_model", *_IMAGE_CHECKS),
    "status": (*_S3, "nights_prefix", *_MLFLOW, "registered_model", "status_max_age_hours"),
    "screen": (*_S3, *_DATASET, "work_dir", "parallelism", *_MLFLOW, "experiment_name",
               "registered_model", "drift_hold_p_value", "suspect_labels"),
    "review": (*_S3, "curated_prefix", "quarantine_prefix", "parallelism"),
    "serve": (*_MLFLOW, "registered_model", "serve_poll_seconds", "serve_max_request_bytes",
              "serve_log_sample", *_S3, "predictions_prefix"),
}


def _print(result: Any, as_json: bool) -> None:
    data = result.as_dict() if hasattr(result, "as_dict") else result
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif hasattr(result, "summary"):
        print(result.summary())
    else:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))


def cmd_ingest(cfg: PipelineConfig, args: argparse.Namespace) -> Any:
    from weather_tasks import ingest, storage

    return ingest.ingest(cfg, storage.make_client(cfg))


def cmd_upload(cfg: PipelineConfig, args: argparse.Namespace) -> Any:
    from weather_tasks import ingest, storage

    return ingest.upload_folder(cfg, storage.make_client(cfg), args.folder)


def cmd_verify(cfg: PipelineConfig, args: argparse.Namespace) -> Any:
    from weather_tasks import storage, verify

    return verify.verify(cfg, storage.make_client(cfg), repair=args.repair)


def cmd_train(cfg: PipelineConfig, args: argparse.Namespace) -> Any:
    from weather_tasks import manifest, storage

    # Read the manifest before importing TensorFlow (seconds): a missing or damaged one is
    # reported at once, not after the import.
    s3 = storage.make_client(cfg)
    version = manifest.read_manifest(s3, cfg, args.manifest_version).version
    from weather_tasks import train

    return train.train_model(cfg, version, s3=s3)


def cmd_evaluate(cfg: PipelineConfig, args: argparse.Namespace) -> Any:
    from weather_tasks import evaluate

    return evaluate.evaluate_challenger(cfg, args.run_id, args.manifest_version)


def cmd_promote(cfg: PipelineConfig, args: argparse.Namespace) -> Any:
    from weather_tasks import registry

    return registry.promote_if_better(cfg, args.run_id)


def cmd_rollback(cfg: PipelineConfig, args: argparse.Namespace) -> Any:
    from weather_tasks import registry

    return registry.rollback(cfg, args.to)


def cmd_card(cfg: PipelineConfig, args: argparse.Namespace) -> Any:
    from weather_tasks import card

    if args.version is not None and args.run is not None:
        raise card.CardError("give a VERSION or --run RUN_ID, not both")
    built = card.build_card(cfg, args.version, run_id=args.run)
    return card.save_card(built, args.out)


def cmd_predict(cfg: PipelineConfig, args: argparse.Namespace) -> Any:
    from weather_tasks import serving

    model_uri = args.model_uri or tracking.champion_uri(cfg.registered_model)
    return serving.predict_files(model_uri, args.images, cfg)


def cmd_serve(cfg: PipelineConfig, args: argparse.Namespace) -> Any:
    from weather_tasks import endpoint

    return endpoint.serve(cfg, host=args.host, port=args.port)


def cmd_screen(cfg: PipelineConfig, args: argparse.Namespace) -> Any:
    from weather_tasks import manifest, storage

    # Read the manifest before importing TensorFlow (as train): a missing one is told at once.
    s3 = storage.make_client(cfg)
    version = manifest.read_manifest(s3, cfg, args.manifest_version).version
    from weather_tasks import screen

    return screen.screen_night(cfg, s3, version)


def cmd_status(cfg: PipelineConfig, args: argparse.Namespace) -> Any:
    from weather_tasks import status, storage

    s3 = storage.make_client(cfg)
    return status.check_night(cfg, s3) if args.check else status.status(cfg, s3)


def cmd_review(cfg: PipelineConfig, args: argparse.Namespace) -> Any:
    from weather_tasks import manifest, review, storage

    s3 = storage.make_client(cfg)
    if args.decision is None:
        if args.sha256s:
            raise review.ReviewError("give accept or reject before the sha256s")
        return review.review_report(manifest.read_manifest(s3, cfg))
    if args.decision == "accept":
        if args.reason is not None:
            raise review.ReviewError("--reason is for reject only")
        after = review.accept(s3, cfg, args.sha256s)
    else:
        after = review.reject(s3, cfg, args.sha256s, args.reason or review.DEFAULT_REASON)
    assert after.parent is not None  # a decision writes a child version
    before = manifest.read_manifest(s3, cfg, after.parent)
    return review.review_report(after, f"{args.decision}ed",
                                before.review.keys() - after.review.keys())


def version_text() -> str:
    """This package's version and its main components', from installed metadata."""

    def installed(dists: tuple[str, ...]) -> str:
        for dist in dists:
            try:
                return version(dist)
            except PackageNotFoundError:
                continue
        return "not installed"

    parts = ", ".join(f"{label} {installed(dists)}" for label, dists in _COMPONENTS)
    python = ".".join(str(n) for n in sys.version_info[:3])
    return f"weather {installed(('weather-retrain',))} ({parts}; Python {python})"


def settings_help(command: str) -> str:
    """The ``WEATHER_*`` variables ``command`` reads as ``NAME=default`` (this CLI's defaults;
    empty: unset), each with its help, in declaration order."""
    declared = config.settings()
    names = set(READS[command]) | set(config.per_run_settings(command))
    rows = []
    for name in (n for n in declared if n in names):
        default = INTERACTIVE_DEFAULTS.get(name, config.default_of(name))
        if isinstance(default, tuple):
            default = ",".join(str(x) for x in default)
        elif isinstance(default, bool):
            default = str(default).lower()
        rows.append((f"{config.env_name(name)}={'' if default is None else default}",
                     declared[name][1].help))
    width = min(max(len(left) for left, _ in rows), _SETTING_COLUMN)
    lines = []
    for left, text in rows:
        indent = " " * (width + 4)
        if len(left) > width:
            lines.append(f"  {left}")
            lines.append(textwrap.fill(text, _HELP_WIDTH, initial_indent=indent,
                                       subsequent_indent=indent))
        else:
            lines.append(textwrap.fill(text, _HELP_WIDTH, initial_indent=f"  {left:<{width}}  ",
                                       subsequent_indent=indent))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="weather",
        description="The weather-retrain pipeline: ingest photos, train, evaluate and promote "
        "the classifier, classify images, and show what the last night did.",
        epilog="Settings come from WEATHER_* environment variables; `weather COMMAND --help` "
        "lists those a command reads, with their defaults.",
    )
    p.add_argument("--version", action="version", version=version_text())
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more detail: -v library INFO logs, this package's DEBUG logs and the "
                   "traceback of a failure; -vv everything")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[..., Any], help_: str, description: str,
            examples: Sequence[str]) -> argparse.ArgumentParser:
        epilog = "\n".join([
            "examples:", *(f"  {e}" for e in examples), "",
            "settings (environment variable=default):", settings_help(name),
        ])
        sp = sub.add_parser(name, help=help_, epilog=epilog,
                            description=textwrap.fill(description, _HELP_WIDTH),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.add_argument("--json", action="store_true", help="print the report as JSON")
        # Also after the command (`weather predict -v x.jpg`); unset here leaves the main one.
        sp.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more detail (see weather --help)")
        for flag, kwargs in config.cli_flags(name):
            sp.add_argument(flag, **kwargs)
        sp.set_defaults(func=func)
        return sp

    add("ingest", cmd_ingest, "ingest new objects from incoming/ into a new manifest version",
        "List incoming/, validate and label every object not seen before, store accepted "
        "images by content under curated/, quarantine the rest with a reason, and write a new "
        "immutable manifest version (none when nothing is new).",
        ["weather ingest", "weather ingest --json"])
    sp = add("upload", cmd_upload, "upload a local folder of photos to incoming/",
             "Upload every file of FOLDER (recursively) to incoming/ for the next ingest.",
             ["weather upload ./photos"])
    sp.add_argument("folder", help="local folder of photos named <class>_<n>.<ext>")
    sp = add("verify", cmd_verify, "check curated images and manifests against the bucket",
             "Check every manifest version and curated image; exit 1 when one is damaged or "
             "missing. --repair restores or drops what it can.",
             ["weather verify", "weather verify --repair"])
    sp.add_argument(
        "--repair",
        action="store_true",
        help="restore missing or corrupt images from incoming/, or drop them in a "
        "new manifest version (reason lost)",
    )
    sp = add("train", cmd_train, "train a model on a manifest version, tracked in MLflow",
             "Train the configured model on a manifest version (default: the latest) and log "
             "one MLflow run with its metrics, plots and the servable model.",
             ["weather train --epochs 5", "weather train --manifest-version v000007 "
              "--model model_1 --image-size 128"])
    sp.add_argument("--manifest-version", default=None, help="default: the latest")
    sp = add("evaluate", cmd_evaluate, "evaluate a run's model against the champion",
             "Evaluate the run's model and the current champion on the same test images and "
             "record the promotion decision on the run.",
             ["weather evaluate 3f2a9c0d51e84b7c", "weather evaluate RUN_ID --min-delta 0.01"])
    sp.add_argument("run_id", help="MLflow run id of a training run")
    sp.add_argument("--manifest-version", default=None, help="default: the run's manifest")
    sp = add("promote", cmd_promote, "register the run's model as champion if it won",
             "Register the evaluated run's model and move @champion to it if its evaluation "
             "says promote (the replaced version becomes @previous).",
             ["weather promote 3f2a9c0d51e84b7c"])
    sp.add_argument("run_id", help="MLflow run id of an evaluated training run")
    sp = add("rollback", cmd_rollback, "move the champion alias back",
             "Move @champion to @previous (or --to VERSION); the version it leaves becomes "
             "@previous, so a second rollback undoes the first.",
             ["weather rollback", "weather rollback --to 3"])
    sp.add_argument("--to", default=None, help="model version (default: the previous one)")
    sp = add("card", cmd_card, "write the model card of a version (default: the champion)",
             "Build the model card of a registered version (default: @champion) or of a run "
             "(--run): intended use, data, recipe, test metrics with intervals, calibration, "
             "comparison with the champion it replaced, the decision and known weaknesses; "
             "write model_card.html (self-contained) and model_card.md into --out.",
             ["weather card", "weather card 3 --out cards/",
              "weather card --run 3f2a9c0d51e84b7c"])
    sp.add_argument("version", nargs="?", default=None, help="model version (default: "
                    "the @champion)")
    sp.add_argument("--run", default=None, metavar="RUN_ID",
                    help="the card of this MLflow run instead (registered or not)")
    sp.add_argument("--out", default=".", metavar="DIR",
                    help="folder to write model_card.html and model_card.md (default: .)")
    sp = add("predict", cmd_predict, "classify images with the champion (or --model-uri)",
             "Classify image files. Every file is checked first, as ingest checks an object "
             "(one line per unusable file: path, reason code, detail); the model is loaded only "
             "if a file is usable, and the report names the version that answered "
             "(models:/<name>/<version>). Exit 1 if any file failed, after printing all.",
             ["weather predict photo.jpg", "weather predict --json photos/*.jpg",
              "weather predict --model-uri models:/weather-classifier/3 photo.jpg"])
    sp.add_argument("images", nargs="+", metavar="IMAGE", help="image file (JPEG, PNG, GIF, "
                    "BMP, WebP; by content)")
    sp.add_argument("--model-uri", default=None, help="models:/<name>/<version>, "
                    "models:/<name>@<alias> or runs:/<run id>/model (default: "
                    "models:/$WEATHER_REGISTERED_MODEL@champion)")
    sp = add("serve", cmd_serve, "serve the champion over HTTP, following @champion",
             "Serve models:/<name>@champion over HTTP (MLflow's scoring protocol: POST "
             "/invocations with base64 images; GET /ping, /version, /metrics). The alias is "
             "polled every WEATHER_SERVE_POLL_SECONDS; a new champion is loaded beside the "
             "served one and swapped in without failing a request. A sample of predictions "
             "(WEATHER_SERVE_LOG_SAMPLE) is logged to the bucket. Runs until interrupted.",
             ["weather serve", "weather serve --port 9000"])
    sp.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default: 127.0.0.1, this machine only; give "
                    "another interface's address to serve other machines)")
    sp.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    sp = add("status", cmd_status, "the champion, the previous version and the last night",
             "The champion and previous versions (accuracy, manifest, promotion date, run) "
             "from MLflow, and the newest night summary the DAG's report task wrote to the "
             "bucket: outcome, ingest counts with quarantine reasons, evaluation reasons, "
             "promotion. --check reads the bucket only and exits 1 with one line when the "
             "newest night is older than WEATHER_STATUS_MAX_AGE_HOURS or failed (for cron or "
             "a monitoring system: it works with the scheduler down).",
             ["weather status", "weather status --check || alert 'weather night missing'"])
    sp.add_argument("--check", action="store_true",
                    help="only check the newest night: exit 1 when it is too old or failed")
    sp = add("screen", cmd_screen, "screen a manifest version's new photos (drift, labels)",
             "Compare the photos new in a manifest version (default: the latest) with the "
             "training photos of earlier versions: image statistics (KS tests), the champion's "
             "embeddings (MMD permutation test), its class mix and confidence, and suspect "
             "labels (cleanlab). Logs one MLflow run in <experiment>-screening. With "
             "WEATHER_SUSPECT_LABELS=review, train/val suspects are held for review (a new "
             "manifest version).",
             ["weather screen", "weather screen v000007 --json"])
    sp.add_argument("manifest_version", nargs="?", default=None, metavar="MANIFEST_VERSION",
                    help="default: the latest")
    sp = add("review", cmd_review, "list, accept or reject photos held for review",
             "Without a decision, list the photos of the latest manifest held out of training "
             "because the champion confidently contradicts their file-name label (sha256, "
             "label, predicted class, confidence, split, version that flagged them, source "
             "keys). accept: they are trained on from the next night. reject: they leave the "
             "dataset and the same bytes are quarantined (rejected_in_review) under any key. "
             "Each decision writes one new manifest version; test photos are never held.",
             ["weather review", "weather review accept 3f2a9c0d51e8",
              "weather review reject 3f2a9c0d51e8 77ab01c2 --reason 'a snowy road, not rain'"])
    sp.add_argument("decision", nargs="?", choices=("accept", "reject"),
                    help="default: list the photos held for review")
    sp.add_argument("sha256s", nargs="*", metavar="SHA256",
                    help="a held photo's sha256 or a prefix of 8 or more hex digits")
    sp.add_argument("--reason", default=None,
                    help="why they are rejected (reject only; default: rejected in review)")
    for entry in entry_points(group=COMMAND_GROUP):
        entry.load()(sub)
    return p


def configure_logging(verbosity: int) -> None:
    """Quiet by default (library loggers and Python warnings at ERROR, TensorFlow's C++ log
    at WARNING); ``-v`` their INFO and this package's DEBUG; ``-vv`` everything."""
    logging.captureWarnings(True)
    logging.basicConfig(
        level=logging.DEBUG if verbosity >= 2 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if verbosity == 1:
        logging.getLogger("weather_tasks").setLevel(logging.DEBUG)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(
            (logging.ERROR, logging.INFO, logging.DEBUG)[min(verbosity, 2)]
        )
    if not verbosity:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # read when TensorFlow is imported
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@contextlib.contextmanager
def _native_notices_filtered() -> Iterator[None]:
    """Pass fd 2 through a pipe that drops TensorFlow's native start-up notices.

    Python's logging cannot reach them (C++ writes to the file descriptor), so the descriptor
    itself is swapped for a pipe; a thread copies every other line to the real stderr. On the
    way out the descriptor is restored, which closes the pipe, and the thread drains it.
    """
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    saved = os.dup(2)
    os.dup2(write_fd, 2)
    os.close(write_fd)

    # Both ends opened here, not in the thread: the command may finish (and close ``saved``)
    # before the thread first runs.
    source, sink = os.fdopen(read_fd, "rb"), os.fdopen(os.dup(saved), "wb", 0)

    def pump() -> None:
        with source, sink:
            for line in source:
                if not _NATIVE_NOTICE.match(line):
                    sink.write(line)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        thread.join(timeout=5)  # a child process still holding the pipe must not hang us


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        flags = {name: getattr(args, name, None) for name in config.per_run_settings()}
        interactive = {k: v for k, v in INTERACTIVE_DEFAULTS.items()
                       if not os.environ.get(config.env_name(k), "").strip()}
        cfg = config.from_env(**interactive, **{k: v for k, v in flags.items() if v is not None})
        tracking.configure_process(cfg)  # this process's MLflow tracking server, set once
        # Not around the demo: the services it starts would inherit the pipe as their stderr.
        filtered = not args.verbose and args.command != "demo"
        quiet = _native_notices_filtered() if filtered else contextlib.nullcontext()
        with quiet:
            result = _run(args, cfg)
    except ConfigError as exc:
        _explain(args)
        print(f"weather: configuration error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        _explain(args)
        print(f"weather {args.command}: error: {exc}", file=sys.stderr)
        return 1
    _print(result, args.json)
    failed = getattr(result, "failed", False)
    return 1 if failed else 0


def _run(args: argparse.Namespace, cfg: PipelineConfig) -> Any:
    """The command, with S3 and MLflow failures turned into one-line ``PipelineError``s."""
    from weather_tasks import storage

    with storage.s3_errors(cfg), tracking.mlflow_errors(cfg):
        return args.func(cfg, args)


def _explain(args: argparse.Namespace) -> None:
    """With ``-v``, the traceback behind the one-line message."""
    if args.verbose:
        traceback.print_exc()


if __name__ == "__main__":
    sys.exit(main())
