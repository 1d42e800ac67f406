"""Read the registered model's history from MLflow, for display only.

What a version means (champion, previous, accuracy, manifest) is decided by the pipeline
(``weather_tasks.registry``), and why a challenger won or lost by ``weather_tasks.evaluate``;
this module only reads the aliases, tags, metrics and plots they wrote, by the names in
``weather_tasks.tracking``. mlflow is imported inside the functions so that loading the plugin
(in every Airflow process) stays cheap.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from weather_tasks import tracking

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
# The plots the page shows, by kind: train logs the first two, evaluate the test matrix.
PLOTS = {
    "learning_curve": tracking.LEARNING_CURVE_PLOT,
    "confusion_test": tracking.CONFUSION_MATRIX_TEST_PLOT,
    "confusion_val": tracking.CONFUSION_MATRIX_VAL_PLOT,
}
LOST_LIMIT = 20  # losing challengers shown: the newest evaluated runs with promote = false


@dataclass(frozen=True)
class EvaluationView:
    """What the evaluation of one run decided, from the tags and metrics evaluate wrote."""

    run_id: str
    run_name: str
    trained_at: str
    test_accuracy: float | None
    champion_version: str | None  # the champion it was compared with (None: there was none)
    champion_accuracy: float | None  # that champion's accuracy on the same test images
    mcnemar_p: float | None
    # 95 % intervals, (low, high); None for evaluations logged before they were.
    test_accuracy_ci: tuple[float, float] | None
    difference: float | None  # challenger - champion accuracy on the same images
    difference_ci: tuple[float, float] | None
    promote: bool
    reasons: tuple[str, ...]
    manifest_version: str | None
    airflow_run_id: str | None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        return out


@dataclass(frozen=True)
class VersionView:
    """One registered model version as the page shows it."""

    version: int
    aliases: tuple[str, ...]
    run_id: str | None
    accuracy: float | None
    manifest_version: str | None
    airflow_run_id: str | None
    registered_at: str
    promoted_at: str | None
    evaluation: EvaluationView | None = None  # None: the run or its evaluation is not found
    plots: dict[str, str] = field(default_factory=dict)  # kind (PLOTS) -> artifact path
    # The model card's runs:/ URI (the version tag promotion writes); None: no card logged.
    card: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["aliases"] = list(self.aliases)
        out["evaluation"] = self.evaluation.as_dict() if self.evaluation else None
        return out


@dataclass(frozen=True)
class ModelHistory:
    """All versions, newest first, with the champion and previous picked out, and the newest
    challengers that lost."""

    model_name: str
    tracking_uri: str
    versions: tuple[VersionView, ...]
    lost: tuple[EvaluationView, ...] = ()
    error: str | None = None

    def by_alias(self, alias: str) -> VersionView | None:
        return next((v for v in self.versions if alias in v.aliases), None)

    def as_dict(self) -> dict[str, Any]:
        champion = self.by_alias(tracking.CHAMPION)
        previous = self.by_alias(tracking.PREVIOUS)
        return {
            "model_name": self.model_name,
            "tracking_uri": self.tracking_uri,
            "champion": champion.version if champion else None,
            "previous": previous.version if previous else None,
            "versions": [v.as_dict() for v in self.versions],
            "lost": [e.as_dict() for e in self.lost],
            "error": self.error,
        }


def read_history(
    tracking_uri: str, model_name: str, experiment_name: str, limit: int = 50
) -> ModelHistory:
    """The model's versions with their aliases, tags, evaluations and plot artifacts, and the
    experiment's newest ``LOST_LIMIT`` losing challengers.

    A registry that cannot be reached or a model not registered yet gives an empty history
    with ``error`` set, so the page can say so instead of failing.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        found = client.search_model_versions(f"name = '{_quote(model_name)}'")
        # Search results leave aliases out; the registered model carries alias -> version.
        alias_map = dict(client.get_registered_model(model_name).aliases or {}) if found else {}
        newest = sorted(found, key=lambda mv: int(mv.version), reverse=True)[:limit]
        run_ids = {run_id for mv in newest if (run_id := _run_id(mv))}
        evaluations, lost = _read_evaluations(client, experiment_name, run_ids)
    except MlflowException as exc:
        return ModelHistory(model_name, tracking_uri, (), error=str(exc).splitlines()[0])
    except OSError as exc:
        return ModelHistory(model_name, tracking_uri, (), error=f"MLflow unreachable: {exc}")
    views = []
    for mv in newest:
        tags = dict(mv.tags or {})
        run_id = _run_id(mv)
        aliases = tuple(sorted(a for a, v in alias_map.items() if str(v) == str(mv.version)))
        # Plots only where people look at them: the champion and the one before it.
        wanted = {tracking.CHAMPION, tracking.PREVIOUS} & set(aliases)
        views.append(
            VersionView(
                version=int(mv.version),
                aliases=aliases,
                run_id=run_id,
                accuracy=_float(tags.get(tracking.VERSION_ACCURACY_TAG)),
                manifest_version=tags.get(tracking.VERSION_MANIFEST_VERSION_TAG),
                airflow_run_id=tags.get(tracking.VERSION_AIRFLOW_RUN_ID_TAG) or None,
                registered_at=_iso(mv.creation_timestamp),
                promoted_at=_iso_text(tags.get(tracking.VERSION_PROMOTED_AT_TAG)),
                evaluation=evaluations.get(run_id or ""),
                plots=_find_plots(client, run_id) if wanted and run_id else {},
                card=tags.get(tracking.VERSION_CARD_TAG) or None,
            )
        )
    return ModelHistory(model_name, tracking_uri, tuple(views), lost)


def _run_id(mv: Any) -> str | None:
    return mv.run_id or (mv.tags or {}).get(tracking.VERSION_RUN_ID_TAG) or None


def _read_evaluations(
    client: Any, experiment_name: str, run_ids: set[str]
) -> tuple[dict[str, EvaluationView], tuple[EvaluationView, ...]]:
    """The evaluations of the versions' runs (by run id), and the newest losing challengers:
    two bounded searches in the pipeline's experiment."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return {}, ()
    ids = [experiment.experiment_id]
    of_versions: dict[str, EvaluationView | None] = {}
    if run_ids:
        listed = ", ".join(f"'{_quote(r)}'" for r in sorted(run_ids))
        runs = client.search_runs(ids, f"attributes.run_id IN ({listed})",
                                  max_results=len(run_ids))
        of_versions = {run.info.run_id: _evaluation(run) for run in runs}
    losers = client.search_runs(
        ids, f"tags.`{tracking.EVAL_PROMOTE_TAG}` = 'false'",
        max_results=LOST_LIMIT, order_by=["attributes.start_time DESC"],
    )
    return (
        {rid: e for rid, e in of_versions.items() if e is not None},
        tuple(e for e in map(_evaluation, losers) if e is not None),
    )


def _evaluation(run: Any) -> EvaluationView | None:
    """A run's evaluation, or None when it has not been evaluated."""
    tags, metrics = run.data.tags, run.data.metrics
    promote = tags.get(tracking.EVAL_PROMOTE_TAG)
    if promote is None:
        return None
    reasons = tags.get(tracking.EVAL_REASONS_TAG, "")
    champion = tags.get(tracking.EVAL_CHAMPION_VERSION_TAG)
    return EvaluationView(
        run_id=run.info.run_id,
        run_name=run.info.run_name or run.info.run_id,
        trained_at=_iso(run.info.start_time),
        test_accuracy=metrics.get(tracking.TEST_ACCURACY_METRIC),
        champion_version=None if champion in (None, "none") else champion,
        champion_accuracy=metrics.get(tracking.CHAMPION_TEST_ACCURACY_METRIC),
        mcnemar_p=metrics.get(tracking.MCNEMAR_P_METRIC),
        test_accuracy_ci=_interval(metrics, tracking.TEST_ACCURACY_CI_METRIC),
        difference=metrics.get(tracking.ACCURACY_DIFFERENCE_METRIC),
        difference_ci=_interval(metrics, tracking.ACCURACY_DIFFERENCE_CI_METRIC),
        promote=promote == "true",
        reasons=tuple(r for r in reasons.split(tracking.EVAL_REASONS_SEPARATOR) if r),
        manifest_version=tags.get(tracking.EVAL_MANIFEST_VERSION_TAG),
        airflow_run_id=tags.get(tracking.AIRFLOW_RUN_ID_TAG),
    )


def download_artifact(tracking_uri: str, run_id: str, path: str, dst: str) -> str:
    """Download one artifact of a run into ``dst``; returns the local file path."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri).download_artifacts(run_id, path, dst)


def version_run_id(tracking_uri: str, model_name: str, version: str) -> str | None:
    """The run a registered version was made from (raises if there is no such version)."""
    from mlflow import MlflowClient

    mv = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).get_model_version(
        model_name, version)
    return _run_id(mv)


def _find_plots(client: Any, run_id: str) -> dict[str, str]:
    """The page's plots this run has (a run from before a plot was added lacks it)."""
    try:
        logged = {
            e.path
            for folder in {path.rpartition("/")[0] for path in PLOTS.values()}
            for e in client.list_artifacts(run_id, folder)
        }
    except Exception:  # noqa: BLE001 - a run without readable artifacts just has no plots
        return {}
    return {kind: path for kind, path in PLOTS.items() if path in logged}


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _iso_text(value: str | None) -> str | None:
    """An ISO timestamp tag in the page's format (left as is if it does not parse)."""
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _iso(millis: int | None) -> str:
    if not millis:
        return ""
    when = dt.datetime.fromtimestamp(millis / 1000, tz=dt.UTC)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _interval(metrics: dict[str, float], prefix: str) -> tuple[float, float] | None:
    low, high = metrics.get(f"{prefix}_low"), metrics.get(f"{prefix}_high")
    return None if low is None or high is None else (low, high)
