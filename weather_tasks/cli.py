"""The ``weather`` command: one subcommand per pipeline stage, plus the demo.

Every subcommand builds the config from ``WEATHER_*`` variables, applies its flags as
overrides, calls one library function and prints its report (JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from weather_tasks import config
from weather_tasks.config import ConfigError, PipelineConfig, PipelineError


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


def cmd_train(cfg: PipelineConfig, args: argparse.Namespace) -> Any:
    from weather_tasks import train

    return train.train_model(cfg, args.manifest_version)


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

    return serving.predict_files(args.model_uri or serving.champion_uri(cfg), args.images, cfg)


def cmd_demo(cfg: PipelineConfig, args: argparse.Namespace) -> Any:
    from weather_tasks import demo

    return demo.run_demo(args)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="weather", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[..., Any], help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--json", action="store_true", help="print the report as JSON")
        sp.set_defaults(func=func)
        return sp

    add("ingest", cmd_ingest, "ingest new objects from incoming/ into a new manifest version")
    sp = add("upload", cmd_upload, "upload a local folder of photos to incoming/")
    sp.add_argument("folder")
    sp = add("train", cmd_train, "train a model on a manifest version, tracked in MLflow")
    sp.add_argument("--manifest-version", default=None, help="default: the latest")
    _training_flags(sp)
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
    sp = add("demo", cmd_demo, "run the whole DAG end to end on local services")
    sp.add_argument("--images", default=None, help="upload this folder instead of synthetic scenes")
    sp.add_argument("--state-dir", default=".demo", help="where the demo keeps its state")
    sp.add_argument(
        "--serve", action="store_true",
        help="start the MLflow and Airflow UIs on the demo's state (Ctrl-C stops them)",
    )
    return p


def _training_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--model", choices=config.MODELS, default=None)
    sp.add_argument("--epochs", type=int, default=None)
    sp.add_argument("--batch-size", type=int, default=None)
    sp.add_argument("--image-size", type=int, default=None)
    sp.add_argument("--precision", choices=config.PRECISIONS, default=None)


_OVERRIDES = ("model", "epochs", "batch_size", "image_size", "precision")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        flags = {k: getattr(args, k, None) for k in _OVERRIDES}
        cfg = config.from_env(**{k: v for k, v in flags.items() if v is not None})
        result = args.func(cfg, args)
    except ConfigError as exc:
        print(f"weather: configuration error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"weather {args.command}: error: {exc}", file=sys.stderr)
        return 1
    _print(result, args.json)
    failed = getattr(result, "failed", False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
