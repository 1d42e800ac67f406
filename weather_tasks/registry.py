"""The MLflow registry side: register winners, move the ``champion`` alias, roll back.

Only a run whose evaluation says "promote" becomes a model version of
``cfg.registered_model``; it gets alias ``champion`` and the version it replaced gets alias
``previous`` (it keeps its version number). Aliases, never stages (deprecated in MLflow 3).

Idempotent: a run is registered at most once (versions are looked up by run id), with its
tags in the same request, so a promotion that failed at any step (MLflow gone between the
registration and the alias moves, say) leaves at most a version without alias, which the retry
finds and finishes: it moves the aliases and writes the ``promoted_at`` tag.

Serialized: the registry has no compare-and-set on aliases, so two promotions that each read
the champion could both see the old one and both move it. Every promotion and rollback (the
DAG's promote task and ``weather promote``/``weather rollback`` alike, since both call these
functions) holds the S3 lease ``<locks_prefix>promotion/<registered model>.json``
(:mod:`weather_tasks.lease`) around "read the champion, register, move the aliases". Inside it
the champion read is current: if it is no longer the version the evaluation compared against,
promotion is refused (re-evaluate against the new champion) before anything is registered. The
champion is re-read once more right before the alias move, for a holder that outlived its lease.

Held for review: a caller that has a reason to wait (the night's drift screening) passes
``hold_reason``; a challenger that would be promoted is then neither registered nor made
champion (status ``held_for_review``, not a failure), and the reason says how to promote it
anyway (``weather promote <run id>``, which never passes a hold).

The model card (:mod:`weather_tasks.card`) is written on the challenger's run once the outcome
is known (promoted, not better, held; an ``already_champion`` retry writes it if missing), after
the alias move and outside the lease; a registered version gets the tag ``VERSION_CARD_TAG``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from weather_tasks import lease, storage, tracking
from weather_tasks.config import PipelineConfig, PipelineError
from weather_tasks.evaluate import EvalReport, read_evaluation

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


class RegistryError(PipelineError):
    """A registry operation cannot be done (nothing to roll back to, unknown version, ...)."""


@dataclass(frozen=True)
class PromoteReport:
    run_id: str
    # promoted | already_champion | not_better | held_for_review | refused_champion_changed
    status: str
    promoted: bool
    version: str | None
    previous_version: str | None
    accuracy: float
    manifest_version: str
    registered_model: str
    reason: str

    @property
    def failed(self) -> bool:
        """A refused promotion is an error for the caller; "not better" and "held for review"
        are normal outcomes."""
        return self.status == "refused_champion_changed"

    @property
    def model_uri(self) -> str | None:
        return tracking.version_uri(self.registered_model, self.version) if self.version else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "promoted": self.promoted,
            "version": self.version,
            "previous_version": self.previous_version,
            "accuracy": self.accuracy,
            "manifest_version": self.manifest_version,
            "registered_model": self.registered_model,
            "model_uri": self.model_uri,
            "reason": self.reason,
        }

    def summary(self) -> str:
        head = f"{self.status}: run {self.run_id}"
        if self.version:
            head += f" -> {self.registered_model} v{self.version}"
        if self.previous_version:
            head += f" (previous: v{self.previous_version})"
        return f"{head}\n  {self.reason}"


@dataclass(frozen=True)
class RollbackReport:
    registered_model: str
    from_version: str | None
    to_version: str
    changed: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "registered_model": self.registered_model,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "changed": self.changed,
        }

    def summary(self) -> str:
        if not self.changed:
            return f"{self.registered_model}@champion already is v{self.to_version}"
        return (
            f"{self.registered_model}@champion: v{self.from_version} -> v{self.to_version} "
            f"(@previous = v{self.from_version})"
        )


def promote_if_better(
    cfg: PipelineConfig,
    run_id_or_eval_report: str | EvalReport | Mapping[str, Any],
    *,
    airflow_run_id: str | None = None,
    s3: S3Client | None = None,
    hold_reason: str | None = None,
) -> PromoteReport:
    """Register the evaluated run's model and make it champion, if its evaluation says so.

    Accepts a run id (the evaluation is read from the run), an :class:`EvalReport`, or its
    ``as_dict()`` (what the DAG passes through XCom). Holds the promotion lease (on ``s3``,
    default a client from ``cfg``) from the champion read to the alias move. With
    ``hold_reason``, a challenger that would be promoted is held for review instead (nothing
    registered or moved). Then writes the model card on the run.
    """
    if isinstance(run_id_or_eval_report, str):
        report = read_evaluation(cfg, run_id_or_eval_report)
    elif isinstance(run_id_or_eval_report, EvalReport):
        report = run_id_or_eval_report
    else:
        report = EvalReport.from_dict(run_id_or_eval_report)
    name = cfg.registered_model
    client = tracking.client(cfg)

    def result(
        status: str, version: str | None, previous: str | None, reason: str
    ) -> PromoteReport:
        out = PromoteReport(
            run_id=report.run_id,
            status=status,
            promoted=status in ("promoted", "already_champion"),
            version=version,
            previous_version=previous,
            accuracy=report.challenger.accuracy,
            manifest_version=report.manifest_version,
            registered_model=name,
            reason=reason,
        )
        (log.warning if out.failed else log.info)("promotion: %s", out.summary())
        return out

    s3 = s3 or storage.make_client(cfg)
    out = _promote_under_lease(cfg, client, report, result, airflow_run_id, s3, hold_reason)
    if out.status in _CARD_STATUSES:
        _write_card(cfg, client, s3, out, report)
    return out


# The outcomes that have a final decision: the card says it. (A refused promotion gets none:
# it is re-evaluated and promoted again later.)
_CARD_STATUSES = ("promoted", "already_champion", "not_better", "held_for_review")


def _promote_under_lease(
    cfg: PipelineConfig, client: MlflowClient, report: EvalReport,
    result: Callable[[str, str | None, str | None, str], PromoteReport],
    airflow_run_id: str | None, s3: S3Client, hold_reason: str | None,
) -> PromoteReport:
    """The decision and the registry moves, under the promotion lease."""
    name = cfg.registered_model
    owner = lease.owner_name(airflow_run_id)
    with lease.hold(cfg, s3, _lease_name(cfg), owner):
        champion = tracking.alias_model_version(client, name, tracking.CHAMPION)
        current = None if champion is None else str(champion.version)
        existing = _version_of_run(client, name, report.run_id)
        if champion is not None and current == existing:
            if tracking.VERSION_PROMOTED_AT_TAG not in champion.tags:  # an interrupted promotion
                _mark_promoted(client, name, str(champion.version), report.run_id)
            return result(
                "already_champion", existing,
                tracking.alias_version(client, name, tracking.PREVIOUS),
                f"run {report.run_id} already is {name}@champion (v{existing}); nothing to do",
            )
        if not report.promote:
            return result("not_better", existing, None, "; ".join(report.decision.reasons))
        if hold_reason:
            return result(
                "held_for_review", existing, None,
                f"held for review: {hold_reason}; the evaluation says promote, so after review "
                f"promote it with `weather promote {report.run_id}`",
            )
        if current != report.champion_version:
            return result(
                "refused_champion_changed", existing, None,
                f"champion changed since evaluation (evaluated against "
                f"v{report.champion_version or 'none'}, now v{current or 'none'}); re-evaluate",
            )

        if existing is None:
            existing = _register(client, cfg, report, airflow_run_id)

        # Under the lease nobody else moves the champion; this re-read catches a holder that
        # took longer than lease_expiry, whose lease another promotion may have taken over.
        now = tracking.alias_version(client, name, tracking.CHAMPION)
        if now != report.champion_version:
            return result(
                "refused_champion_changed", existing, None,
                f"champion changed during promotion (expected "
                f"v{report.champion_version or 'none'}, found v{now or 'none'}); v{existing} "
                "stays registered without alias",
            )
        tracking.move_champion(client, name, existing, now)
        _mark_promoted(client, name, existing, report.run_id)
        return result(
            "promoted", existing, now,
            "; ".join(report.decision.reasons) or "evaluation says promote",
        )


def _write_card(
    cfg: PipelineConfig, client: MlflowClient, s3: S3Client, out: PromoteReport,
    report: EvalReport,
) -> None:
    """Write the model card on the run (and tag the version), after the registry moves.

    An ``already_champion`` retry writes it only if it is missing (the retry after a failure
    between the alias move and the card). MLflow or S3 unreachable is re-raised as the
    transient error it is (the DAG retries; the retry finds the promotion done and writes the
    card). Any other failure to build the card is a warning only: the promotion is done and
    the champion serves, and a card is documentation, not worth failing a night for (``weather
    card`` builds it again).
    """
    from botocore import exceptions as bex

    from weather_tasks import card

    try:
        with tracking.mlflow_errors(cfg), storage.s3_errors(cfg):
            if out.status == "already_champion" and card.has_card(
                client, cfg.registered_model, out.run_id, out.version
            ):
                return
            written = card.write_card(
                cfg, out.run_id, client=client, s3=s3,
                decision=card.CardDecision(out.status, out.reason, out.version,
                                           out.previous_version, report.champion_version),
            )
            if out.version is not None:
                client.set_model_version_tag(cfg.registered_model, out.version,
                                             tracking.VERSION_CARD_TAG, written)
    except PipelineError as exc:
        if exc.transient:
            raise
        log.warning("model card of run %s not written: %s", out.run_id, exc)
    except (bex.BotoCoreError, bex.ClientError) as exc:  # pragma: no cover - mapped above
        raise storage.storage_error(exc, cfg) from exc
    except Exception as exc:  # noqa: BLE001 - see the docstring: a card never fails a promotion
        log.warning("model card of run %s not written: %s: %s", out.run_id,
                    type(exc).__name__, exc)


def rollback(
    cfg: PipelineConfig, to_version: str | int | None = None, *, s3: S3Client | None = None
) -> RollbackReport:
    """Move ``champion`` to ``previous`` (or ``to_version``); the replaced one becomes previous.

    Holds the promotion lease (on ``s3``, default a client from ``cfg``), like a promotion.
    """
    with lease.hold(cfg, s3 or storage.make_client(cfg), _lease_name(cfg), lease.owner_name()):
        return _rollback(cfg, to_version)


def _rollback(cfg: PipelineConfig, to_version: str | int | None) -> RollbackReport:
    from mlflow.exceptions import MlflowException

    client = tracking.client(cfg)
    name = cfg.registered_model
    current = tracking.alias_version(client, name, tracking.CHAMPION)
    if to_version is None:
        target = tracking.alias_version(client, name, tracking.PREVIOUS)
        if target is None:
            raise RegistryError(f"{name} has no @previous version to roll back to; pass --to")
    else:
        target = str(to_version)
        try:
            client.get_model_version(name, target)
        except MlflowException as exc:
            raise RegistryError(f"{name} has no version {target!r}") from exc
    if target == current:
        return RollbackReport(name, current, target, changed=False)
    tracking.move_champion(client, name, target, current)
    client.set_model_version_tag(
        name, target, "rolled_back_to_at", datetime.now(UTC).isoformat(timespec="seconds")
    )
    log.warning("rollback: %s@champion v%s -> v%s", name, current, target)
    return RollbackReport(name, current, target, changed=True)


def _lease_name(cfg: PipelineConfig) -> str:
    """One lease per registered model: promotions of different models do not wait on each other."""
    return f"promotion/{cfg.registered_model}"


def _mark_promoted(client: MlflowClient, name: str, version: str, run_id: str) -> None:
    """The bookkeeping after the alias move: when the version became champion, and on the run,
    which version it is."""
    client.set_model_version_tag(
        name, version, tracking.VERSION_PROMOTED_AT_TAG,
        datetime.now(UTC).isoformat(timespec="seconds"),
    )
    client.set_tag(run_id, "registry.version", version)


def _register(
    client: MlflowClient, cfg: PipelineConfig, report: EvalReport, airflow_run_id: str | None
) -> str:
    import mlflow

    tags = {
        tracking.VERSION_ACCURACY_TAG: f"{report.challenger.accuracy:.6f}",
        tracking.VERSION_MANIFEST_VERSION_TAG: report.manifest_version,
        tracking.VERSION_RUN_ID_TAG: report.run_id,
        tracking.VERSION_AIRFLOW_RUN_ID_TAG: airflow_run_id or "",
    }
    if report.mcnemar_p is not None:
        tags["mcnemar_p_vs_previous"] = f"{report.mcnemar_p:.6g}"
    tracking.check_process(cfg)  # register_model is fluent: it uses the process's registry
    mv = mlflow.register_model(
        tracking.run_model_uri(report.run_id), cfg.registered_model, tags=tags
    )
    log.info("registered %s v%s from run %s", cfg.registered_model, mv.version, report.run_id)
    return str(mv.version)


def _version_of_run(client: MlflowClient, name: str, run_id: str) -> str | None:
    """The version registered from ``run_id`` (the oldest, should there ever be two)."""
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not versions:
        return None
    return str(min(int(v.version) for v in versions))
