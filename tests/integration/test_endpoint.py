"""The serving endpoint against a real MLflow server and S3 server: it follows @champion from
v1 to v2 under continuous requests without failing one, and keeps its HTTP contract.

Two tiny Keras models (global pooling + one dense layer, 32 px) are logged with
model_package.log_model and registered: the test checks serving, not accuracy.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools import local_services
from devtools.netproxy import FlakyProxy
from tests.support import mwd_images
from weather_tasks import config, endpoint, model_package, serving, storage, tracking
from weather_tasks.config import PipelineConfig

pytestmark = pytest.mark.integration

PHOTOS = ("cloudy1.jpg", "rain11.jpg", "shine10.jpg")


@pytest.fixture(scope="module")
def ep_cfg(s3_server: local_services.Service, mlflow_server: local_services.Service,
           tmp_path_factory: pytest.TempPathFactory) -> PipelineConfig:
    c = config.from_env(
        environ={},
        bucket=f"t-{uuid.uuid4().hex[:12]}",
        s3_endpoint_url=s3_server.url,
        s3_max_attempts=2,
        mlflow_tracking_uri=mlflow_server.url,
        mlflow_http_retries=1,
        mlflow_http_timeout=30,
        registered_model=f"wc-endpoint-{uuid.uuid4().hex[:8]}",
        experiment_name="test-endpoint",
        image_size=32,
        work_dir=tmp_path_factory.mktemp("endpoint-work"),
        serve_poll_seconds=1.0,
        serve_log_sample=1.0,
        serve_max_request_bytes=256 * 1024,
    )
    local_services.ensure_bucket(storage.make_client(c), c.bucket)
    return c


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    return [mwd_images() / name for name in PHOTOS]


@pytest.fixture(scope="module")
def versions(ep_cfg: PipelineConfig, photos: list[Path], mlflow_process: None) -> list[str]:
    """Two registered versions of a tiny model; @champion on the first."""
    import keras
    import mlflow

    mlflow.set_experiment(ep_cfg.experiment_name)
    out = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(len(ep_cfg.classes), activation="softmax")])
        with mlflow.start_run():
            uri = model_package.log_model(model, ep_cfg, str(photos[0]))
        out.append(str(mlflow.register_model(uri, ep_cfg.registered_model).version))
    tracking.client(ep_cfg).set_registered_model_alias(ep_cfg.registered_model,
                                                       tracking.CHAMPION, out[0])
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _served(ep: endpoint.Endpoint) -> Iterator[str]:
    """``ep``'s app served by uvicorn in a thread on a free port (as `weather serve` runs it)."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(endpoint.create_app(ep), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@pytest.fixture(scope="module")
def app_url(ep_cfg: PipelineConfig, versions: list[str]) -> Iterator[str]:
    with _served(endpoint.Endpoint(ep_cfg)) as url:
        yield url


def _request(url: str, body: bytes | None = None,
             content_type: str = "application/json") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _split(values: list[Any], column: str = "image") -> bytes:
    return json.dumps({"dataframe_split": {"columns": [column],
                                           "data": [[v] for v in values]}}).encode()


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_the_endpoint_follows_champion_without_failing_a_request(
    app_url: str, ep_cfg: PipelineConfig, versions: list[str], photos: list[Path]
) -> None:
    v1, v2 = versions
    body = _split([_b64(p) for p in photos])
    status, headers, _ = _request(f"{app_url}/ping")
    assert status == 200
    status, headers, raw = _request(f"{app_url}/invocations", body)
    assert status == 200 and headers["x-model-version"] == v1
    assert json.loads(raw)["model_version"] == v1

    results: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                code, hdrs, data = _request(f"{app_url}/invocations", body)
                answered = json.loads(data)["model_version"] if code == 200 else None
                assert code != 200 or len(json.loads(data)["predictions"]) == len(photos)
            except Exception:  # noqa: BLE001 - any failure counts as a failed request
                code, answered = -1, None
            results.append((time.monotonic(), code, answered))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    time.sleep(2)  # requests on v1 before the move
    moved = time.monotonic()
    tracking.client(ep_cfg).set_registered_model_alias(ep_cfg.registered_model,
                                                       tracking.CHAMPION, v2)
    deadline = moved + 120
    while time.monotonic() < deadline and not any(v == v2 for _, _, v in results):
        time.sleep(0.1)
    time.sleep(2)  # requests on v2 after the swap
    stop.set()
    thread.join(timeout=60)

    failed = [r for r in results if r[1] != 200]
    first_v2 = next((t for t, _, v in results if v == v2), None)
    on_v1 = sum(1 for _, _, v in results if v == v1)
    on_v2 = sum(1 for _, _, v in results if v == v2)
    delay = None if first_v2 is None else first_v2 - moved
    print(f"\nswap: {len(results)} requests ({on_v1} on v{v1}, {on_v2} on v{v2}), "
          f"{len(failed)} failed; v{v2} answered {delay} s after the alias move")
    assert not failed
    assert first_v2 is not None and on_v1 > 0 and on_v2 > 0
    # Once v2 answers, v1 never answers again (one swap, no flapping).
    assert all(v == v2 for t, _, v in results if t > first_v2)

    status, _, raw = _request(f"{app_url}/version")
    info = json.loads(raw)
    assert status == 200 and info["version"] == v2 and info["swaps"] == 1
    assert info["registered_model"] == ep_cfg.registered_model and info["last_poll"]


def test_the_http_contract(app_url: str, photos: list[Path], versions: list[str]) -> None:
    url = f"{app_url}/invocations"
    status, headers, raw = _request(url, _split([_b64(photos[0]), base64.b64encode(
        b"not an image").decode(), None, 7]))
    assert status == 200, raw
    rows = json.loads(raw)["predictions"]
    assert [r["error_code"] for r in rows] == [None, "undecodable", "empty", "not_bytes"]
    assert rows[0]["label"] in config.DEFAULT_CLASSES and rows[1]["label"] is None

    for body, reason in ((b"", "empty request body"), (b"{oops", "not valid JSON"),
                         (json.dumps({"inputs": {"img": ["x"]}}).encode(), "got columns"),
                         (_split([str(photos[0])], column="path"), "reads no files")):
        status, _, raw = _request(url, body)
        assert status == 400 and reason in json.loads(raw)["error"], (body[:40], raw)

    big = _split([base64.b64encode(b"x" * 300 * 1024).decode()])
    status, _, raw = _request(url, big)
    assert status == 413 and "serve_max_request_bytes" in json.loads(raw)["error"]

    # Still serving after each refusal.
    status, _, _ = _request(url, _split([_b64(photos[1])]))
    assert status == 200

    status, _, raw = _request(f"{app_url}/metrics")
    text = raw.decode()
    assert status == 200
    for line in ('weather_endpoint_requests_total{code="200"}',
                 'weather_endpoint_requests_total{code="400"}',
                 'weather_endpoint_requests_total{code="413"}',
                 'weather_endpoint_rows_total{error_code="undecodable"}',
                 'weather_endpoint_rows_total{error_code="none"}',
                 "weather_endpoint_request_seconds_bucket",
                 "weather_endpoint_model_swaps_total"):
        assert line in text, line
    served = json.loads(_request(f"{app_url}/version")[2])["version"]
    assert f"weather_endpoint_model_version {float(served)}" in text


def test_the_prediction_log_reaches_the_bucket_without_images(
    ep_cfg: PipelineConfig, versions: list[str], photos: list[Path]
) -> None:
    """serve_log_sample=1: every request is recorded; stop() writes the last batch."""
    s3 = storage.make_client(ep_cfg)
    ep = endpoint.Endpoint(ep_cfg, s3)
    ep.start()
    try:
        images = [_b64(p) for p in photos]
        version, rows = ep.invoke(_split(images), "application/json")
    finally:
        ep.stop()
    assert ep.prediction_log is not None and len(ep.prediction_log.written) == 1
    key = ep.prediction_log.written[0]
    assert key.startswith(ep_cfg.predictions_prefix) and key.endswith(".jsonl")
    text = s3.get_object(Bucket=ep_cfg.bucket, Key=key)["Body"].read().decode()
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) == 1 and records[0]["model_version"] == version
    assert [r["label"] for r in records[0]["rows"]] == [r["label"] for r in rows]
    assert set(records[0]["rows"][0]) == {"sha256", "label", "probabilities", "error_code"}
    assert set(records[0]["rows"][0]["probabilities"]) == set(ep_cfg.classes)
    assert all(img[:40] not in text for img in images)


def test_with_no_champion_yet_it_answers_503_until_one_comes(
    ep_cfg: PipelineConfig, versions: list[str], photos: list[Path]
) -> None:
    """A new deployment starts its endpoint before the first night: it comes up, says 503
    (``/ping`` too, so a health check reads "not ready"), and serves the first champion as soon
    as a poll sees it, with no restart."""
    import mlflow

    client = tracking.client(ep_cfg)
    name = f"wc-later-{uuid.uuid4().hex[:8]}"
    source = client.get_model_version(ep_cfg.registered_model, versions[0])
    version = str(mlflow.register_model(source.source, name).version)  # v1's model, new name
    ep = endpoint.Endpoint(config.override(ep_cfg, registered_model=name))
    body = _split([_b64(photos[0])])
    with _served(ep) as url:
        assert _request(f"{url}/ping")[0] == 503
        status, _, raw = _request(f"{url}/invocations", body)
        assert status == 503 and "no model to serve yet" in json.loads(raw)["error"]
        assert f"{name!r} has alias @champion" in json.loads(raw)["error"]
        assert json.loads(_request(f"{url}/version")[2])["version"] is None

        client.set_registered_model_alias(name, tracking.CHAMPION, version)
        deadline = time.monotonic() + 120
        while _request(f"{url}/ping")[0] != 200:
            assert time.monotonic() < deadline, "the first champion was never served"
            time.sleep(0.2)
        status, headers, raw = _request(f"{url}/invocations", body)
        assert status == 200 and headers["x-model-version"] == version
        info = json.loads(_request(f"{url}/version")[2])
        assert (info["version"], info["swaps"], info["last_poll_error"]) == (version, 0, None)
        metrics = _request(f"{url}/metrics")[2].decode()
        assert 'weather_endpoint_requests_total{code="503"} 1.0' in metrics
        assert f"weather_endpoint_model_version {float(version)}" in metrics


def test_failed_polls_and_broken_versions_keep_the_served_version(
    ep_cfg: PipelineConfig, versions: list[str], photos: list[Path],
    mlflow_server: local_services.Service,
) -> None:
    """MLflow unreachable during a poll, then a new champion that does not load: each is
    logged, counted and retried at the next poll while the served version keeps answering."""
    import mlflow

    client = tracking.client(ep_cfg)
    name = f"wc-faults-{uuid.uuid4().hex[:8]}"
    for v in versions:  # v1 and v2 of the module's models, under a name of this test's own
        mlflow.register_model(client.get_model_version(ep_cfg.registered_model, v).source, name)
    client.set_registered_model_alias(name, tracking.CHAMPION, "1")
    broken = {"2"}

    def loader(uri: str, cfg: PipelineConfig) -> Any:
        if uri.rsplit("/", 1)[1] in broken:
            raise RuntimeError(f"cannot load {uri}: broken artifact")
        return serving.load_model(uri, cfg)

    proxy = FlakyProxy(int(mlflow_server.url.rsplit(":", 1)[1]))
    try:
        cfg = config.override(ep_cfg, registered_model=name, mlflow_tracking_uri=proxy.url,
                              mlflow_http_retries=0, mlflow_http_timeout=10)
        tracking.configure_process(cfg)  # as `weather serve` does (put back after the test)
        ep = endpoint.Endpoint(cfg, loader=loader)
        body = _split([_b64(photos[0])])
        assert ep.invoke(body, "application/json")[0] == "1"

        proxy.die_after(0)
        assert not ep.poll_once()
        assert ep.last_poll_error and "cannot connect" in ep.last_poll_error
        assert proxy.url in ep.last_poll_error
        assert ep.invoke(body, "application/json")[0] == "1"  # from memory, MLflow gone
        proxy.revive()

        client.set_registered_model_alias(name, tracking.CHAMPION, "2")
        assert not ep.poll_once() and ep.last_poll_error is None
        assert ep.invoke(body, "application/json")[0] == "1"
        broken.clear()  # fixed: the next poll loads it
        assert ep.poll_once() and ep.invoke(body, "application/json")[0] == "2"

        metrics = ep.metrics.text().decode()
        for line in ("weather_endpoint_poll_failures_total 1.0",
                     "weather_endpoint_load_failures_total 1.0",
                     "weather_endpoint_model_swaps_total 1.0",
                     "weather_endpoint_model_version 2.0"):
            assert line in metrics, line
        assert ep.status().swaps == 1
    finally:
        proxy.close()


def test_weather_serve_fails_in_one_line_when_mlflow_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from weather_tasks import cli

    monkeypatch.setenv("WEATHER_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("WEATHER_REGISTERED_MODEL", f"nobody-{uuid.uuid4().hex[:8]}")
    assert cli.main(["serve", "--port", str(_free_port())]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("weather serve: error: ")
    assert "cannot connect" in err[0]
