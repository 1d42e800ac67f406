"""The Airflow UI plugin: the model-history page rendered in a real headless Chromium.

A real MLflow server (the session fixture) holds a registered model with two versions
(champion and previous), their tags and plot artifacts; the plugin's FastAPI app runs in
uvicorn as its own process, configured only through ``WEATHER_*`` variables as it would be in
the Airflow API server; Chromium loads the page, and the test reads the DOM it built and takes
a screenshot (under the test's tmp path; ``WEATHER_TEST_ARTIFACTS=DIR`` keeps a copy in DIR).
Another test loads the plugin through Airflow's own plugin manager.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from devtools import local_services

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
ARTIFACTS_ENV = "WEATHER_TEST_ARTIFACTS"  # opt-in: a folder to keep the screenshot in


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("headless Chromium not installed (apt-get install -y chromium)")


def _png(text: str, colour: str) -> bytes:
    img = Image.new("RGB", (320, 240), colour)
    ImageDraw.Draw(img).text((20, 110), text, fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def registered_model(mlflow_server: local_services.Service, tmp_path_factory) -> dict:
    """Two versions as the pipeline registers them: tags, plots, champion/previous aliases."""
    from mlflow import MlflowClient

    name = f"weather-ui-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(tracking_uri=mlflow_server.url)
    exp_id = client.create_experiment(f"ui-{uuid.uuid4().hex[:8]}")
    client.create_registered_model(name)
    work = tmp_path_factory.mktemp("ui-artifacts")
    runs = []
    for i, (acc, manifest) in enumerate(((0.81, "v0001"), (0.9375, "v0002")), start=1):
        run = client.create_run(exp_id)
        rid = run.info.run_id
        client.log_metric(rid, "test_accuracy", acc)
        plots = work / rid / "plots"
        plots.mkdir(parents=True)
        (plots / "learning_curve.png").write_bytes(_png(f"curve {i}", "lightblue"))
        (plots / "confusion_matrix.png").write_bytes(_png(f"confusion {i}", "khaki"))
        client.log_artifacts(rid, str(plots), "plots")
        model_dir = work / rid / "model"
        model_dir.mkdir()
        (model_dir / "MLmodel").write_text("flavors: {}\n")
        client.log_artifacts(rid, str(model_dir), "model")
        client.set_terminated(rid)
        mv = client.create_model_version(
            name, source=f"{run.info.artifact_uri}/model", run_id=rid,
            tags={"accuracy": str(acc), "manifest_version": manifest, "run_id": rid,
                  "airflow_run_id": f"manual__night{i}"},
        )
        runs.append((rid, mv.version))
    client.set_registered_model_alias(name, "previous", runs[0][1])
    client.set_registered_model_alias(name, "champion", runs[1][1])
    return {"name": name, "champion": runs[1], "previous": runs[0]}


@pytest.fixture(scope="module")
def page_server(
    registered_model: dict, mlflow_server: local_services.Service, tmp_path_factory
) -> Iterator[str]:
    """The plugin's FastAPI app in uvicorn, configured by environment as in the API server.

    Mounted under ``/weather-models`` in a parent app, as Airflow's API server mounts
    ``fastapi_apps`` (``app.mount(url_prefix, app)``), so URLs the page builds are the same.
    """
    port = local_services.free_port()
    wrapper = tmp_path_factory.mktemp("ui-app")
    (wrapper / "mounted_ui.py").write_text(
        "from fastapi import FastAPI\n"
        "from weather_ui.app import create_app\n\n"
        "def make() -> FastAPI:\n"
        "    root = FastAPI()\n"
        "    root.mount('/weather-models', create_app())\n"
        "    return root\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PLUGINS), str(wrapper)]),
        "WEATHER_MLFLOW_TRACKING_URI": mlflow_server.url,
        "WEATHER_MLFLOW_UI_URL": "http://mlflow.example:5000",
        "WEATHER_REGISTERED_MODEL": registered_model["name"],
    }
    log = (tmp_path_factory.mktemp("ui-log") / "uvicorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "mounted_ui:make",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/weather-models"
    deadline = time.monotonic() + 300  # a guard against a hung start, not a timing check
    while True:
        try:
            urllib.request.urlopen(url + "/api/history", timeout=60).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"page server did not start: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def _chromium_run(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_history_api_names_champion_and_previous(page_server: str, registered_model: dict) -> None:
    data = json.load(urllib.request.urlopen(page_server + "/api/history", timeout=30))
    assert data["champion"] == int(registered_model["champion"][1])
    assert data["previous"] == int(registered_model["previous"][1])
    champion = next(v for v in data["versions"] if "champion" in v["aliases"])
    assert champion["accuracy"] == pytest.approx(0.9375)
    assert champion["manifest_version"] == "v0002"
    assert set(champion["plots"]) == {"learning_curve", "confusion_matrix"}


def test_artifact_route_serves_png_and_refuses_others(
    page_server: str, registered_model: dict
) -> None:
    rid = registered_model["champion"][0]
    body = urllib.request.urlopen(
        f"{page_server}/runs/{rid}/artifacts/plots/confusion_matrix.png", timeout=60
    ).read()
    assert Image.open(io.BytesIO(body)).size == (320, 240)
    for bad in (f"runs/{rid}/artifacts/model/MLmodel", "runs/not-a-run/artifacts/x.png",
                f"runs/{rid}/artifacts/../../etc/x.png"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{page_server}/{bad}", timeout=30)
        assert err.value.code == 404


def test_page_renders_in_headless_chromium(
    page_server: str, registered_model: dict, tmp_path: Path
) -> None:
    champion_run, champion_version = registered_model["champion"]
    _, previous_version = registered_model["previous"]
    url = page_server + "/"

    shot = tmp_path / "plugin_page.png"
    result = _chromium_run(
        ["--window-size=1280,1300", "--hide-scrollbars", f"--screenshot={shot}", url],
        tmp_path / "profile-shot",
    )
    assert shot.exists(), result.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1280, 1300)
        # Not a blank page: the rendered page has many distinct colours.
        assert len(im.convert("RGB").getcolors(maxcolors=1_000_000) or []) > 50
    if keep := os.environ.get(ARTIFACTS_ENV):
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(keep) / shot.name)

    # --virtual-time-budget lets the images load (and their onload handlers run) before the dump.
    dom = _chromium_run(["--virtual-time-budget=15000", "--dump-dom", url],
                        tmp_path / "profile-dom").stdout
    assert f"id=\"champion\" data-version=\"{champion_version}\"" in dom
    assert f"id=\"previous\" data-version=\"{previous_version}\"" in dom
    assert "93.8%" in dom and "v0002" in dom and "manual__night2" in dom
    assert f"http://mlflow.example:5000/#/runs/{champion_run}" in dom
    # Both plots of the champion were served and decoded by the browser.
    for kind in ("learning_curve", "confusion_matrix"):
        src = f"/weather-models/runs/{champion_run}/artifacts/plots/{kind}.png"
        assert src in dom, kind
        tag = dom[dom.index(src) - 200 : dom.index(src) + 300]
        assert 'data-loaded="yes"' in tag, tag


def test_airflow_loads_the_plugin(tmp_path: Path) -> None:
    """Airflow's plugin manager finds the page app, the nav view and the extra link."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
    }
    airflow = Path(sys.executable).with_name("airflow")
    out = subprocess.run(
        [str(airflow), "plugins", "--output", "json"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    plugins = json.loads(out.stdout[out.stdout.index("[") :])
    weather = next(p for p in plugins if p["name"] == "weather")
    text = json.dumps(weather)
    assert "/weather-models" in text and "Weather models" in text
    assert "MlflowRunLink" in text or "_DecoratedTaskRunLink" in text


def test_run_link_finds_the_mlflow_run_id(monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(PLUGINS))
    try:
        from weather_ui.links import find_run_id, mlflow_run_url
    finally:
        sys.path.remove(str(PLUGINS))
    rid = "0123456789abcdef0123456789abcdef"
    assert find_run_id({"run_id": rid, "epochs": 3}) == rid
    assert find_run_id(json.dumps({"report": {"challenger_run_id": rid}})) == rid
    assert find_run_id({"run_id": "manual__2026-01-01"}) is None  # an Airflow run id
    assert find_run_id(None) is None
    monkeypatch.setenv("WEATHER_MLFLOW_UI_URL", "https://mlflow.example/")
    assert mlflow_run_url(rid) == f"https://mlflow.example/#/runs/{rid}"
