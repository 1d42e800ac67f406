"""The ``weather`` command: one subcommand per pipeline stage.

Every subcommand builds the config from ``WEATHER_*`` variables, applies its flags as
overrides (the flags are generated from the per-run settings of :mod:`weather_tasks.config`),
calls one library function and prints its report (JSON with ``--json``).

Other packages add subcommands through the entry-point group ``weather.commands``: each entry
is a ``register(subparsers)`` callable (the development package adds ``weather demo`` so).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from weather_tasks import config, tracking
from weather_tasks.config import ConfigError, PipelineConfig, PipelineError

COMMAND_GROUP = "weather.commands"
# A person at a terminal wants an unreachable MLflow server reported in seconds, not after
# MLflow's minutes of retries (DAG tasks keep the config's longer defaults). A WEATHER_*
# variable still wins.
INTERACTIVE_DEFAULTS: dict[str, Any] = {"mlflow_http_retries": 1, "mlflow_http_timeout": 30}


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


def cmd_predict(cfg: PipelineConfig, args: argparse.Namespace) -> Any:
    from weather_tasks import serving

    model_uri = args.model_uri or tracking.champion_uri(cfg.registered_model)
    return serving.predict_files(model_uri, args.images, cfg)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="weather", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, and the traceback of a failure")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[..., Any], help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--json", action="store_true", help="print the report as JSON")
        for flag, kwargs in config.cli_flags(name):
            sp.add_argument(flag, **kwargs)
        sp.set_defaults(func=func)
        return sp

    add("ingest", cmd_ingest, "ingest new objects from incoming/ into a new manifest version")
    sp = add("upload", cmd_upload, "upload a local folder of photos to incoming/")
    sp.add_argument("folder")
    sp = add("verify", cmd_verify, "check curated images and manifests against the bucket")
    sp.add_argument(
        "--repair",
        action="store_true",
        help="restore missing or corrupt images from incoming/, or drop them in a "
        "new manifest version (reason lost)",
    )
    sp = add("train", cmd_train, "train a model on a manifest version, tracked in MLflow")
    sp.add_argument("--manifest-version", default=None, help="default: the latest")
    sp = add("evaluate", cmd_evaluate, "evaluate a run's model against the champion")
    sp.add_argument("run_id")
    sp.add_argument("--manifest-version", default=None, help="default: the run's manifest")
    sp = add("promote", cmd_promote, "register the run's model as champion if it won")
    sp.add_argument("run_id")
    sp = add("rollback", cmd_rollback, "move the champion alias back")
    sp.add_argument("--to", default=None, help="model version (default: the previous one)")
    sp = add("predict", cmd_predict, "classify images with the champion (or --model-uri)")
    sp.add_argument("images", nargs="+")
    sp.add_argument("--model-uri", default=None)
    for entry in entry_points(group=COMMAND_GROUP):
        entry.load()(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        flags = {name: getattr(args, name, None) for name in config.per_run_settings()}
        interactive = {k: v for k, v in INTERACTIVE_DEFAULTS.items()
                       if not os.environ.get(config.env_name(k), "").strip()}
        cfg = config.from_env(**interactive, **{k: v for k, v in flags.items() if v is not None})
        tracking.configure_process(cfg)  # this process's MLflow tracking server, set once
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
