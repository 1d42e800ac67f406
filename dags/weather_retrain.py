"""The nightly retraining DAG: ingest -> anything new? -> screen -> train -> evaluate -> promote
-> report.

Thin by design: each task body is one call into ``weather_tasks`` (imported inside the task,
so parsing this file never imports TensorFlow or MLflow), XCom carries only manifest versions,
run ids and small report dicts. What a night did is in the ``report`` task's return value.
``screen`` compares the night's new photos with the training photos (drift, suspect labels;
``weather_tasks.screen``): train uses the manifest version it returns (photos held for review
are left out), and promote is held when it found drift (``drift_hold_p_value``).

Parse-time settings (schedule, registered model, the champion Asset) come from
``weather_settings.py``. Everything else comes from ``PipelineConfig`` (``WEATHER_*``) at run
time, overridden per run by the trigger-form params, which are generated from the per-run
settings declared in ``weather_tasks.config`` (the form never offers storage or tracking
settings). S3 credentials and endpoint come from the Airflow connection ``weather_s3`` (type
``aws``, ``{"endpoint_url": ...}`` in its extra for MinIO). Each night's summary is written
to ``s3://<bucket>/nights/`` (``weather status``). ``weather demo`` (development package) runs
nights of ``dags/weather_retrain.py`` on a local Airflow.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pendulum
from airflow.sdk import Param, dag, task
from weather_notify import failure_alerts, night_deadlines
from weather_settings import CHAMPION, CHAMPION_UPDATES, SCHEDULE

from weather_tasks import config, tracking  # cheap at parse time (no MLflow import)

if TYPE_CHECKING:
    from weather_tasks.config import PipelineConfig

S3_CONN_ID = "weather_s3"
ENDED_BY_CALLBACK = "on_failure_callback of task train (its process died without ending the run)"

# I/O tasks retry transient S3/MLflow failures (503, timeouts, refused connections) with
# exponential backoff; permanent ones (bad config, missing bucket, access denied) raise
# AirflowFailException and do not retry (_fail_fast_on_permanent_errors).
IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}


def run_config(params: dict[str, Any] | None) -> PipelineConfig:
    """This run's ``PipelineConfig``: ``from_env()`` plus the params, validated (the one place).

    Called first by every task, so it also points this task's process at the MLflow server.
    An empty param keeps the deployment's value; so does a switch left off.
    """
    from weather_tasks import tracking

    params = params or {}
    changes = {k: params.get(k) for k in config.per_run_settings()}
    cfg = config.override(
        config.from_env(), **{k: v for k, v in changes.items() if v is not False}
    )
    tracking.configure_process(cfg)
    return cfg


def _night(params: dict[str, Any] | None) -> tuple[PipelineConfig, Any]:
    """This run's config and an S3 client built from the Airflow connection.

    Connection secrets stay inside the boto3 session; only the endpoint and region are copied
    into the config (they are not secret, and the reports name the endpoint).
    """
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    from weather_tasks import storage

    cfg = run_config(params)
    hook = AwsBaseHook(aws_conn_id=S3_CONN_ID, client_type="s3")
    endpoint = hook.conn_config.get_service_endpoint_url("s3")
    region = hook.conn_config.region_name
    cfg = config.override(cfg, s3_endpoint_url=endpoint, s3_region=region)
    return cfg, storage.make_client(cfg, session=hook.get_session())


@contextlib.contextmanager
def _fail_fast_on_permanent_errors() -> Iterator[None]:
    """Retrying a bad setting or a missing bucket only delays the message: fail at once.

    S3 and MLflow failures become one-line ``PipelineError``s first (``weather_tasks.storage``
    and ``weather_tasks.tracking`` decide what each means). A transient one (a 503, a timeout,
    a refused connection) is re-raised as it is, so Airflow retries it with the task's backoff;
    a permanent one (``ConfigError``, or ``transient`` False) fails the task without retries.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from weather_tasks import storage, tracking
    from weather_tasks.config import ConfigError, PipelineError

    try:
        cfg = config.from_env()  # names the endpoint and bucket in S3 messages
    except ConfigError:
        cfg = config.PipelineConfig()
    try:
        with storage.s3_errors(cfg), tracking.mlflow_errors(cfg):
            yield
    except ConfigError as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
    except PipelineError as exc:
        if exc.transient:
            raise
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def _end_abandoned_training(context: Any) -> None:
    """``train`` failed for good: mark its MLflow runs still RUNNING as FAILED.

    Best effort: a killed worker may never run this (the scheduler hands a lost task's callback
    to the dag-processor, if it can). A retry does the same at its start, in ``train_model``.
    """
    from weather_tasks import tracking

    cfg = run_config(context.get("params"))
    with tracking.mlflow_errors(cfg):
        tracking.fail_abandoned_runs(cfg, context["run_id"], ENDED_BY_CALLBACK)


def _record_failed_night(context: Any) -> None:
    """The night failed (its report never runs): record it, so ``weather status`` and
    ``weather status --check`` say so at once instead of when the summary grows old."""
    from weather_tasks import status

    # Run by the dag-processor: the context names the run, the last task instance and why.
    last = context.get("ti") or context.get("task_instance")
    failed = [last.task_id] if last is not None else []
    reason = str(context.get("reason") or "a task failed")
    cfg, s3 = _night(context.get("params"))
    with _fail_fast_on_permanent_errors():
        status.write_night(cfg, s3, status.failed_night(context["run_id"], failed, reason))


@dag(
    dag_id=tracking.RETRAIN_DAG_ID,
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["weather", "ml", "retraining"],
    default_args={"owner": "ml-platform"},
    # Record the failed night first, then alert (WEATHER_ALERT_*; none: the function alone).
    on_failure_callback=(
        [_record_failed_night, *alerts]
        if (alerts := failure_alerts(tracking.RETRAIN_DAG_ID)) else _record_failed_night
    ),
    deadline=night_deadlines(tracking.RETRAIN_DAG_ID) or None,  # WEATHER_NIGHT_DEADLINE_HOURS
    doc_md=__doc__,
    params={name: Param(**spec) for name, spec in config.dag_params().items()},
)
def weather_retrain() -> None:
    @task(**IO_RETRIES)
    def ingest(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """New photos in incoming/ -> a new manifest version (or none)."""
        from weather_tasks import ingest

        with _fail_fast_on_permanent_errors():
            cfg, s3 = _night(params)
            return ingest.ingest(cfg, s3).as_dict()

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def anything_new(ingested: dict[str, Any], params: dict[str, Any] | None = None) -> bool:
        """Train when the dataset changed (new images accepted, or content taken out by a
        label conflict) or on ``force_retrain``; otherwise skip the rest of the night."""
        changed = ingested["accepted"] > 0 or ingested["requarantined"] > 0
        return changed or run_config(params).force_retrain

    @task(**IO_RETRIES, execution_timeout=timedelta(hours=1))
    def screen(
        ingested: dict[str, Any],
        params: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        """The night's new photos vs the training photos (drift, suspect labels); one MLflow
        run. Its ``manifest_version`` is what train uses, its ``hold_reason`` what promote
        holds on. TensorFlow (the champion's embeddings) is imported inside, as in train."""
        from weather_tasks import screen

        with _fail_fast_on_permanent_errors():
            cfg, s3 = _night(params)
            return screen.screen_night(
                cfg, s3, ingested["manifest_version"], airflow_run_id=run_id
            ).as_dict()

    @task(queue="gpu", retries=1, retry_delay=timedelta(minutes=5),
          execution_timeout=timedelta(hours=8), on_failure_callback=_end_abandoned_training)
    def train(
        screened: dict[str, Any],
        params: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        """Train on the screened manifest version (photos held for review left out); one
        MLflow run."""
        from weather_tasks import train

        with _fail_fast_on_permanent_errors():
            cfg, s3 = _night(params)
            return train.train_model(
                cfg, screened["manifest_version"], s3=s3, airflow_run_id=run_id
            ).as_dict()

    @task(**IO_RETRIES, execution_timeout=timedelta(hours=1))
    def evaluate(trained: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Challenger vs the current champion on the same test images."""
        from weather_tasks import evaluate

        with _fail_fast_on_permanent_errors():
            cfg, s3 = _night(params)
            return evaluate.evaluate_challenger(
                cfg, trained["run_id"], trained["manifest_version"], s3=s3
            ).as_dict()

    @task(**IO_RETRIES, outlets=[CHAMPION_UPDATES])
    def promote(
        evaluation: dict[str, Any],
        screened: dict[str, Any],
        params: dict[str, Any] | None = None,
        run_id: str | None = None,
        outlet_events: Any = None,
    ) -> dict[str, Any]:
        """Register the challenger and move ``@champion`` if it won and the screening found no
        drift to hold on (a held promotion is not a failure); emit the champion Asset."""
        from airflow.sdk.exceptions import AirflowFailException

        from weather_tasks import registry

        with _fail_fast_on_permanent_errors():
            cfg, s3 = _night(params)  # S3 for the promotion lease, from the weather_s3 connection
            result = registry.promote_if_better(cfg, evaluation, airflow_run_id=run_id, s3=s3,
                                                hold_reason=screened.get("hold_reason"))
        if result.failed:  # the champion moved since evaluation: re-evaluating is the fix
            raise AirflowFailException(f"promotion refused: {result.reason}")
        promoted = result.as_dict()
        if promoted["promoted"]:
            outlet_events[CHAMPION_UPDATES].add(CHAMPION, extra=_champion_event(promoted))
        return promoted

    @task(**IO_RETRIES, trigger_rule="none_failed")
    def report(
        ti: Any = None, dag_run: Any = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """What this night did, in one small dict, also written to the bucket for
        ``weather status`` (``s3://<bucket>/nights/<run id>.json``)."""
        from weather_tasks import status

        def pulled(task_id: str) -> dict[str, Any] | None:
            return ti.xcom_pull(task_ids=task_id, key="return_value", default=None)

        with _fail_fast_on_permanent_errors():
            cfg, s3 = _night(params)
            return status.record_night(cfg, s3, status.night_summary(
                airflow_run_id=dag_run.run_id,
                logical_date=dag_run.logical_date,
                started_at=dag_run.start_date,
                ingested=pulled("ingest"),
                screened=pulled("screen"),
                trained=pulled("train"),
                evaluation=pulled("evaluate"),
                promoted=pulled("promote"),
                forced=cfg.force_retrain,
            ))

    ingested = ingest()
    screened = screen(ingested)
    trained = train(screened)
    evaluation = evaluate(trained)
    promoted = promote(evaluation, screened)
    anything_new(ingested) >> screened
    promoted >> report()


def _champion_event(promoted: dict[str, Any]) -> dict[str, Any]:
    """The Asset event's metadata: what a downstream service needs to pin the new champion."""
    from weather_tasks import tracking

    name, version = promoted["registered_model"], str(promoted["version"])
    return {
        "registered_model": name,
        "version": version,
        "alias": tracking.CHAMPION,
        "model_uri": tracking.version_uri(name, version),
        "accuracy": promoted["accuracy"],
        "manifest_version": promoted["manifest_version"],
        "mlflow_run_id": promoted["run_id"],
        "status": promoted["status"],
    }


weather_retrain_dag = weather_retrain()

