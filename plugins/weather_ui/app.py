"""The model-history page: a small FastAPI app the Airflow API server mounts (plugin).

Routes (under the plugin's ``url_prefix``, e.g. ``/weather-models``):
- ``GET /``: HTML page: champion and previous versions with accuracy, manifest version, dates,
  learning-curve and confusion-matrix plots, and a table of every version.
- ``GET /api/history``: the same data as JSON.
- ``GET /runs/{run_id}/artifacts/{path}``: a PNG artifact of a run, fetched from MLflow.

Server-rendered HTML with no script dependencies, so it works inside the Airflow UI's iframe
and in a headless browser. Settings come from ``PipelineConfig`` (``WEATHER_*``), read per
request, never at import.
"""

from __future__ import annotations

import html
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from weather_tasks import tracking
from weather_ui.history import RUN_ID, ModelHistory, VersionView, download_artifact, read_history

_PLOT_TITLES = {"learning_curve": "Learning curve", "confusion_matrix": "Confusion matrix"}


@dataclass(frozen=True)
class PageSettings:
    tracking_uri: str
    model_name: str
    ui_url: str


def settings_from_env() -> PageSettings:
    from weather_tasks import config

    cfg = config.from_env()
    return PageSettings(
        tracking_uri=cfg.mlflow_tracking_uri,
        model_name=cfg.registered_model,
        ui_url=tracking.ui_url(cfg),
    )


def create_app(settings: PageSettings | None = None) -> FastAPI:
    """The page app; ``settings`` fixed for tests, else read from the environment per request."""
    app = FastAPI(title="Weather model history", docs_url=None, redoc_url=None)
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
        history = read_history(s.tracking_uri, s.model_name)
        return HTMLResponse(render_page(history, s, request))

    @app.get("/api/history")
    def api_history() -> JSONResponse:
        s = current()
        return JSONResponse(read_history(s.tracking_uri, s.model_name).as_dict())

    @app.get("/runs/{run_id}/artifacts/{path:path}", name="artifact")
    def artifact(run_id: str, path: str) -> FileResponse:
        if not RUN_ID.match(run_id) or ".." in path.split("/") or not path.endswith(".png"):
            raise HTTPException(404, "only PNG artifacts of MLflow runs are served")
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
        headers = {"Cache-Control": "max-age=3600"}
        return FileResponse(local, media_type="image/png", headers=headers)

    return app


def render_page(history: ModelHistory, s: PageSettings, request: Request) -> str:
    """The whole HTML page (every value escaped)."""
    esc = html.escape
    champion = history.by_alias(tracking.CHAMPION)
    previous = history.by_alias(tracking.PREVIOUS)
    registry_url = tracking.ui_model_url(s.ui_url, history.model_name)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(history.model_name)}: model history</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Model history: <code>{esc(history.model_name)}</code></h1>",
        f"<p class='meta'>Registry: <a href='{esc(registry_url)}' target='_blank'>"
        f"{esc(s.ui_url)}</a></p>",
    ]
    if history.error:
        parts.append(f"<p class='error' id='error'>{esc(history.error)}</p>")
    if not history.versions:
        parts.append("<p id='empty'>No registered versions yet: the first successful nightly "
                     "run that passes the accuracy floor registers one.</p>")
    parts.append("<div class='cards'>")
    for role, view in ((tracking.CHAMPION, champion), (tracking.PREVIOUS, previous)):
        if view is not None:
            parts.append(_card(role, view, s, request))
    parts.append("</div>")
    if history.versions:
        parts.append(_table(history, s))
    parts.append("</body></html>")
    return "".join(parts)


def _card(role: str, v: VersionView, s: PageSettings, request: Request) -> str:
    esc = html.escape
    rows = [
        ("Accuracy (test)", _pct(v.accuracy)),
        ("Manifest version", esc(v.manifest_version or "-")),
        ("Promoted", esc(v.promoted_at or v.registered_at or "-")),
        ("Registered", esc(v.registered_at or "-")),
        ("Airflow run", esc(v.airflow_run_id or "-")),
        ("MLflow run", _run_link(v.run_id, s)),
    ]
    out = [
        f"<section class='card {role}' id='{role}' data-version='{v.version}'>",
        f"<h2>{role.capitalize()}: version <span class='version'>{v.version}</span></h2>",
        "<table class='facts'>",
        *(f"<tr><th>{k}</th><td>{val}</td></tr>" for k, val in rows),
        "</table><div class='plots'>",
    ]
    for kind, title in _PLOT_TITLES.items():
        path = v.plots.get(kind)
        if path and v.run_id:
            src = request.url_for("artifact", run_id=v.run_id, path=path).path
            # data-loaded is set once the browser has decoded the image (checked in e2e).
            out.append(
                f"<figure><img class='plot {kind}' src='{esc(src)}' "
                f"alt='{title} of version {v.version}' onload=\"this.dataset.loaded='yes'\">"
                f"<figcaption>{title}</figcaption></figure>"
            )
        else:
            out.append(f"<figure class='missing {kind}'><figcaption>{title}: not logged"
                       "</figcaption></figure>")
    out.append("</div></section>")
    return "".join(out)


def _table(history: ModelHistory, s: PageSettings) -> str:
    esc = html.escape
    out = [
        "<h2>All versions</h2><table class='versions' id='versions'><thead><tr>",
        "<th>Version</th><th>Aliases</th><th>Accuracy</th><th>Manifest</th>",
        "<th>Promoted</th><th>Airflow run</th><th>MLflow run</th></tr></thead><tbody>",
    ]
    for v in history.versions:
        aliases = " ".join(f"<span class='alias {esc(a)}'>@{esc(a)}</span>" for a in v.aliases)
        out.append(
            f"<tr data-version='{v.version}'><td>{v.version}</td><td>{aliases}</td>"
            f"<td>{_pct(v.accuracy)}</td><td>{esc(v.manifest_version or '-')}</td>"
            f"<td>{esc(v.promoted_at or v.registered_at or '-')}</td>"
            f"<td>{esc(v.airflow_run_id or '-')}</td><td>{_run_link(v.run_id, s)}</td></tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def _run_link(run_id: str | None, s: PageSettings) -> str:
    if not run_id:
        return "-"
    href = html.escape(tracking.ui_run_url(s.ui_url, run_id))
    return f"<a href='{href}' target='_blank'>{html.escape(run_id)[:8]}</a>"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1f2933;background:#fff}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin:.2rem 0 .6rem}
.meta{color:#52606d}.error{color:#b42318;font-weight:600}
.cards{display:flex;flex-wrap:wrap;gap:1rem}
.card{border:1px solid #d9e2ec;border-radius:8px;padding:1rem;flex:1 1 32rem;min-width:0}
.card.champion{border-color:#2f855a;box-shadow:0 0 0 2px #c6f6d5}
.facts th{text-align:left;padding-right:1rem;color:#52606d;font-weight:500}
.plots{display:flex;gap:.5rem;flex-wrap:wrap}.plots figure{margin:.5rem 0;max-width:100%}
.plots img{max-width:100%;height:auto;border:1px solid #eee}
.plots img.learning_curve{width:40rem}.plots img.confusion_matrix{width:24rem}
.versions{border-collapse:collapse;margin-top:.5rem}
.versions td,.versions th{border-bottom:1px solid #e4e7eb;padding:.3rem .8rem;text-align:left}
.alias{background:#e6fffa;border-radius:4px;padding:0 .3rem;margin-right:.2rem}
.alias.champion{background:#c6f6d5}
"""
