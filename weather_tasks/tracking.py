"""The MLflow contract: every name one module writes and another reads, and how to reach MLflow.

One home for what would otherwise be spelled in several places (TFX's Pusher reads the
Evaluator's blessing by a name defined once):

- registry aliases (``champion``, ``previous``), the model's artifact name in a run, the
  artifact paths of reports and plots, the run and model-version tags read across modules;
- URI builders (``runs:/``, ``models:/``) and the champion Asset's name and URI;
- the explicit client (:func:`client`), the not-found lookup of an alias
  (:func:`alias_version`), the alias move (:func:`move_champion`) and the end of the runs a
  killed training left RUNNING (:func:`fail_abandoned_runs`);
- the MLflow UI's base URL and run page (:func:`ui_url`, :func:`run_url`).

Process-wide MLflow state: MLflow's fluent API (``start_run``, ``log_model``,
``register_model``) reads the tracking URI from the process. Only entry points set it, once,
with :func:`configure_process` (the CLI's ``main``, the start of each DAG task, a test
fixture); library functions never do. Every read and registry call uses an explicit
``client(cfg)`` instead.

Stdlib-only and cheap to import (DAG files import it at parse time): mlflow is imported inside
the functions that need it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import weather_tasks
from weather_tasks.config import PipelineConfig, PipelineError, env_name

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

# --- registry aliases -----------------------------------------------------------------------
CHAMPION = "champion"
PREVIOUS = "previous"

# --- artifacts of a training run ------------------------------------------------------------
MODEL_ARTIFACT = "model"  # the pyfunc model: runs:/<run_id>/model
TRAIN_REPORT_ARTIFACT = "reports/train_report.json"  # last file of a complete training
VAL_REPORT_ARTIFACT = "reports/val_class_report.json"
EVALUATION_ARTIFACT = "evaluation/evaluation.json"  # evaluate writes, registry reads
LEARNING_CURVE_PLOT = "plots/learning_curve.png"
CONFUSION_MATRIX_VAL_PLOT = "plots/confusion_matrix_val.png"
# evaluate writes these on the challenger's run: its metrics on the test split (the numbers
# behind the plot); the plugin's page shows the plot next to the val one.
TEST_REPORT_ARTIFACT = "evaluation/test_class_report.json"
CONFUSION_MATRIX_TEST_PLOT = "plots/confusion_matrix_test.png"

# Calibration (train writes after fitting the temperature on the val split; the card reads):
# the temperature, val ECE before/after and both reliability curves; the diagram; metrics.
CALIBRATION_ARTIFACT = "reports/calibration.json"
RELIABILITY_VAL_PLOT = "plots/reliability_val.png"
TEMPERATURE_METRIC = "temperature"
VAL_ECE_METRIC = "val_ece"  # of the served (calibrated) model
VAL_ECE_UNCALIBRATED_METRIC = "val_ece_uncalibrated"
# Model card (registry writes at promote, when the decision exists; the page links it).
CARD_HTML_ARTIFACT = "card/model_card.html"
CARD_MARKDOWN_ARTIFACT = "card/model_card.md"

# --- tags on a training run (train writes; evaluate and train's idempotency check read) ------
MANIFEST_VERSION_TAG = "manifest_version"
AIRFLOW_RUN_ID_TAG = "airflow_run_id"
# The DAG whose run ids that tag holds (the plugin's page links to the Airflow run).
RETRAIN_DAG_ID = "weather_retrain"
SETTINGS_DIGEST_TAG = "training_settings_sha256"
# Why a run was ended by someone else than its own process (fail_abandoned_runs).
TERMINATED_BY_TAG = "weather.terminated_by"
# How many per-epoch metric points the run lacks (MLflow could not take them; train writes).
METRICS_INCOMPLETE_TAG = "weather.metrics_incomplete"

# --- tags evaluate writes on the challenger's run ---------------------------------------------
EVAL_PROMOTE_TAG = "evaluation.promote"
EVAL_REASONS_TAG = "evaluation.reasons"  # the reasons, joined by the separator below
EVAL_REASONS_SEPARATOR = "; "
EVAL_MANIFEST_VERSION_TAG = "evaluation.manifest_version"
EVAL_CHAMPION_VERSION_TAG = "evaluation.champion_version"
EVAL_CHAMPION_ERROR_TAG = "evaluation.champion_error"
# ... and metrics (step 0) there: the challenger's and the champion's accuracy on the same
# test images, McNemar's exact p of their paired predictions.
TEST_ACCURACY_METRIC = "test_accuracy"
CHAMPION_TEST_ACCURACY_METRIC = "champion_test_accuracy"
MCNEMAR_P_METRIC = "mcnemar_p"
# 95 % intervals: <prefix>_low and <prefix>_high (evaluate logs them; the model page reads them).
TEST_ACCURACY_CI_METRIC = "test_accuracy_ci"
CHAMPION_TEST_ACCURACY_CI_METRIC = "champion_test_accuracy_ci"
ACCURACY_DIFFERENCE_METRIC = "accuracy_difference"  # challenger - champion, same images
ACCURACY_DIFFERENCE_CI_METRIC = "accuracy_difference_ci"

# Per-image test predictions of both models (evaluate writes; the card's weaknesses read),
# the challenger's test calibration error (the served, calibrated model).
TEST_PREDICTIONS_ARTIFACT = "evaluation/test_predictions.json"
TEST_ECE_METRIC = "test_ece"

# --- screening of each night's new photos (drift, suspect labels): its own MLflow runs -------
# In the experiment "<experiment_name><SCREENING_EXPERIMENT_SUFFIX>", one run per manifest
# version screened, so training's run searches never see them.
SCREENING_EXPERIMENT_SUFFIX = "-screening"
SCREENING_ARTIFACT = "screening/screening.json"
SUSPECT_LABELS_ARTIFACT = "screening/suspect_labels.json"
SUSPECT_THUMBS_DIR = "screening/thumbs"  # <sha256>.jpg of each suspect (the page shows them)
DRIFT_PLOT = "plots/drift.png"
DRIFT_MMD_P_METRIC = "drift_mmd_p"

# --- tags on a registered model version (registry writes, the plugin's page reads) -----------
VERSION_ACCURACY_TAG = "accuracy"
VERSION_MANIFEST_VERSION_TAG = "manifest_version"
VERSION_RUN_ID_TAG = "run_id"
VERSION_AIRFLOW_RUN_ID_TAG = "airflow_run_id"
VERSION_PROMOTED_AT_TAG = "promoted_at"
VERSION_CARD_TAG = "model_card"  # the card's runs:/ artifact URI

# What MLflow answers for "no such model / alias" (the REST store, SQL store and file store
# spell it differently).
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")
# What MLflow answers when its basic-auth app refuses this process's account (HTTP 401, 403).
_REFUSED = {
    "UNAUTHENTICATED": "401 not authenticated",
    "PERMISSION_DENIED": "403 permission denied",
}


class TrackingError(PipelineError):
    """MLflow is not set up for this config in this process (see :func:`configure_process`),
    its tracking server cannot be reached (transient), or it refuses this process's account
    (permanent: retrying with the same credentials cannot help)."""


# --- URIs -------------------------------------------------------------------------------------
def champion_uri(name: str) -> str:
    """``models:/<name>@champion``: what downstream services load."""
    return f"models:/{name}@{CHAMPION}"


def run_model_uri(run_id: str) -> str:
    return f"runs:/{run_id}/{MODEL_ARTIFACT}"


def version_uri(name: str, version: str | int) -> str:
    return f"models:/{name}/{version}"


def champion_asset_name(model: str) -> str:
    """The Airflow Asset downstream DAGs schedule on, named after the registered model."""
    return f"{model}-champion"


def champion_asset_uri(model: str) -> str:
    return f"mlflow://models/{model}"


# --- process state and clients ----------------------------------------------------------------
# The process-wide variables configure_process sets (a test fixture puts them back).
PROCESS_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
               "MLFLOW_HTTP_REQUEST_TIMEOUT")


def configure_process(cfg: PipelineConfig) -> None:
    """Point this process's MLflow (and its child processes) at ``cfg``'s tracking server.

    Called by entry points only. Environment variables rather than MLflow's setter functions:
    no mlflow import, and subprocesses inherit them. (A URI set through MLflow's setter earlier
    in the process would still win over them; nothing in this project sets one.) MLflow's own
    HTTP defaults (7 retries with backoff, 120 s timeout) make an unreachable server take
    minutes to fail; ``mlflow_http_retries`` and ``mlflow_http_timeout`` bound that (short for
    the CLI, longer for DAG tasks, which may wait out a restart).
    """
    os.environ["MLFLOW_TRACKING_URI"] = cfg.mlflow_tracking_uri
    os.environ["MLFLOW_REGISTRY_URI"] = cfg.mlflow_tracking_uri
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.mlflow_http_retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(cfg.mlflow_http_timeout)


@contextlib.contextmanager
def mlflow_errors(cfg: PipelineConfig) -> Iterator[None]:
    """Turn "the tracking server cannot be reached" (transient) and "it refuses the account"
    (permanent) inside into a :class:`TrackingError`, one line naming the URI; every other MLflow
    error passes through unchanged."""
    try:
        yield
    except Exception as exc:
        mapped = tracking_error(exc, cfg)
        if mapped is None:
            raise
        raise mapped from exc


def tracking_error(exc: BaseException, cfg: PipelineConfig) -> TrackingError | None:
    """The :class:`TrackingError` for an MLflow connection failure or a refused account, else
    None.

    MLflow's REST client wraps a ``requests`` failure in an ``MlflowException`` (chained as its
    context, not its cause), so the chain is searched for the ``requests`` exception. A 401 or
    403 is an ``MlflowException`` whose error code says so.
    """
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")  # not imported: not an MLflow error
    if mlflow_exceptions is None or not isinstance(exc, mlflow_exceptions.MlflowException):
        return None
    uri, retries = cfg.mlflow_tracking_uri, cfg.mlflow_http_retries
    if exc.error_code in _REFUSED:
        return TrackingError(
            f"MLflow tracking server {uri}: refused the request "
            f"({_REFUSED[exc.error_code]}): {_refused_hint(exc.error_code)}"
        )
    requests_exceptions = sys.modules.get("requests.exceptions")
    if requests_exceptions is None:
        return None
    tried = f"{retries + 1} attempt{'s' if retries else ''}"
    uri_var, retries_var = env_name("mlflow_tracking_uri"), env_name("mlflow_http_retries")
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, requests_exceptions.Timeout):
            return TrackingError(
                f"MLflow tracking server {uri}: no answer within {cfg.mlflow_http_timeout} s "
                f"({env_name('mlflow_http_timeout')}), {tried}: the server is hung or "
                "overloaded", transient=True)
        if isinstance(cause, requests_exceptions.RetryError):
            return TrackingError(
                f"MLflow tracking server {uri}: answered with server errors ({tried}): check "
                f"the server's log; try again later or raise {retries_var}", transient=True)
        if isinstance(cause, requests_exceptions.ConnectionError):
            return TrackingError(
                f"MLflow tracking server {uri}: cannot connect ({tried}): is it running and "
                f"{uri_var} right?", transient=True)
        cause = cause.__cause__ or cause.__context__
    return None


def _refused_hint(error_code: str) -> str:
    """What to check when the server refuses the account (the user name, never the password)."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if error_code == "PERMISSION_DENIED":
        return (
            f"user {user!r} lacks the permission; registering versions and moving aliases "
            "take the pipeline's account, and a read-only account is refused any read of a "
            "registered model that does not exist yet"
        )
    if user:
        return f"user {user!r} is unknown or MLFLOW_TRACKING_PASSWORD is wrong"
    return "no credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"


def check_process(cfg: PipelineConfig) -> None:
    """Refuse to log with MLflow's fluent API to anything but ``cfg``'s tracking server."""
    import mlflow

    current = mlflow.get_tracking_uri()
    if current != cfg.mlflow_tracking_uri:
        raise TrackingError(
            f"MLflow in this process tracks to {current!r}, not to the configured "
            f"{cfg.mlflow_tracking_uri!r}; the entry point must call "
            "weather_tasks.tracking.configure_process(cfg) first"
        )


def client(cfg: PipelineConfig) -> MlflowClient:
    """An ``MlflowClient`` for ``cfg``'s tracking server and registry (same server)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=cfg.mlflow_tracking_uri, registry_uri=cfg.mlflow_tracking_uri)


def airflow_run_filter(airflow_run_id: str) -> str:
    """The ``search_runs`` filter for the training runs of one Airflow run."""
    quoted = airflow_run_id.replace("'", "\\'")
    return f"tags.{AIRFLOW_RUN_ID_TAG} = '{quoted}'"


def fail_abandoned_runs(cfg: PipelineConfig, airflow_run_id: str, ended_by: str) -> list[str]:
    """Mark this Airflow run's training runs still RUNNING as FAILED (tag ``TERMINATED_BY_TAG``
    = ``ended_by``); their run ids.

    A training process killed mid-run (SIGKILL, out of memory, a lost worker) cannot end its
    own run, which would stay RUNNING for ever. One Airflow run has one train attempt alive
    at a time, so when the next attempt starts (or the task has failed), a RUNNING run with
    its id is a dead attempt's. Runs of other Airflow runs, and manual runs (no id), are never
    touched: they may be training right now.
    """
    mlflow_client = client(cfg)
    experiment = mlflow_client.get_experiment_by_name(cfg.experiment_name)
    if experiment is None:
        return []
    runs = mlflow_client.search_runs(
        experiment_ids=[experiment.experiment_id],
        filter_string=f"{airflow_run_filter(airflow_run_id)} and attributes.status = 'RUNNING'",
    )
    for run in runs:
        mlflow_client.set_tag(run.info.run_id, TERMINATED_BY_TAG, ended_by)
        mlflow_client.set_terminated(run.info.run_id, "FAILED")
    return [run.info.run_id for run in runs]


def alias_model_version(
    mlflow_client: MlflowClient, name: str, alias: str
) -> ModelVersion | None:
    """The model version holding ``alias``, or None (no such model or alias yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND:
            return None
        raise


def alias_version(mlflow_client: MlflowClient, name: str, alias: str) -> str | None:
    """The version number holding ``alias``, or None."""
    mv = alias_model_version(mlflow_client, name, alias)
    return None if mv is None else str(mv.version)


def move_champion(
    mlflow_client: MlflowClient, name: str, version: str, current: str | None
) -> None:
    """Make ``version`` the champion; the ``current`` champion (if any) becomes ``previous``.

    ``previous`` first: a crash between the two calls leaves the champion untouched (the
    alias a crash could leave stale is the less important one).
    """
    if current is not None:
        mlflow_client.set_registered_model_alias(name, PREVIOUS, current)
    mlflow_client.set_registered_model_alias(name, CHAMPION, version)


def load_run_dict(mlflow_client: MlflowClient, run_id: str, path: str) -> dict[str, Any]:
    """A JSON artifact of a run, read through ``mlflow_client`` (raises if it is missing)."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="weather-artifact-") as tmp:
        local = mlflow_client.download_artifacts(run_id, path, tmp)
        return json.loads(Path(local).read_text())


# --- the MLflow UI ----------------------------------------------------------------------------
def ui_url(cfg: PipelineConfig) -> str:
    """Where people open the MLflow UI (``mlflow_ui_url``, else the tracking URI), no final /."""
    return (cfg.mlflow_ui_url or cfg.mlflow_tracking_uri).rstrip("/")


def ui_run_url(base: str, run_id: str) -> str:
    """A run's page under the UI at ``base`` (the UI resolves the experiment from the run)."""
    return f"{base}/#/runs/{urllib.parse.quote(run_id)}"


def ui_model_url(base: str, name: str) -> str:
    """A registered model's page under the UI at ``base``."""
    return f"{base}/#/models/{name}"


def run_url(cfg: PipelineConfig, run_id: str) -> str:
    return ui_run_url(ui_url(cfg), run_id)


# --- provenance -------------------------------------------------------------------------------
def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    version = weather_tasks.__version__
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{sha}" if sha else version
