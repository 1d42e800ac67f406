"""What the pipeline did last night and which model answers now, without Airflow.

The DAG's ``report`` task records each night it completes, nothing-new nights included, as
``s3://<bucket>/<nights_prefix><Airflow run id>.json`` (:func:`record_night`); the champion and
previous versions live in the MLflow registry. :func:`status` reads both (``weather status``).

A dead scheduler, or a night that failed before its report, writes nothing: only the age of the
newest summary can tell. :func:`check_night` is that check (``weather status --check``, for cron
or a monitoring system): it reads the bucket only and fails when the newest night is older than
``status_max_age_hours`` or its outcome is ``failed``.

A summary is a small JSON object (``NIGHT_FORMAT``): ``airflow_run_id``, ``logical_date``,
``started_at``, ``ended_at`` (ISO 8601, UTC), ``outcome`` (``OUTCOMES``), ``forced``,
``champion_version`` (after the night), and the night's ``ingest`` counts (quarantined by reason
too), ``screening`` (new photos, the drift test's p-value, suspect labels, how many were held
for review, why the promotion was held), ``train``, ``evaluation`` (decision and reasons) and
``promotion`` reports, None where the night skipped the step (summaries written before the
screening existed have no ``screening`` key).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from weather_tasks import storage, tracking
from weather_tasks.config import PipelineConfig, PipelineError, env_name

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mypy_boto3_s3 import S3Client

NIGHT_FORMAT = 1
PROMOTED = "promoted"
NOT_PROMOTED = "not promoted"
NOTHING_NEW = "nothing new"
FAILED = "failed"  # recorded by the DAG's failure callback (the report never runs then)
OUTCOMES = (PROMOTED, NOT_PROMOTED, NOTHING_NEW, FAILED)

_INGEST_KEYS = ("listed", "new", "accepted", "duplicate", "quarantined", "quarantined_total",
                "requarantined", "manifest_version", "previous_version", "images_total",
                "seconds", "warnings")
_SCREENING_KEYS = ("screened_version", "manifest_version", "n_new", "n_reference", "note", "mmd_p",
                   "n_suspects", "held", "hold_reason", "run_id")
_TRAIN_KEYS = ("run_id", "model_uri", "manifest_version", "model", "image_size", "epochs_run",
               "best_val_accuracy", "train_seconds")


class StatusError(PipelineError):
    """A night summary in the bucket cannot be read as one."""


# --- writing (the DAG's report task) ---------------------------------------------------------
def night_key(cfg: PipelineConfig, airflow_run_id: str) -> str:
    """Where a night's summary lives: the run id with anything but ``A-Za-z0-9._-`` as ``_``
    (Airflow's ids hold ``:`` and ``+``)."""
    return f"{cfg.nights_prefix}{re.sub(r'[^A-Za-z0-9._-]', '_', airflow_run_id)}.json"


def night_summary(
    *,
    airflow_run_id: str,
    logical_date: datetime | None,
    started_at: datetime | None,
    ingested: dict[str, Any] | None,
    trained: dict[str, Any] | None,
    evaluation: dict[str, Any] | None,
    promoted: dict[str, Any] | None,
    forced: bool,
    screened: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One night in one small dict, from the reports its tasks returned (None: skipped).

    ``ended_at`` and ``champion_version`` are filled in when it is recorded.
    """
    return {
        "format": NIGHT_FORMAT,
        "airflow_run_id": airflow_run_id,
        "logical_date": _iso(logical_date),
        "started_at": _iso(started_at),
        "ended_at": None,
        "outcome": (
            NOTHING_NEW if trained is None
            else PROMOTED if promoted and promoted.get("promoted")
            else NOT_PROMOTED
        ),
        "forced": forced,
        "champion_version": None,
        "ingest": {k: ingested.get(k) for k in _INGEST_KEYS} if ingested else None,
        "screening": {k: screened.get(k) for k in _SCREENING_KEYS} if screened else None,
        "train": {k: trained.get(k) for k in _TRAIN_KEYS} if trained else None,
        "evaluation": evaluation,
        "promotion": promoted,
    }


def record_night(cfg: PipelineConfig, s3: S3Client, summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with the champion as it is now and the end time, written; what was written."""
    champion = tracking.alias_version(tracking.client(cfg), cfg.registered_model,
                                      tracking.CHAMPION)
    recorded = {**summary, "ended_at": _iso(datetime.now(UTC)), "champion_version": champion}
    write_night(cfg, s3, recorded)
    return recorded


def failed_night(airflow_run_id: str, failed_tasks: list[str], reason: str) -> dict[str, Any]:
    """The summary of a night that failed: which tasks, and the first failure's message."""
    return {
        "format": NIGHT_FORMAT,
        "airflow_run_id": airflow_run_id,
        "ended_at": _iso(datetime.now(UTC)),
        "outcome": FAILED,
        "failed_tasks": failed_tasks,
        "reason": reason[:2000],
    }


def write_night(cfg: PipelineConfig, s3: S3Client, summary: dict[str, Any]) -> str:
    """Store ``summary`` under its run id (a rerun of the report replaces it); its key."""
    key = night_key(cfg, summary["airflow_run_id"])
    storage.put_json(s3, cfg.bucket, key, summary)
    return key


# --- reading (weather status) ----------------------------------------------------------------
@dataclass(frozen=True)
class Night:
    key: str
    summary: dict[str, Any]

    @property
    def ended_at(self) -> datetime:
        return datetime.fromisoformat(self.summary["ended_at"])

    def lines(self) -> list[str]:
        s = self.summary
        forced = ", forced" if s.get("forced") else ""
        out = [f"last night: {s.get('airflow_run_id')} ({s.get('outcome')}{forced}) ended "
               f"{s['ended_at']}; champion after it: v{s.get('champion_version') or '-'}"]
        if s.get("ingest"):
            i = s["ingest"]
            quarantined = ", ".join(f"{k}={v}" for k, v in sorted((i["quarantined"] or {}).items()))
            out.append(f"  ingest: {i['new']} new, {i['accepted']} accepted, {i['duplicate']} "
                       f"duplicate, quarantined {quarantined or 'none'}; manifest "
                       f"{i['manifest_version']} ({i['images_total']} images)")
        if s.get("screening"):
            out.append(f"  screening: {screening_line(s['screening'])}")
        if s.get("train"):
            t = s["train"]
            out.append(f"  train: run {t['run_id']}, {t['epochs_run']} epochs, best val "
                       f"accuracy {t['best_val_accuracy']}")
        if s.get("evaluation"):
            e = s["evaluation"]
            out.append(f"  evaluation: {'promote' if e['promote'] else 'keep the champion'}: "
                       + ("; ".join(e["reasons"]) or "-"))
        if s.get("promotion"):
            p = s["promotion"]
            out.append(f"  promotion: {p['status']}: {p['reason']}")
        return out


def screening_line(screening: dict[str, Any]) -> str:
    """A night's screening in one line (``weather status``)."""
    p = screening.get("mmd_p")
    drift = "drift not tested" if p is None else f"drift MMD p {p:.3g}"
    line = (f"{screening.get('n_new')} new photos, {drift}, {screening.get('n_suspects') or 0} "
            f"suspect labels ({screening.get('held') or 0} held for review)")
    if screening.get("hold_reason"):
        line += f"; promotion held: {screening['hold_reason']}"
    return line


@dataclass(frozen=True)
class NightCheck:
    """Is the newest night recent and not failed? ``state``: ok, stale, failed or none."""

    state: str
    message: str
    night: Night | None

    @property
    def failed(self) -> bool:
        """A check that is not ok makes ``weather status --check`` exit 1."""
        return self.state != "ok"

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "message": self.message,
                "night": self.night.summary if self.night else None}

    def summary(self) -> str:
        return f"{self.state}: {self.message}"


@dataclass(frozen=True)
class VersionStatus:
    """A registered version as ``weather status`` shows it (tags ``registry`` writes)."""

    version: str
    accuracy: float | None
    manifest_version: str | None
    promoted_at: str | None
    run_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "accuracy": self.accuracy,
                "manifest_version": self.manifest_version, "promoted_at": self.promoted_at,
                "run_id": self.run_id}

    def line(self, name: str, alias: str) -> str:
        accuracy = "-" if self.accuracy is None else f"{self.accuracy:.4f}"
        return (f"{name}@{alias}: v{self.version}  accuracy {accuracy}  manifest "
                f"{self.manifest_version or '-'}  promoted {self.promoted_at or '-'}  "
                f"run {self.run_id or '-'}")


@dataclass(frozen=True)
class StatusReport:
    registered_model: str
    champion: VersionStatus | None
    previous: VersionStatus | None
    check: NightCheck

    def as_dict(self) -> dict[str, Any]:
        return {
            "registered_model": self.registered_model,
            "champion": self.champion.as_dict() if self.champion else None,
            "previous": self.previous.as_dict() if self.previous else None,
            "night": self.check.night.summary if self.check.night else None,
            "check": {"state": self.check.state, "message": self.check.message},
        }

    def summary(self) -> str:
        name = self.registered_model
        lines = [
            v.line(name, alias) if v else f"{name}@{alias}: none"
            for alias, v in ((tracking.CHAMPION, self.champion),
                             (tracking.PREVIOUS, self.previous))
        ]
        if self.check.night:
            lines += self.check.night.lines()
        lines.append(f"check: {self.check.summary()}")
        return "\n".join(lines)


def newest_night(cfg: PipelineConfig, s3: S3Client) -> Night | None:
    """The summary written last (by the S3 server's clock; equal times: the greater key)."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=cfg.bucket,
                                                         Prefix=cfg.nights_prefix)
    listed = [(obj["LastModified"], obj["Key"]) for page in pages
              for obj in page.get("Contents", []) if obj["Key"].endswith(".json")]
    if not listed:
        return None
    key = max(listed)[1]
    try:
        summary = storage.get_json(s3, cfg.bucket, key)
    except ValueError as exc:
        raise StatusError(f"s3://{cfg.bucket}/{key} is not a night summary: {exc}") from exc
    if not isinstance(summary, dict) or not isinstance(summary.get("ended_at"), str):
        raise StatusError(f"s3://{cfg.bucket}/{key} is not a night summary (no ended_at)")
    try:
        aware = datetime.fromisoformat(summary["ended_at"]).tzinfo is not None
    except ValueError:
        aware = False
    if not aware:
        raise StatusError(f"s3://{cfg.bucket}/{key}: ended_at {summary['ended_at']!r} is not "
                          "an ISO 8601 time with a time zone")
    return Night(key, summary)


def judge_night(cfg: PipelineConfig, night: Night | None, now: datetime) -> NightCheck:
    """The check's verdict on ``night`` at ``now`` (pure)."""
    limit = f"{env_name('status_max_age_hours')}={cfg.status_max_age_hours:g}"
    if night is None:
        return NightCheck("none", f"no night summary under s3://{cfg.bucket}/"
                          f"{cfg.nights_prefix}: no night has completed yet", None)
    s = night.summary
    age = (now - night.ended_at).total_seconds() / 3600
    when = f"ended {s['ended_at']}, {age:.1f} h ago"
    if s.get("outcome") == FAILED:
        return NightCheck("failed", f"night {s.get('airflow_run_id')} failed ({when})", night)
    if age > cfg.status_max_age_hours:
        return NightCheck("stale", f"newest night {s.get('airflow_run_id')} {when} (limit "
                          f"{limit} h): is the scheduler running, did the last night fail?",
                          night)
    return NightCheck("ok", f"night {s.get('airflow_run_id')} ({s.get('outcome')}) {when} "
                      f"(limit {limit} h)", night)


def check_night(cfg: PipelineConfig, s3: S3Client, now: datetime | None = None) -> NightCheck:
    """Is the newest night recent and not failed? Reads the bucket only (no MLflow, no Airflow)."""
    return judge_night(cfg, newest_night(cfg, s3), now or datetime.now(UTC))


def status(cfg: PipelineConfig, s3: S3Client, now: datetime | None = None) -> StatusReport:
    """The champion and previous versions (MLflow) and the newest night with its check (S3)."""
    client = tracking.client(cfg)
    return StatusReport(
        registered_model=cfg.registered_model,
        champion=_version(client, cfg.registered_model, tracking.CHAMPION),
        previous=_version(client, cfg.registered_model, tracking.PREVIOUS),
        check=check_night(cfg, s3, now),
    )


def _version(client: MlflowClient, name: str, alias: str) -> VersionStatus | None:
    mv = tracking.alias_model_version(client, name, alias)
    if mv is None:
        return None
    tags = mv.tags or {}
    accuracy = tags.get(tracking.VERSION_ACCURACY_TAG)
    return VersionStatus(
        version=str(mv.version),
        accuracy=float(accuracy) if accuracy else None,
        manifest_version=tags.get(tracking.VERSION_MANIFEST_VERSION_TAG),
        promoted_at=tags.get(tracking.VERSION_PROMOTED_AT_TAG),
        run_id=tags.get(tracking.VERSION_RUN_ID_TAG) or mv.run_id,
    )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="seconds")
