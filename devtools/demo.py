"""``weather demo``: one night of the real pipeline on local services, step by step.

What it starts, all on 127.0.0.1 and all under the state directory (default ``.demo``):
an S3 server (moto), an MLflow tracking server + registry (SQLite, artifacts on the S3
server) and Airflow's own components on SQLite with the LocalExecutor (scheduler,
dag-processor, triggerer, API server with a login: ``local_services.start_airflow_stack``).
It uploads photos to ``incoming/`` (synthetic scenes by default, ``--images DIR`` for a real
folder), then triggers the real DAG ``weather_retrain`` through the REST API and follows it
there and in MLflow (``devtools.night``): the scheduler runs the tasks (ingest, short-circuit,
train, evaluate, promote, report), and their logs are in the UI.

Every invocation is one more night. The first uploads the initial set (plus a few bad files,
to show quarantine); later ones add a few new images, so they show an incremental night
against the champion. ``--serve`` keeps the same services running on what the nights made
(the UIs, the Trigger button, the nightly schedule) until Ctrl-C.

State across invocations: moto keeps S3 objects in memory only (its server has no disk
persistence), so after each night the demo mirrors every bucket into ``<state>/s3``
(objects plus an index with ETag, content type and metadata) and restores them on the next
start. Re-uploading the same bytes gives the same ETag (MD5 for single-part puts), and
ingest decides "new" by key and ETag, so a restored bucket looks exactly as it was. The
MLflow and Airflow databases are SQLite files in the state directory.

``weather demo`` is this module's subcommand of the ``weather`` CLI, registered through the
``weather.commands`` entry point (devtools/pyproject.toml) by :func:`register`.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools import local_services
from devtools import night as dag_night
from devtools.airflow_api import ApiError
from weather_tasks import config
from weather_tasks.config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]
DAG_ID = dag_night.DAG_ID
MLFLOW_BUCKET = "mlflow-artifacts"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class DemoSettings:
    """Demo defaults, chosen so a night finishes in minutes on a 2-core CPU.

    Production defaults are 250 px and 100 epochs; the demo keeps the seed's model and
    recipe but trains smaller images for fewer epochs. Any ``WEATHER_*`` variable set in the
    environment still wins (e.g. ``WEATHER_EPOCHS=30 weather demo``).
    """

    image_size: int = 64
    per_class: int = 60
    new_per_class: int = 3
    epochs: int = 25
    # Small batches give BatchNorm's running statistics enough steps to settle on a small
    # dataset (until they do, validation sits at chance), and a longer LR patience keeps
    # ReduceLROnPlateau from cutting the LR during that warm-up (seed: 5).
    batch_size: int = 8
    lr_patience: int = 10
    model: str = "model_3"
    # Real folders are larger (the mwd set: ~600 training photos), so batches of 16 already
    # give BatchNorm enough steps. 30 epochs at 64 px: bench/quality.py's time-to-accuracy
    # curve still rises at epoch 15 (README, "Quality benchmark"), and 30 keeps the first
    # night within about 10 minutes on 2 cores; the `cpu` recipe is for more.
    real_epochs: int = 30
    real_batch_size: int = 16
    bucket: str = "weather"
    mlflow_port: int = 5000
    airflow_port: int = 8080
    night_timeout_s: float = 3600

    def pipeline_env(self) -> dict[str, str]:
        """A demo night is triggered by the demo: no schedule (``--serve`` sets the nightly one)."""
        return {
            "WEATHER_BUCKET": self.bucket,
            "WEATHER_IMAGE_SIZE": str(self.image_size),
            "WEATHER_EPOCHS": str(self.epochs),
            "WEATHER_BATCH_SIZE": str(self.batch_size),
            "WEATHER_LR_PATIENCE": str(self.lr_patience),
            "WEATHER_MODEL": self.model,
            "WEATHER_SCHEDULE": "none",
        }


@dataclass(frozen=True)
class DemoReport:
    """One demo night: what the DAG run did, and where to look at it."""

    night: int
    state: str
    seconds: float
    run_id: str | None
    tasks: dict[str, str | None]
    report: dict[str, Any] | None
    state_dir: str
    log: str
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step: airflow, night...
    lines: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return self.state != "success"

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("lines")
        return out

    def summary(self) -> str:
        return "\n".join(self.lines)


@dataclass
class _State:
    """What persists between invocations (``<state>/state.json``)."""

    nights: int = 0
    next_index: int = 1
    real_pending: list[str] = field(default_factory=list)
    images_source: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> _State:
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1))


class _Progress:
    """Numbered steps with their duration, flushed as they happen."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.n = 0
        self.started = time.monotonic()
        self.name = ""
        self.seconds: dict[str, float] = {}  # each finished step's duration, by name

    def step(self, name: str, text: str) -> float:
        self.n += 1
        self.name = name
        print(f"[{self.n}/{self.total}] {text}", flush=True)
        return time.monotonic()

    def done(self, since: float, text: str = "done") -> None:
        self.seconds[self.name] = round(time.monotonic() - since, 1)
        print(f"      {text} ({self.seconds[self.name]:.1f}s)", flush=True)

    @staticmethod
    def info(text: str) -> None:
        print(f"      {text}", flush=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    """The ``weather demo`` subcommand (entry point group ``weather.commands``)."""
    sp = subparsers.add_parser("demo", help="run the whole DAG end to end on local services")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.add_argument("--images", default=None, help="upload this folder instead of synthetic scenes")
    sp.add_argument("--state-dir", default=".demo", help="where the demo keeps its state")
    sp.add_argument(
        "--serve", action="store_true",
        help="start the MLflow and Airflow UIs on the demo's state (Ctrl-C stops them)",
    )
    sp.set_defaults(func=cmd_demo)


def cmd_demo(cfg: PipelineConfig, args: argparse.Namespace) -> DemoReport | ServeReport:
    """The CLI handler: the demo builds its own config (demo defaults, then ``WEATHER_*``)."""
    return run_demo(args)


def run_demo(args: argparse.Namespace) -> DemoReport | ServeReport:
    """One demo night (or, with ``--serve``, the UIs on the demo's state until Ctrl-C)."""
    settings = DemoSettings()
    state_dir = Path(getattr(args, "state_dir", None) or ".demo").resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update({k: v for k, v in local_services.LOCAL_S3_ENV.items()})
    logging.getLogger("botocore").setLevel(logging.WARNING)  # the steps speak for themselves
    if getattr(args, "serve", False):
        return serve_ui(state_dir, settings)
    try:
        return run_night(state_dir, settings, getattr(args, "images", None))
    except KeyboardInterrupt:
        raise SystemExit(
            f"interrupted: the services are stopped; state kept in {state_dir}"
        ) from None


def run_night(state_dir: Path, settings: DemoSettings, images: str | None) -> DemoReport:
    state_file = state_dir / "state.json"
    state = _State.load(state_file)
    night = state.nights + 1
    if images and night == 1:
        state.images_source = str(Path(images).resolve())
    elif images and str(Path(images).resolve()) != state.images_source:
        print(f"note: --images applies to the first night only; {state_dir} was started with "
              f"{state.images_source or 'synthetic scenes'} (rm -rf it to start over)")
    images = state.images_source if night == 1 else None
    if state.images_source:
        settings = dataclasses.replace(
            settings, epochs=settings.real_epochs, batch_size=settings.real_batch_size
        )
    env_settings = {**settings.pipeline_env(), **_weather_overrides()}
    cfg = config.from_env(environ=env_settings, work_dir=state_dir / "work")
    _print_header(night, state_dir, cfg, settings, state.images_source)

    progress = _Progress(total=6)
    with _demo_services(state_dir, settings, env_settings, progress) as (cfg, s3, stack):
        t = progress.step("upload", "Upload photos to incoming/")
        uploaded, what = _upload_night(cfg, s3, state, state_dir, settings, images, night)
        progress.done(t, f"{uploaded} files to s3://{cfg.bucket}/{cfg.incoming_prefix} ({what})")

        t = progress.step("night", f"Trigger the DAG {DAG_ID} through the REST API and follow it")
        result = _run_dag(stack, cfg, settings)
        progress.done(t, f"DAG run {result.run_id}: {result.state}")

    seconds = time.monotonic() - progress.started
    state.nights = night
    state.history.append({
        "night": night, "state": result.state, "seconds": round(seconds, 1),
        "outcome": (result.report or {}).get("outcome"),
        "champion": _champion_version(result.report),
    })
    state.save(state_file)
    lines = _night_lines(night, result, seconds, state, settings, state_dir)
    return DemoReport(
        night=night, state=result.state, seconds=round(seconds, 1), run_id=result.run_id,
        tasks=result.tasks, report=result.report, state_dir=str(state_dir),
        log=str(state_dir / "airflow" / "logs"), steps=progress.seconds, lines=tuple(lines),
    )


@dataclass(frozen=True)
class ServeReport:
    """What ``--serve`` leaves behind when stopped."""

    state_dir: str
    stopped_because: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        return f"Stopped ({self.stopped_because}); the demo state stays in {self.state_dir}."


def serve_ui(state_dir: Path, settings: DemoSettings) -> ServeReport:
    """The demo's services on its state until Ctrl-C: the UIs, the Trigger button and the
    nightly schedule (``WEATHER_SCHEDULE``, default ``0 2 * * *``)."""
    if not (state_dir / "airflow" / "airflow.db").exists():
        raise SystemExit(f"no demo state in {state_dir}: run `weather demo` first")
    env_settings = {**settings.pipeline_env(), "WEATHER_SCHEDULE": "", **_weather_overrides()}
    progress = _Progress(total=5)
    stopped_because = "interrupted: Ctrl-C or SIGTERM"
    # SIGTERM (kill, a service manager) stops it as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with _demo_services(state_dir, settings, env_settings, progress) as (cfg, _, stack):
            t = progress.step("unpause", "Unpause the DAGs (Trigger button and schedule)")
            dag = stack.api.wait_for_dag(DAG_ID, stack.started, timeout=300)
            dag_ids = stack.api.dag_ids()
            for dag_id in dag_ids:
                stack.api.set_paused(dag_id, False)
            progress.done(t, f"{', '.join(dag_ids)}; {DAG_ID}: {dag.get('timetable_summary')}")
            print(
                f"\nServing the demo state in {state_dir}:\n"
                f"  Airflow UI:   {stack.url}  (user {stack.user}, password {stack.password}; "
                f"DAG {DAG_ID}: runs, task logs, Trigger, 'MLflow run' links)\n"
                f"  Model page:   {stack.url}/weather-models/  (also Browse > Weather models)\n"
                f"  MLflow UI:    {cfg.mlflow_tracking_uri}/#/models/{cfg.registered_model}\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )
            while not (dead := [s for s in stack.services if s.process.poll() is not None]):
                time.sleep(1)
            stopped_because = f"airflow {dead[0].name} exited; its log: {dead[0].log_path}"
    except KeyboardInterrupt:
        pass
    return ServeReport(state_dir=str(state_dir), stopped_because=stopped_because)


@contextmanager
def _demo_services(
    state_dir: Path, settings: DemoSettings, env_settings: dict[str, str], progress: _Progress
) -> Iterator[tuple[PipelineConfig, Any, local_services.AirflowStack]]:
    """S3 (state restored), MLflow and Airflow on the demo state; on the way out the S3 state
    is saved (a failed or interrupted night keeps what it wrote: MLflow's database may point
    at artifacts on the S3 server), the DAGs are paused (a next start must not run a schedule
    parsed with other settings before the dag-processor has parsed this one's) and every
    process is stopped."""
    logs = state_dir / "logs"
    cfg = config.from_env(environ=env_settings, work_dir=state_dir / "work")
    services: list[local_services.Service] = []
    stack: local_services.AirflowStack | None = None
    s3: Any = None
    try:
        t = progress.step("s3", "S3 server (moto, in memory; state restored from disk)")
        s3_server = local_services.start_s3_server(logs)
        services.append(s3_server)
        cfg = config.override(cfg, s3_endpoint_url=s3_server.url)
        from weather_tasks import storage  # boto3: not on every `weather` command's start

        s3 = storage.make_client(cfg)
        restored = restore_buckets(s3, state_dir / "s3")
        for bucket in (cfg.bucket, MLFLOW_BUCKET):
            local_services.ensure_bucket(s3, bucket)
        progress.done(t, f"{s3_server.url}; restored {restored} objects from {state_dir / 's3'}")

        t = progress.step(
            "mlflow", "MLflow tracking server + registry (SQLite, artifacts on the S3 server)"
        )
        mlflow_server = local_services.start_mlflow_server(
            logs, backend_store_uri=f"sqlite:///{state_dir / 'mlflow.db'}",
            artifacts_destination=f"s3://{MLFLOW_BUCKET}/artifacts",
            s3_endpoint_url=s3_server.url, port=_port_or_free(settings.mlflow_port),
        )
        services.append(mlflow_server)
        cfg = config.override(cfg, mlflow_tracking_uri=mlflow_server.url)
        progress.done(t, mlflow_server.url)

        t = progress.step("airflow", "Airflow: scheduler, dag-processor, triggerer, "
                          "API server (SQLite, LocalExecutor, 127.0.0.1)")
        home = state_dir / "airflow"
        env = {
            **local_services.airflow_env(
                home, s3_endpoint_url=s3_server.url, mlflow_tracking_uri=mlflow_server.url,
                repo=REPO,
            ),
            **env_settings,
            "WEATHER_WORK_DIR": str(cfg.work_dir),
            "WEATHER_MLFLOW_UI_URL": mlflow_server.url,
        }
        stack = local_services.start_airflow_stack(
            env, logs, port=_port_or_free(settings.airflow_port),
            migrate=not (home / "airflow.db").exists(), say=_Progress.info,
        )
        progress.done(t, f"{stack.url} (user {stack.user}, password {stack.password}; "
                         f"also in {_rel(stack.password_file)})")
        yield cfg, s3, stack
    finally:
        if s3 is not None:
            t = progress.step("stop", "Save S3 state, stop the services")
            try:
                saved = snapshot_buckets(s3, [cfg.bucket, MLFLOW_BUCKET], state_dir / "s3")
                _Progress.info(f"{saved} new or changed objects written to {state_dir / 's3'}")
            except Exception as exc:  # noqa: BLE001 - report, then let the first error surface
                print(f"      could not save S3 state: {exc}", file=sys.stderr)
        if stack is not None:
            _pause_all(stack)
            stack.stop()
        local_services.stop_services(services[::-1])
        if s3 is not None:
            progress.done(t, "stopped")


# --- S3 state on disk ------------------------------------------------------------------------


def snapshot_buckets(s3: Any, buckets: Iterable[str], dest: Path) -> int:
    """Mirror ``buckets`` into ``dest`` (incremental by ETag); returns objects written."""
    index_path = dest / "index.json"
    index: dict[str, dict[str, Any]] = (
        json.loads(index_path.read_text()) if index_path.exists() else {}
    )
    todo: list[tuple[str, str, str]] = []
    for bucket in buckets:
        old = index.get(bucket, {})
        new: dict[str, Any] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                key, etag = obj["Key"], obj["ETag"].strip('"')
                if key in old and old[key]["etag"] == etag:
                    new[key] = old[key]
                else:
                    todo.append((bucket, key, etag))
        index[bucket] = new

    def fetch(item: tuple[str, str, str]) -> tuple[str, str, dict[str, Any]]:
        bucket, key, etag = item
        resp = s3.get_object(Bucket=bucket, Key=key)
        path = dest / "objects" / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(resp["Body"].read())
        return bucket, key, {
            "etag": etag,
            "content_type": resp.get("ContentType") or "application/octet-stream",
            "metadata": resp.get("Metadata") or {},
        }

    with ThreadPoolExecutor(max_workers=8) as pool:
        for bucket, key, entry in pool.map(fetch, todo):
            index[bucket][key] = entry
    dest.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, sort_keys=True))
    tmp.replace(index_path)  # atomic: a crash leaves the previous index
    return len(todo)


def restore_buckets(s3: Any, src: Path) -> int:
    """Re-create the buckets saved by :func:`snapshot_buckets`; returns objects restored."""
    index_path = src / "index.json"
    if not index_path.exists():
        return 0
    index: dict[str, dict[str, Any]] = json.loads(index_path.read_text())
    items = []
    for bucket, objects in index.items():
        local_services.ensure_bucket(s3, bucket)
        items += [(bucket, key, entry) for key, entry in objects.items()]

    def put(item: tuple[str, str, dict[str, Any]]) -> None:
        bucket, key, entry = item
        body = (src / "objects" / bucket / key).read_bytes()
        resp = s3.put_object(
            Bucket=bucket, Key=key, Body=body, ContentType=entry["content_type"],
            Metadata=entry.get("metadata") or {},
        )
        if resp["ETag"].strip('"') != entry["etag"]:
            raise RuntimeError(f"restored s3://{bucket}/{key} has a different ETag")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, items))
    return len(items)


# --- uploads -------------------------------------------------------------------------------------


def _upload_night(
    cfg: PipelineConfig, s3: Any, state: _State, state_dir: Path, settings: DemoSettings,
    images: str | None, night: int,
) -> tuple[int, str]:
    """Stage this night's files in ``<state>/uploads/night-N`` and upload them."""
    from devtools import scenes
    from weather_tasks import ingest

    folder = state_dir / "uploads" / f"night-{night}"
    if folder.exists():
        shutil.rmtree(folder)  # a previous attempt at this night that did not finish
    folder.mkdir(parents=True)
    if images and night == 1:
        count, held = _stage_real(Path(images), folder, cfg.classes, settings.new_per_class)
        state.real_pending = held
        what = f"real photos from {images}; {len(held)} held back for later nights"
    elif state.real_pending:
        batch = state.real_pending[: settings.new_per_class * len(cfg.classes)]
        state.real_pending = state.real_pending[len(batch):]
        for path in batch:
            (folder / Path(path).name).symlink_to(path)
        count, what = len(batch), "new real photos held back on night 1"
    elif state.images_source:
        # Every photo of the real folder is in: this night shows the short-circuit.
        return 0, "the real folder has no photos left: a night with nothing new"
    else:
        per_class = settings.per_class if night == 1 else settings.new_per_class
        made = scenes.generate_scenes(
            # Drawn larger than the training size, as photos are; the pipeline resizes.
            folder, per_class=per_class, size=128, seed=20260101,
            classes=cfg.classes, start_index=state.next_index,
        )
        state.next_index += per_class
        count = len(made)
        what = f"synthetic scenes, {per_class} per class"
        if night == 1:
            count += _stage_bad_files(folder, made)
            what += " + 4 problem files (duplicate, unlabelled, corrupt, not an image)"
    ingest.upload_folder(cfg, s3, folder)
    return count, what


def _stage_real(
    src: Path, folder: Path, classes: tuple[str, ...], hold_per_class: int
) -> tuple[int, list[str]]:
    """Symlink a real folder's photos (never copied), holding a few per class back."""
    if not src.is_dir():
        raise SystemExit(f"--images {src}: not a folder")
    files = sorted(p.resolve() for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"--images {src}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    held_by_class: list[list[str]] = []
    for c in classes:
        of_class = [str(p) for p in files if re.match(rf"{c}(?![a-z])", p.name.lower())]
        held_by_class.append(of_class[-hold_per_class:] if len(of_class) > 10 else [])
    held = {h for group in held_by_class for h in group}
    now = [p for p in files if str(p) not in held]
    for p in now:
        (folder / p.name).symlink_to(p)
    # Interleaved by class, so that each later night gets some of every class.
    order = [h for row in itertools.zip_longest(*held_by_class) for h in row if h]
    return len(now), order


def _stage_bad_files(folder: Path, made: list[Path]) -> int:
    """Files that ingest must not accept, to show the quarantine (and duplicate handling)."""
    first = made[0]
    shutil.copyfile(first, folder / f"{first.stem}_copy{first.suffix}")  # same bytes: duplicate
    shutil.copyfile(made[-1], folder / "fog_0001.jpg")  # no class name in the file name
    (folder / "rain_corrupt.jpg").write_bytes(first.read_bytes()[:300])  # truncated JPEG
    (folder / "cloudy_notes.txt").write_text("not a photo\n")
    return 4


# --- the DAG run ---------------------------------------------------------------------------------


def _run_dag(
    stack: local_services.AirflowStack, cfg: PipelineConfig, settings: DemoSettings
) -> dag_night.NightRun:
    """One night through :func:`devtools.night.run_night`, task states and epochs as they come."""

    def show(p: dag_night.NightProgress) -> None:
        _Progress.info(f"[{p.seconds:5.0f}s] {p.task:<13} {p.what}")

    _Progress.info(f"waiting for the dag-processor to parse {DAG_ID}")
    stack.api.wait_for_dag(DAG_ID, stack.started, timeout=300)
    stack.api.set_paused(DAG_ID, False)
    _Progress.info(f"watch it in the UI: {stack.url}/dags/{DAG_ID} (user {stack.user})")
    training = dag_night.Training(cfg.mlflow_tracking_uri, cfg.experiment_name)
    return dag_night.run_night(
        stack.api, {}, timeout=settings.night_timeout_s, training=training, on_progress=show
    )


def _pause_all(stack: local_services.AirflowStack) -> None:
    """Best effort: pause every DAG before the components stop (see ``_demo_services``)."""
    try:
        for dag_id in stack.api.dag_ids():
            stack.api.set_paused(dag_id, True)
    except (OSError, ApiError) as exc:
        print(f"      could not pause the DAGs: {exc}", file=sys.stderr)


# --- printing --------------------------------------------------------------------------------


def _print_header(
    night: int, state_dir: Path, cfg: PipelineConfig, s: DemoSettings, images: str | None
) -> None:
    source = f"real photos from {images}" if images else (
        f"synthetic scenes, {s.per_class} per class on night 1, {s.new_per_class} more per class "
        "on each later night"
    )
    print(
        f"weather demo: night {night} (state in {state_dir})\n"
        f"  images: {source}\n"
        f"  training: {cfg.model} at {cfg.image_size}px, {cfg.epochs} epochs, batch "
        f"{cfg.batch_size}, LR patience {cfg.lr_patience} (production: 250px, 100 epochs, "
        "batch 16, patience 5; override with WEATHER_*)\n"
        f"  promotion: accuracy floor {cfg.accuracy_floor}, min_delta {cfg.min_delta}, "
        f"max class recall drop {cfg.max_class_recall_drop}\n",
        flush=True,
    )


def _night_lines(
    night: int, result: dag_night.NightRun, seconds: float, state: _State, s: DemoSettings,
    state_dir: Path,
) -> list[str]:
    report = result.report or {}
    out = ["", f"Night {night}: {result.state} in {seconds:.0f}s "
               f"(DAG run {result.run_id}, outcome: {report.get('outcome')})"]
    out.append("  tasks: " + ", ".join(f"{k}={v}" for k, v in result.tasks.items()))
    ing = report.get("ingest")
    if ing:
        q = ing.get("quarantined_total") or 0
        out.append(
            f"  ingest: {ing.get('new')} new objects: {ing.get('accepted')} accepted, "
            f"{ing.get('duplicate')} duplicate, {q} quarantined; manifest "
            f"{ing.get('manifest_version')} (was {ing.get('previous_version')}), "
            f"{ing.get('images_total')} images in the dataset"
        )
        if q:
            out.append(f"          rejected files and reasons: s3://{s.bucket}/quarantine/")
    sc = report.get("screening")
    if sc:
        p = sc.get("mmd_p")
        drift = (f"drift MMD p={p:.3g}" if p is not None
                 else f"drift not tested ({sc.get('note') or 'no champion yet'})")
        out.append(
            f"  screen: {sc.get('n_new')} new photos vs the training photos: {drift}; "
            f"{sc.get('n_suspects') or 0} suspect label(s), {sc.get('held') or 0} held for "
            f"review" + (f"; HOLD: {sc['hold_reason']}" if sc.get("hold_reason") else "")
        )
    tr = report.get("train")
    if tr:
        out.append(
            f"  train: {tr.get('model')} at {tr.get('image_size')}px, {tr.get('epochs_run')} "
            f"epochs in {_num(tr.get('train_seconds'), '.0f')}s, best val_accuracy "
            f"{_num(tr.get('best_val_accuracy'), '.3f')}; MLflow run {tr.get('run_id')}"
        )
    ev = report.get("evaluation")
    if ev:
        chal = (ev.get("challenger") or {}).get("accuracy")
        champ = (ev.get("champion") or {}).get("accuracy")
        vs = (f"champion v{ev.get('champion_version')} {_num(champ, '.3f')}"
              if ev.get("champion") else "no champion yet")
        if ev.get("champion_error"):
            vs += f" (champion unusable: {ev['champion_error']})"
        out.append(
            f"  evaluate: challenger {_num(chal, '.3f')} vs {vs} on the same "
            f"{ev.get('n_test')} test images -> {'promote' if ev.get('promote') else 'keep'}"
        )
        for reason in ev.get("reasons") or []:
            out.append(f"            - {reason}")
    pr = report.get("promotion")
    if pr:
        if pr.get("promoted"):
            prev = f" (v{pr['previous_version']} is now @previous)" if pr.get(
                "previous_version") else ""
            out.append(f"  promote: {pr.get('registered_model')} v{pr.get('version')} is now "
                       f"@champion{prev}")
        else:
            out.append(f"  promote: not promoted ({pr.get('status')}): {pr.get('reason')}")
    if report.get("outcome") == "nothing new":
        out.append("  nothing new in incoming/: training skipped (short-circuit)")
    out += [
        "",
        "Nights so far: " + "; ".join(
            f"#{h['night']} {h.get('outcome')} ({h.get('seconds')}s)" for h in state.history
        ),
        "Next: run `.venv/bin/weather demo` again: " + (
            f"an incremental night ({s.new_per_class} new images per class)."
            if not state.images_source or state.real_pending
            else "the folder has nothing new left, so that night short-circuits."
        ),
        "Look at what it made (Airflow UI with the runs, task logs, Trigger and the "
        "model-history page; MLflow UI), with the nightly schedule on:",
        f"  .venv/bin/weather demo --serve --state-dir {_rel(state_dir)}",
        f"  then open http://127.0.0.1:{s.airflow_port} (Airflow, user "
        f"{local_services.AIRFLOW_USER}; Browse > Weather models) and "
        f"http://127.0.0.1:{s.mlflow_port} (MLflow)",
        f"Logs: services {_rel(state_dir / 'logs')}/, tasks {_rel(state_dir / 'airflow' / 'logs')}/"
        f"  Start over: rm -rf {_rel(state_dir)}",
    ]
    return out


def _champion_version(report: dict[str, Any] | None) -> str | None:
    promotion = (report or {}).get("promotion") or {}
    return promotion.get("version") if promotion.get("promoted") else None


# Wired to the demo's own services: a user's value would point the demo elsewhere.
_DEMO_OWNED = {"WEATHER_MLFLOW_TRACKING_URI", "WEATHER_MLFLOW_UI_URL", "WEATHER_S3_ENDPOINT_URL",
               "WEATHER_WORK_DIR"}


def _weather_overrides() -> dict[str, str]:
    """``WEATHER_*`` set by the user win over the demo defaults (training settings etc.)."""
    return {
        k: v for k, v in os.environ.items()
        if k.startswith("WEATHER_") and v.strip() and k not in _DEMO_OWNED
    }


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else "-"


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _port_or_free(port: int) -> int:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            return local_services.free_port()


