"""The Airflow UI plugin: the model-history page rendered in a real headless Chromium.

A real MLflow server (the session fixture) holds what three nights of the pipeline leave: three
evaluated training runs with their plots (``weather_tasks.plots``) and evaluations (written by
``weather_tasks.evaluate.log_evaluation`` itself), two registered versions (champion and
previous) and a challenger that lost, whose run name and reasons are hostile HTML. The plugin's
FastAPI app runs in uvicorn as its own process, configured only through ``WEATHER_*`` variables
as it would be in the Airflow API server; Chromium loads the page, and the test reads the DOM
it built and takes a screenshot (under the test's tmp path; ``WEATHER_TEST_ARTIFACTS=DIR``
keeps a copy in DIR). Another test loads the plugin through Airflow's own plugin manager.
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

import numpy as np
import pytest
from PIL import Image

from devtools import local_services
from weather_tasks import card, config, evaluate, metrics, plots, storage, tracking
from weather_tasks.policy import Decision

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
ARTIFACTS_ENV = "WEATHER_TEST_ARTIFACTS"  # opt-in: a folder to keep the screenshot in


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("headless Chromium not installed (apt-get install -y chromium)")


CLASSES = ("shine", "sunrise", "cloudy", "rain")
HOSTILE_NAME = """<img src=x onerror="document.body.dataset.pwned='name'">"""
HOSTILE_REASON = "<script>document.body.dataset.pwned='reason'</script> recall of 'rain' drops"


def _airflow_run_id(night: int) -> str:
    return f"scheduled__2026-01-0{night}T02:00:00+00:00"


def _test_metrics(n_wrong: int, per_class: int = 8) -> metrics.Metrics:
    """Metrics of a model that gets ``n_wrong`` of 32 test images wrong (the last ones)."""
    y_true = [c for c in CLASSES for _ in range(per_class)]
    probs = np.eye(len(CLASSES))[[CLASSES.index(y) for y in y_true]]
    probs[len(y_true) - n_wrong :] = np.roll(probs[len(y_true) - n_wrong :], 1, axis=1)
    return metrics.compute_metrics(y_true, probs, CLASSES)


def _log_training(client, exp_id: str, night: int, name: str, work: Path) -> str:  # noqa: ANN001
    """A training run as train.py leaves it: tags, learning curve, val matrix, a model folder."""
    manifest = f"v00000{night}"
    run = client.create_run(exp_id, run_name=name, tags={
        tracking.MANIFEST_VERSION_TAG: manifest,
        tracking.AIRFLOW_RUN_ID_TAG: _airflow_run_id(night),
    })
    rid = run.info.run_id
    epochs = 12
    # Val accuracy peaks at epoch 8 (restored), then drifts down.
    val = [0.5 + 0.4 * (1 - 0.7 ** min(e, 7)) - 0.01 * max(e - 7, 0) for e in range(epochs)]
    history = {
        "accuracy": [0.45 + 0.5 * (1 - 0.7**e) for e in range(epochs)], "val_accuracy": val,
        "loss": [1.3 * 0.8**e for e in range(epochs)],
        "val_loss": [1.4 * 0.82**e + 0.1 for e in range(epochs)],
        "learning_rate": [1e-3] * 5 + [3e-4] * 4 + [9e-5] * 3,
    }
    title = f"mobilenet_v3_small, 224 px, manifest {manifest}"
    client.log_figure(rid, plots.learning_curve_figure(history, title=title),
                      tracking.LEARNING_CURVE_PLOT)
    val_cm = np.array(_test_metrics(night + 1).confusion_matrix)
    client.log_figure(rid, plots.confusion_matrix_figure(val_cm, CLASSES, "val"),
                      tracking.CONFUSION_MATRIX_VAL_PLOT)
    model_dir = work / rid / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    client.log_artifacts(rid, str(model_dir), tracking.MODEL_ARTIFACT)
    return rid


@pytest.fixture(scope="module")
def registered_model(
    mlflow_server: local_services.Service, s3_server: local_services.Service, tmp_path_factory
) -> dict:
    """Three nights: v1 (no champion), v2 beats v1, the third run loses to v2 (hostile text)."""
    from mlflow import MlflowClient

    name = f"weather-ui-{uuid.uuid4().hex[:8]}"
    experiment = f"ui-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(tracking_uri=mlflow_server.url)
    exp_id = client.create_experiment(experiment)
    client.create_registered_model(name)
    work = tmp_path_factory.mktemp("ui-artifacts")
    nights = [  # (run name, wrong of 32, champion version compared, McNemar p, reasons)
        ("night-1", 6, None, None, ["no champion yet", "accuracy 0.8125 >= floor 0.7000"]),
        ("night-2", 2, "1", 0.0312, ["accuracy 0.9375 >= champion 0.8125 + min_delta 0.0000",
                                     "no class recall drops more than 0.0500"]),
        (HOSTILE_NAME, 3, "2", 1.0, ["accuracy 0.9062 < champion 0.9375 + min_delta 0.0000",
                                     HOSTILE_REASON]),
    ]
    runs, versions = [], []
    for night, (run_name, wrong, champ_version, p, reasons) in enumerate(nights, start=1):
        rid = _log_training(client, exp_id, night, run_name, work)
        challenger = _test_metrics(wrong)
        champion = _test_metrics(nights[night - 2][1]) if champ_version else None
        report = evaluate.EvalReport(
            run_id=rid, model_uri=tracking.run_model_uri(rid), manifest_version=f"v00000{night}",
            n_test=challenger.n, challenger=challenger, champion=champion,
            champion_version=champ_version, champion_run_id=runs[-1] if runs else None,
            champion_error=None, mcnemar_p=p, decision=Decision(night < 3, reasons),
            difference=(metrics.Interval(challenger.accuracy - champion.accuracy, -0.02, 0.26)
                        if champion else None),
        )
        evaluate.log_evaluation(client, report, CLASSES)
        client.set_terminated(rid)
        runs.append(rid)
        if report.promote:  # the tags registry._register writes
            mv = client.create_model_version(
                name, source=f"{client.get_run(rid).info.artifact_uri}/model", run_id=rid,
                tags={tracking.VERSION_ACCURACY_TAG: f"{challenger.accuracy:.6f}",
                      tracking.VERSION_MANIFEST_VERSION_TAG: report.manifest_version,
                      tracking.VERSION_RUN_ID_TAG: rid,
                      tracking.VERSION_AIRFLOW_RUN_ID_TAG: _airflow_run_id(night),
                      tracking.VERSION_PROMOTED_AT_TAG: f"2026-01-0{night}T02:30:00+00:00"},
            )
            versions.append(mv.version)
    client.set_registered_model_alias(name, tracking.PREVIOUS, versions[0])
    client.set_registered_model_alias(name, tracking.CHAMPION, versions[1])
    # The champion's model card, as promotion writes it (the previous version has none: it
    # was promoted before cards existed).
    card_cfg = config.from_env(environ={}, mlflow_tracking_uri=mlflow_server.url,
                               s3_endpoint_url=s3_server.url, bucket=f"ui-{uuid.uuid4().hex[:8]}",
                               registered_model=name)
    s3 = storage.make_client(card_cfg)
    local_services.ensure_bucket(s3, card_cfg.bucket)
    uri = card.write_card(card_cfg, runs[1], client=client, s3=s3, decision=card.CardDecision(
        "promoted", "accuracy 0.9375 >= champion", versions[1], versions[0], versions[0]))
    client.set_model_version_tag(name, versions[1], tracking.VERSION_CARD_TAG, uri)
    # Night 3's screening of its new photos, as weather_tasks.screen logs it: drift held the
    # promotion, one suspect label held for review, one in the test split listed only.
    screening_exp = client.create_experiment(experiment + tracking.SCREENING_EXPERIMENT_SUFFIX)
    sid = client.create_run(screening_exp, tags={
        tracking.MANIFEST_VERSION_TAG: "v000003",
        tracking.AIRFLOW_RUN_ID_TAG: _airflow_run_id(3)}).info.run_id
    for key, value in {tracking.DRIFT_MMD_P_METRIC: 0.002, "n_new": 16, "n_reference": 48,
                       "n_suspects": 2}.items():
        client.log_metric(sid, key, value)
    client.log_dict(sid, {"hold_reason": "drift: MMD p=0.002 < 0.01 on 16 new photos"},
                    tracking.SCREENING_ARTIFACT)
    suspects = [
        {"sha256": "ab" * 32, "given": "shine", "predicted": "rain", "confidence": 0.97,
         "split": "train", "held": True},
        {"sha256": "cd" * 32, "given": HOSTILE_NAME, "predicted": "cloudy", "confidence": 0.91,
         "split": "test", "held": False},
    ]
    client.log_dict(sid, {"manifest_version": "v000003", "suspects": suspects},
                    tracking.SUSPECT_LABELS_ARTIFACT)
    client.log_figure(sid, plots.confusion_matrix_figure(np.eye(4, dtype=int), CLASSES, "test"),
                      tracking.DRIFT_PLOT)
    thumb = work / f"{'ab' * 32}.jpg"
    Image.new("RGB", (96, 64), (200, 120, 40)).save(thumb, "JPEG")
    client.log_artifact(sid, str(thumb), tracking.SUSPECT_THUMBS_DIR)
    client.set_terminated(sid)
    return {"name": name, "experiment": experiment, "champion": (runs[1], versions[1]),
            "previous": (runs[0], versions[0]), "lost": runs[2], "screening": sid}


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
        "WEATHER_EXPERIMENT_NAME": registered_model["experiment"],
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


def _element(dom: str, start: str, end: str) -> str:
    """The text from the first ``start`` up to the next ``end`` (one element of the dump)."""
    assert start in dom, start
    i = dom.index(start)
    return dom[i : dom.index(end, i) + len(end)]


def test_history_api_has_versions_evaluations_and_lost(
    page_server: str, registered_model: dict
) -> None:
    data = json.load(urllib.request.urlopen(page_server + "/api/history", timeout=30))
    assert data["champion"] == int(registered_model["champion"][1])
    assert data["previous"] == int(registered_model["previous"][1])
    champion = next(v for v in data["versions"] if "champion" in v["aliases"])
    assert champion["accuracy"] == pytest.approx(0.9375)
    assert champion["manifest_version"] == "v000002"
    assert set(champion["plots"]) == {"learning_curve", "confusion_test", "confusion_val"}
    assert champion["evaluation"]["promote"] is True
    assert champion["evaluation"]["champion_version"] == "1"
    assert champion["evaluation"]["mcnemar_p"] == pytest.approx(0.0312)
    low, high = champion["evaluation"]["test_accuracy_ci"]  # Wilson, 30 of 32
    assert low == pytest.approx(0.7985, abs=1e-3) and high == pytest.approx(0.9827, abs=1e-3)
    assert champion["evaluation"]["difference"] == pytest.approx(0.125)
    assert champion["evaluation"]["difference_ci"] == pytest.approx([-0.02, 0.26])
    assert champion["evaluation"]["reasons"][1] == "no class recall drops more than 0.0500"
    (lost,) = data["lost"]
    assert lost["run_id"] == registered_model["lost"] and lost["run_name"] == HOSTILE_NAME
    assert lost["test_accuracy"] == pytest.approx(29 / 32)
    assert lost["champion_accuracy"] == pytest.approx(0.9375)
    assert lost["reasons"][1] == HOSTILE_REASON
    [screening] = data["screenings"]
    assert screening["run_id"] == registered_model["screening"]
    assert screening["mmd_p"] == pytest.approx(0.002) and screening["n_suspects"] == 2
    assert screening["hold_reason"].startswith("drift: MMD p=0.002")


def test_artifact_route_serves_png_and_refuses_others(
    page_server: str, registered_model: dict
) -> None:
    rid = registered_model["champion"][0]
    body = urllib.request.urlopen(
        f"{page_server}/runs/{rid}/artifacts/{tracking.CONFUSION_MATRIX_TEST_PLOT}", timeout=60
    ).read()
    assert Image.open(io.BytesIO(body)).format == "PNG"
    thumb = f"{tracking.SUSPECT_THUMBS_DIR}/{'ab' * 32}.jpg"
    with urllib.request.urlopen(
        f"{page_server}/runs/{registered_model['screening']}/artifacts/{thumb}", timeout=60
    ) as response:
        assert response.headers["Content-Type"] == "image/jpeg"
        assert Image.open(io.BytesIO(response.read())).size == (96, 64)
    for bad in (f"runs/{rid}/artifacts/model/MLmodel", "runs/not-a-run/artifacts/x.png",
                f"runs/{rid}/artifacts/../../etc/x.png"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{page_server}/{bad}", timeout=30)
        assert err.value.code == 404


def test_card_route_serves_the_champions_card_self_contained(
    page_server: str, registered_model: dict
) -> None:
    """The version's card: HTML under a policy that allows no request and no script; the card
    itself has the evaluation's numbers; a version without a card, or none at all, is a 404."""
    _, champion_version = registered_model["champion"]
    response = urllib.request.urlopen(f"{page_server}/versions/{champion_version}/card",
                                      timeout=60)
    assert response.headers["Content-Type"].startswith("text/html")
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "img-src data:" in csp and "sandbox" in csp
    html = response.read().decode()
    assert f"version {champion_version}</h1>" in html and "promoted to champion" in html
    assert "93.8%" in html and "Champion v1</th>" in html
    assert "http://" not in html and "https://" not in html
    _, previous_version = registered_model["previous"]
    for missing in (previous_version, "999"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{page_server}/versions/{missing}/card", timeout=60)
        assert err.value.code == 404


def test_page_renders_in_headless_chromium(
    page_server: str, registered_model: dict, tmp_path: Path
) -> None:
    champion_run, champion_version = registered_model["champion"]
    _, previous_version = registered_model["previous"]
    url = page_server + "/"

    shot = tmp_path / "plugin_page.png"
    result = _chromium_run(
        ["--window-size=1280,2400", "--hide-scrollbars", "--virtual-time-budget=15000",
         f"--screenshot={shot}", url],
        tmp_path / "profile-shot",
    )
    assert shot.exists(), result.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        # Not a blank page: the rendered page has many distinct colours.
        assert len(im.convert("RGB").getcolors(maxcolors=1_000_000) or []) > 50
    if keep := os.environ.get(ARTIFACTS_ENV):
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(keep) / shot.name)

    # --virtual-time-budget lets the images load (and their onload handlers run) before the dump.
    dom = _chromium_run(["--virtual-time-budget=15000", "--dump-dom", url],
                        tmp_path / "profile-dom").stdout
    card = _element(dom, f'id="champion" data-version="{champion_version}"', "</section>")
    assert f'id="previous" data-version="{previous_version}"' in dom
    assert "93.8%" in card and "v000002" in card
    assert '<span class="split test">test</span> split)' in card  # the accuracy's split
    assert "promoted</span> vs v1" in card and "<li>no class recall drops more than" in card
    assert '<td class="mcnemar">0.0312</td>' in card
    assert "(95% CI 79.9% to 98.3%)" in card
    assert "+12.5 pts" in card and "(95% CI -2.0 pts to +26.0 pts, same test images)" in card
    assert f'href="http://mlflow.example:5000/#/runs/{champion_run}"' in card
    assert f'<a class="model-card" href="/weather-models/versions/{champion_version}/card"' in card
    previous_card = _element(dom, f'id="previous" data-version="{previous_version}"', "</section>")
    assert "no card" in previous_card
    # The Airflow run, under the Airflow base URL the plugin is mounted below (here: /).
    airflow_href = "/dags/weather_retrain/runs/scheduled__2026-01-02T02%3A00%3A00%2B00%3A00"
    assert f'href="{airflow_href}" target="_top">{_airflow_run_id(2)}</a>' in card
    # The champion's three plots were served and decoded by the browser, each matrix labelled
    # with its split.
    for kind, path, split in (
        ("learning_curve", tracking.LEARNING_CURVE_PLOT, None),
        ("confusion_test", tracking.CONFUSION_MATRIX_TEST_PLOT, "test"),
        ("confusion_val", tracking.CONFUSION_MATRIX_VAL_PLOT, "val"),
    ):
        figure = _element(card, f'<figure class="{kind}"', "</figure>")
        assert f'src="/weather-models/runs/{champion_run}/artifacts/{path}"' in figure, kind
        assert 'data-loaded="yes"' in figure, figure
        if split:
            assert f'data-split="{split}"' in figure
            assert f'<span class="split {split}">{split}</span>' in figure
    # The challenger that lost: listed with its accuracy and reasons, its hostile name and
    # reason shown as text, never run.
    lost = _element(dom, f'<tr data-run-id="{registered_model["lost"]}"', "</tr>")
    assert "90.6%" in lost and "v2: 93.8%" in lost and "<li>accuracy 0.9062 &lt; champion" in lost
    assert "&lt;script&gt;document.body.dataset.pwned" in lost
    assert "&lt;img src=x onerror=" in lost
    assert "<script" not in dom and "data-pwned" not in dom
    night = _element(dom, f'<tr data-run-id="{registered_model["screening"]}"', "</tr>")
    assert "v000003" in night and "16 / 48" in night and '<td class="mmd-p">0.002</td>' in night
    assert "held</span> drift: MMD p=0.002" in night
    assert "shine → rain (97.0%)" in night and "<b>held</b>" in night
    assert "&lt;img src=x onerror=" in night  # the hostile label is shown as text
    drift_plot = f'/weather-models/runs/{registered_model["screening"]}/artifacts/plots/drift.png'
    assert f'src="{drift_plot}"' in night
    thumb = f'/weather-models/runs/{registered_model["screening"]}/artifacts/screening/thumbs/'
    assert f'<img class="thumb" alt="" src="{thumb}{"ab" * 32}.jpg">' in night


def test_links_follow_the_airflow_base_path(
    registered_model: dict, mlflow_server: local_services.Service
) -> None:
    """Behind ``[api] base_url = .../airflow`` the API server's root path is /airflow: the
    Airflow and artifact links keep it."""
    import asyncio

    import httpx
    from fastapi import FastAPI

    sys.path.insert(0, str(PLUGINS))
    try:
        from weather_ui.app import PageSettings, create_app
    finally:
        sys.path.remove(str(PLUGINS))
    settings = PageSettings(mlflow_server.url, registered_model["name"],
                            registered_model["experiment"], "http://mlflow.example:5000")
    root = FastAPI(root_path="/airflow")  # what the API server does with the base URL's path
    root.mount("/weather-models", create_app(settings))

    async def get(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=root)
        async with httpx.AsyncClient(transport=transport, base_url="http://af.example") as c:
            return await c.get(path)

    page = asyncio.run(get("/airflow/weather-models/"))
    assert page.status_code == 200
    champion_run = registered_model["champion"][0]
    assert 'href="/airflow/dags/weather_retrain/runs/scheduled__2026-01-02T' in page.text
    assert f'src="/airflow/weather-models/runs/{champion_run}/artifacts/' in page.text


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
