"""Storage and tracking failures against real sockets: one clear line, transient or not.

The servers here fail on purpose: a closed port (connection refused), a socket that accepts
and never answers (a hung server), one that answers every request with a bodiless 503 (a load
balancer in front of a dead backend), the S3 server behind ``FlakyProxy`` (throttling, a crash
mid-run), and an MLflow tracking URI where nothing listens.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from devtools.corpus import image_bytes
from devtools.local_services import free_port
from devtools.netproxy import FlakyProxy
from weather_tasks import config, ingest, storage
from weather_tasks.storage import StorageError

pytestmark = pytest.mark.integration
WEATHER = str(Path(sys.executable).with_name("weather"))


class _Listener:
    """A TCP server on 127.0.0.1 that hands each connection to :meth:`_connected`."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._connected(conn)

    def _connected(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._listener.close()


class _Hung(_Listener):
    """Accepts connections and never answers (the requests are read and ignored)."""

    def __init__(self) -> None:
        self._conns: list[socket.socket] = []
        super().__init__()

    def _connected(self, conn: socket.socket) -> None:
        self._conns.append(conn)

    def close(self) -> None:
        super().close()
        for c in self._conns:
            c.close()


class _Bodiless(_Listener):
    """Answers every request with one status and no body (no S3 error code to recognise, as a
    load balancer in front of a dead backend, or S3 itself for a HEAD); remembers when each
    request arrived."""

    def __init__(self, status: str) -> None:
        self.status = status
        self.arrivals: list[float] = []
        super().__init__()

    def _connected(self, conn: socket.socket) -> None:
        threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                while b"\r\n\r\n" in buffer:  # requests without a body (HEAD, GET)
                    _, buffer = buffer.split(b"\r\n\r\n", 1)
                    self.arrivals.append(time.monotonic())
                    conn.sendall(f"HTTP/1.1 {self.status}\r\nContent-Length: 0\r\n\r\n".encode())


@pytest.fixture
def hung() -> Iterator[_Hung]:
    server = _Hung()
    yield server
    server.close()


@pytest.fixture
def bodiless_503() -> Iterator[_Bodiless]:
    server = _Bodiless("503 Service Unavailable")
    yield server
    server.close()


@pytest.fixture
def denied() -> Iterator[_Bodiless]:
    server = _Bodiless("403 Forbidden")
    yield server
    server.close()


def _closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # bound and released: nothing listens there


def _weather(*args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    out = subprocess.run(
        [WEATHER, *args], env={**os.environ, **env}, capture_output=True, text=True,
        timeout=300, check=False,
    )
    return out, time.monotonic() - started


def _one_line(stderr: str) -> str:
    """The error line; the only line on stderr apart from log records."""
    errors = [line for line in stderr.splitlines() if line.startswith("weather")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]


# --- the CLI: one line, exit status 1, traceback only with -v -----------------------------------
def test_closed_port_is_one_line_naming_the_endpoint(cfg) -> None:
    url = _closed_url()
    out, seconds = _weather("ingest", WEATHER_S3_ENDPOINT_URL=url, WEATHER_BUCKET=cfg.bucket,
                            WEATHER_S3_MAX_ATTEMPTS="2")
    assert out.returncode == 1
    line = _one_line(out.stderr)
    assert url in line and "cannot connect" in line and "WEATHER_S3_ENDPOINT_URL" in line
    assert f"s3://{cfg.bucket}/" in line
    assert seconds < 60

    verbose, _ = _weather("-v", "ingest", WEATHER_S3_ENDPOINT_URL=url,
                          WEATHER_BUCKET=cfg.bucket, WEATHER_S3_MAX_ATTEMPTS="2")
    assert verbose.returncode == 1
    assert "Traceback" in verbose.stderr and "EndpointConnectionError" in verbose.stderr
    assert "cannot connect" in verbose.stderr.splitlines()[-1]


def test_hung_endpoint_fails_after_the_read_timeout(hung: _Hung, cfg) -> None:
    out, seconds = _weather("ingest", WEATHER_S3_ENDPOINT_URL=hung.url, WEATHER_BUCKET=cfg.bucket,
                            WEATHER_S3_READ_TIMEOUT="1", WEATHER_S3_MAX_ATTEMPTS="2")
    assert out.returncode == 1
    line = _one_line(out.stderr)
    assert "no answer within 1 s" in line and "WEATHER_S3_READ_TIMEOUT" in line
    assert hung.url in line and "HeadBucket" in line
    assert seconds < 60  # 2 attempts of 1 s (+ backoff and start-up), not minutes


def test_missing_credentials_are_one_line(cfg, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        WEATHER_S3_ENDPOINT_URL=cfg.s3_endpoint_url, WEATHER_BUCKET=cfg.bucket,
        AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    out = subprocess.run([WEATHER, "ingest"], env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 1
    line = _one_line(out.stderr)
    assert "credentials" in line and "AWS_ACCESS_KEY_ID" in line


def test_access_denied_is_one_line_and_not_retried(denied: _Bodiless, cfg) -> None:
    out, seconds = _weather("ingest", WEATHER_S3_ENDPOINT_URL=denied.url,
                            WEATHER_BUCKET=cfg.bucket, WEATHER_S3_MAX_ATTEMPTS="5")
    assert out.returncode == 1
    line = _one_line(out.stderr)
    assert "access denied" in line and "credentials" in line
    assert denied.url in line and f"s3://{cfg.bucket}" in line
    assert len(denied.arrivals) == 1  # permanent: asking again cannot help


def test_empty_bucket_variable_is_a_configuration_error(cfg) -> None:
    out, _ = _weather("ingest", WEATHER_S3_ENDPOINT_URL=cfg.s3_endpoint_url, WEATHER_BUCKET="")
    assert out.returncode == 2
    assert "WEATHER_BUCKET" in _one_line(out.stderr)


def test_unreachable_mlflow_fails_in_seconds_naming_the_uri(tmp_path: Path) -> None:
    uri = _closed_url()
    image = tmp_path / "rain1.jpg"
    image.write_bytes(image_bytes("JPEG"))  # a valid photo: predict goes on to ask MLflow
    out, seconds = _weather("predict", str(image), WEATHER_MLFLOW_TRACKING_URI=uri)
    assert out.returncode == 1
    line = _one_line(out.stderr)
    assert uri in line and "cannot connect" in line and "WEATHER_MLFLOW_TRACKING_URI" in line
    assert seconds < 60  # MLflow's own defaults: about 250 s


def test_promote_with_mlflow_unreachable_names_the_server_not_a_missing_evaluation() -> None:
    uri = _closed_url()
    out, _ = _weather("promote", "0123abc", WEATHER_MLFLOW_TRACKING_URI=uri)
    assert out.returncode == 1
    line = _one_line(out.stderr)
    assert uri in line and "cannot connect" in line and "evaluation" not in line


# --- the mapping: transient or permanent --------------------------------------------------------
def test_server_gone_mid_run_is_transient_and_names_the_request(cfg, s3, s3_server) -> None:
    for i in range(12):
        s3.put_object(Bucket=cfg.bucket, Key=f"incoming/rain{i}.jpg", Body=b"x" * 10)
    proxy = FlakyProxy(int(s3_server.url.rsplit(":", 1)[1]))
    try:
        via_proxy = config.override(cfg, s3_endpoint_url=proxy.url, s3_max_attempts=2)
        proxy.die_after(4)
        with pytest.raises(StorageError) as caught, storage.s3_errors(via_proxy):
            ingest.ingest(via_proxy, storage.make_client(via_proxy))
    finally:
        proxy.close()
    error = caught.value
    assert error.transient
    assert proxy.url in str(error) and f"s3://{cfg.bucket}/" in str(error)
    assert "\n" not in str(error)


def test_missing_bucket_and_object_are_permanent(cfg, s3) -> None:
    with pytest.raises(StorageError, match="does not exist.*WEATHER_BUCKET") as bucket:
        with storage.s3_errors(cfg):
            s3.list_objects_v2(Bucket="no-such-bucket-here", Prefix="incoming/")
    assert not bucket.value.transient
    with pytest.raises(StorageError, match="no such object") as key:
        with storage.s3_errors(cfg):
            s3.get_object(Bucket=cfg.bucket, Key="curated/manifests/v000009.json")
    assert not key.value.transient
    assert "curated/manifests/v000009.json" in str(key.value)


def test_bodiless_503_backs_off_like_throttling(bodiless_503: _Bodiless, cfg) -> None:
    """botocore waits 50 ms x 2^i (jittered) after a 503 without a throttling code; here it
    waits like throttling, 1 s x 2^i: four waits of botocore's kind are at most 0.75 s in all."""
    five = config.override(cfg, s3_endpoint_url=bodiless_503.url, s3_max_attempts=5)
    with pytest.raises(StorageError, match="503") as caught, storage.s3_errors(five):
        storage.make_client(five).head_object(Bucket=cfg.bucket, Key="incoming/x.jpg")
    assert caught.value.transient
    arrivals = bodiless_503.arrivals
    assert len(arrivals) == 5
    assert arrivals[-1] - arrivals[0] > 0.75


@pytest.mark.parametrize("attempts", [1, 3])
def test_max_attempts_counts_the_first_attempt(cfg, s3_server, attempts: int) -> None:
    """WEATHER_S3_MAX_ATTEMPTS=n: n requests in all. n-1 throttled answers are retried away;
    n are not (an (n+1)th attempt would have reached the server and succeeded)."""
    s3 = storage.make_client(cfg)
    s3.put_object(Bucket=cfg.bucket, Key="incoming/rain1.jpg", Body=b"x")
    proxy = FlakyProxy(int(s3_server.url.rsplit(":", 1)[1]))
    try:
        via_proxy = config.override(cfg, s3_endpoint_url=proxy.url, s3_max_attempts=attempts)
        client = storage.make_client(via_proxy)
        if attempts > 1:
            proxy.fail_next(attempts - 1, status=503)
            client.head_object(Bucket=cfg.bucket, Key="incoming/rain1.jpg")
        proxy.fail_next(attempts, status=503)
        with pytest.raises(ClientError, match="503"):
            client.head_object(Bucket=cfg.bucket, Key="incoming/rain1.jpg")
        client.head_object(Bucket=cfg.bucket, Key="incoming/rain1.jpg")  # no failure left
    finally:
        proxy.close()


def test_an_unresolvable_host_is_permanent(cfg) -> None:
    """A host name that does not resolve is a bad setting: retrying only delays the message."""
    bad = config.override(cfg, s3_endpoint_url="http://no-such-host.invalid:9000",
                          s3_max_attempts=2)
    with pytest.raises(StorageError, match="cannot resolve.*WEATHER_S3_ENDPOINT_URL") as caught:
        with storage.s3_errors(bad):
            storage.make_client(bad).head_bucket(Bucket=cfg.bucket)
    assert not caught.value.transient
