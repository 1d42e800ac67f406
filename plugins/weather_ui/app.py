"""The model-history page: a small FastAPI app the Airflow API server mounts (plugin).

Routes (under the plugin's ``url_prefix``, e.g. ``/weather-models``):
- ``GET /``: HTML page: per registered version its test accuracy, the evaluation's decision,
  reasons and McNemar p, manifest version and dates; the champion's and previous version's
  learning curve and confusion matrices (test and val); the challengers that lost; links to
  each MLflow run and Airflow DAG run.
  Then each night's screening of its new photos (``weather_ui.screening``): drift test, hold,
  suspect labels, the drift plot.
- ``GET /api/history``: the same data as JSON (``screenings`` beside the history).
- ``GET /runs/{run_id}/artifacts/{path}``: a PNG or JPEG artifact of a run (plots, suspect
  thumbnails), fetched from MLflow.
- ``GET /versions/{version}/card``: the version's model card (``weather_tasks.card``), the
  self-contained HTML promotion logged on its run, served under a Content-Security-Policy
  that allows no request at all (its figures are ``data:`` URIs, its CSS inline) and no script.

Server-rendered HTML (Jinja2 templates in ``templates/``, autoescaped: run names and reasons
come from MLflow and are shown as text) with no script dependencies, so it works inside the
Airflow UI's iframe and in a headless browser. Settings come from ``PipelineConfig``
(``WEATHER_*``), read per request, never at import.
"""

from __future__ import annotations

import tempfile
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates

from weather_tasks import tracking
from weather_ui.history import (
    LOST_LIMIT,
    RUN_ID,
    download_artifact,
    read_history,
    version_run_id,
)
from weather_ui.screening import read_screenings

# The artifacts the page shows (plots, suspect thumbnails), by file extension.
IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg"}
# The card is self-contained: nothing to load, nothing to run; sandboxed like a foreign page.
CARD_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'self'; sandbox")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _signed_pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f} pts"


def _pvalue(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _templates() -> Jinja2Templates:
    # Autoescaped: every value from MLflow (run names, reasons, tags) is shown as text.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(pct=_pct, signed_pct=_signed_pct, pvalue=_pvalue)
    return Jinja2Templates(env=env)


_TEMPLATES = _templates()


@dataclass(frozen=True)
class PageSettings:
    tracking_uri: str
    model_name: str
    experiment_name: str
    ui_url: str


def settings_from_env() -> PageSettings:
    from weather_tasks import config

    cfg = config.from_env()
    return PageSettings(
        tracking_uri=cfg.mlflow_tracking_uri,
        model_name=cfg.registered_model,
        experiment_name=cfg.experiment_name,
        ui_url=tracking.ui_url(cfg),
    )


def create_app(
    settings: PageSettings | None = None, dependencies: Sequence[Any] = ()
) -> FastAPI:
    """The page app; ``settings`` fixed for tests, else read from the environment per request.
    ``dependencies`` run before every route (the plugin passes Airflow's authentication)."""
    app = FastAPI(title="Weather model history", docs_url=None, redoc_url=None,
                  dependencies=list(dependencies))
    # Artifacts of a run never change, so a downloaded PNG is served from disk afterwards.
    # The cache directory is made on first use: every Airflow process loads the plugin.
    cache: list[Path] = []
    downloaded: dict[tuple[str, str], str] = {}
    lock = threading.Lock()

    def current() -> PageSettings:
        return settings or settings_from_env()

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request) -> HTMLResponse:
        s = current()
        history = read_history(s.tracking_uri, s.model_name, s.experiment_name)
        screenings = read_screenings(
            s.tracking_uri, s.experiment_name + tracking.SCREENING_EXPERIMENT_SUFFIX
        )
        context = {"history": history, "links": Links(s, request), "lost_limit": LOST_LIMIT,
                   "screenings": screenings, "thumbs_dir": tracking.SUSPECT_THUMBS_DIR}
        return _TEMPLATES.TemplateResponse(request, "page.html", context)

    @app.get("/api/history")
    def api_history() -> JSONResponse:
        s = current()
        history = read_history(s.tracking_uri, s.model_name, s.experiment_name)
        screenings = read_screenings(
            s.tracking_uri, s.experiment_name + tracking.SCREENING_EXPERIMENT_SUFFIX
        )
        return JSONResponse(history.as_dict() | {"screenings": [v.as_dict() for v in screenings]})

    def fetch(run_id: str, path: str) -> str:
        """The local copy of a run's artifact, downloaded once (404 if MLflow has none)."""
        with lock:
            local = downloaded.get((run_id, path))
            if local is None:
                try:
                    # A directory per download: two plots with one file name never collide.
                    if not cache:
                        cache.append(Path(tempfile.mkdtemp(prefix="weather-ui-")))
                    dst = cache[0] / str(len(downloaded))
                    local = download_artifact(current().tracking_uri, run_id, path, str(dst))
                except Exception as exc:  # noqa: BLE001 - report any MLflow failure as a 404
                    raise HTTPException(404, f"artifact not available: {exc}") from exc
                downloaded[(run_id, path)] = local
        return local

    @app.get("/runs/{run_id}/artifacts/{path:path}", name="artifact")
    def artifact(run_id: str, path: str) -> FileResponse:
        media = IMAGE_TYPES.get(path.rpartition(".")[2])
        if not RUN_ID.match(run_id) or ".." in path.split("/") or media is None:
            raise HTTPException(404, "only PNG and JPEG artifacts of MLflow runs are served")
        headers = {"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"}
        return FileResponse(fetch(run_id, path), media_type=media, headers=headers)

    @app.get("/versions/{version}/card", name="card")
    def card(version: int) -> FileResponse:
        s = current()
        try:
            run_id = version_run_id(s.tracking_uri, s.model_name, str(version))
        except Exception as exc:  # noqa: BLE001 - no such version, or MLflow unreachable
            raise HTTPException(404, f"version {version} not available: {exc}") from exc
        if run_id is None or not RUN_ID.match(run_id):
            raise HTTPException(404, f"version {version} names no run")
        # A card is rewritten only when missing (a promotion's retry): cache it briefly.
        headers = {"Content-Security-Policy": CARD_CSP, "X-Content-Type-Options": "nosniff",
                   "Cache-Control": "max-age=300"}
        return FileResponse(fetch(run_id, tracking.CARD_HTML_ARTIFACT),
                            media_type="text/html; charset=utf-8", headers=headers)

    return app


class Links:
    """The page's URLs: MLflow UI pages, Airflow UI pages and this app's artifact route.

    Airflow pages are relative to the Airflow base URL this app is mounted under (its
    ``root_path`` less the plugin's own prefix), so they work behind a base path or a proxy.
    """

    def __init__(self, s: PageSettings, request: Request) -> None:
        self.settings = s
        self.request = request
        self.airflow_base = str(request.scope.get("root_path", "")).rpartition("/")[0]

    def registry(self) -> str:
        return tracking.ui_model_url(self.settings.ui_url, self.settings.model_name)

    def mlflow_run(self, run_id: str) -> str:
        return tracking.ui_run_url(self.settings.ui_url, run_id)

    def airflow_run(self, airflow_run_id: str) -> str:
        quoted = urllib.parse.quote(airflow_run_id, safe="")
        return f"{self.airflow_base}/dags/{tracking.RETRAIN_DAG_ID}/runs/{quoted}"

    def artifact(self, run_id: str, path: str) -> str:
        return self.request.url_for("artifact", run_id=run_id, path=path).path

    def card(self, version: int) -> str:
        return self.request.url_for("card", version=str(version)).path

