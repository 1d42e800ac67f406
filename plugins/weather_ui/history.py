"""Read the registered model's history from the MLflow registry, for display only.

What a version means (champion, previous, accuracy, manifest) is decided by the pipeline
(``weather_tasks.registry``); this module only reads the aliases and tags it wrote. mlflow is
imported inside the functions so that loading the plugin (in every Airflow process) stays cheap.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from weather_tasks import tracking

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
# Which run artifacts are the learning curve and the confusion matrix: by name, so the page
# does not depend on the exact file names the training stage chooses.
_PLOTS = {
    "learning_curve": ("learning", "curve", "history"),
    "confusion_matrix": ("confusion",),
}


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
    plots: dict[str, str] = field(default_factory=dict)  # kind -> artifact path

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["aliases"] = list(self.aliases)
        return out


@dataclass(frozen=True)
class ModelHistory:
    """All versions, newest first, with the champion and previous picked out."""

    model_name: str
    tracking_uri: str
    versions: tuple[VersionView, ...]
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
            "error": self.error,
        }


def read_history(tracking_uri: str, model_name: str, limit: int = 50) -> ModelHistory:
    """The model's versions with their aliases, tags and plot artifacts.

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
    except MlflowException as exc:
        return ModelHistory(model_name, tracking_uri, (), error=str(exc).splitlines()[0])
    except OSError as exc:
        return ModelHistory(model_name, tracking_uri, (), error=f"MLflow unreachable: {exc}")
    found = sorted(found, key=lambda mv: int(mv.version), reverse=True)[:limit]
    views = []
    for mv in found:
        tags = dict(mv.tags or {})
        run_id = mv.run_id or tags.get(tracking.VERSION_RUN_ID_TAG)
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
                airflow_run_id=tags.get(tracking.VERSION_AIRFLOW_RUN_ID_TAG),
                registered_at=_iso(mv.creation_timestamp),
                promoted_at=_iso_text(tags.get(tracking.VERSION_PROMOTED_AT_TAG)),
                plots=_find_plots(client, run_id) if wanted and run_id else {},
            )
        )
    return ModelHistory(model_name, tracking_uri, tuple(views))


def download_artifact(tracking_uri: str, run_id: str, path: str, dst: str) -> str:
    """Download one artifact of a run into ``dst``; returns the local file path."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri).download_artifacts(run_id, path, dst)


def _find_plots(client: Any, run_id: str) -> dict[str, str]:
    found: dict[str, str] = {}
    # A test-split plot wins over a validation one when a run has both.
    paths = sorted(_list_pngs(client, run_id, "", depth=2), key=lambda p: "test" not in p)
    for path in paths:
        name = path.rsplit("/", 1)[-1].lower()
        for kind, words in _PLOTS.items():
            if kind not in found and any(w in name for w in words):
                found[kind] = path
    return found


def _list_pngs(client: Any, run_id: str, path: str, depth: int) -> list[str]:
    try:
        entries = client.list_artifacts(run_id, path or None)
    except Exception:  # noqa: BLE001 - a run without readable artifacts just has no plots
        return []
    out: list[str] = []
    for e in entries:
        if e.is_dir and depth > 0 and not e.path.endswith(("model", "artifacts")):
            out += _list_pngs(client, run_id, e.path, depth - 1)
        elif e.path.lower().endswith(".png"):
            out.append(e.path)
    return out


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
