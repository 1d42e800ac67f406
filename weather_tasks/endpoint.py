"""The serving endpoint: an HTTP app that serves ``models:/<name>@champion`` and follows the alias.

``weather serve`` runs it (uvicorn; 127.0.0.1 unless ``--host`` says otherwise). At start the
alias is read and its version loaded; MLflow unreachable or a version that does not load is a
one-line error. With no champion yet (a new deployment, before the first night) it starts
anyway and answers 503, ``/ping`` included, until the poller finds one. A poller
reads the alias every ``serve_poll_seconds``; when it names another version, that version is
loaded *beside* the one serving, then swapped in by one reference assignment. A request takes
the served model once, at its start, so it finishes on the model it started with; a version
that fails to load, or a poll that cannot reach MLflow, is logged and retried at the next poll
while the old version keeps answering: a swap never fails a request.

Protocol (MLflow's scoring server's JSON, for the pyfunc of :mod:`weather_tasks.serving_model`):
``POST /invocations`` with ``dataframe_split``, ``dataframe_records``, ``inputs`` or
``instances`` holding one column ``image`` (base64 text, or TF serving's ``{"b64": ...}``);
answer ``{"predictions": [...], "model_version": "3"}`` and header ``X-Model-Version``. The
request is parsed here, not by MLflow against the version's signature: older versions' signatures
still list a ``path`` column, and the server must never read a file a client names, so any
column but ``image`` is refused (400) whatever version serves. A bad image is that row's
``error``/``error_code`` (200); a malformed or empty request 400; a body over
``serve_max_request_bytes`` 413, refused from its Content-Length or as soon as the streamed
body passes the limit. ``GET /ping``, ``GET /version``, ``GET /metrics`` (Prometheus text, the
app's own registry).

Prediction log: with probability ``serve_log_sample`` a request's rows are recorded (time,
version, per row: the image's sha256, label, probabilities, error code; never the image) and
written in batches as JSON lines under ``<predictions_prefix><YYYY-MM-DD>/<host>-<time>-<n>.jsonl``
in the bucket, for later drift checks. An S3 failure there is logged; it never fails a request.

The pure parts (:func:`parse_invocation`, :func:`sampled`, :func:`prediction_record`,
:func:`log_key`) take values and return values; the app, the poller and the log are the shell.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# At module level, not in create_app: FastAPI resolves the handlers' (string) annotations in
# this module's namespace, and an unresolved ``Request`` would become a query parameter.
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from weather_tasks import serving, tracking
from weather_tasks.config import PipelineConfig

log = logging.getLogger(__name__)

INPUT_COLUMN = "image"
FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")
# Keys MLflow's scoring server also takes beside the data (the model ignores its params).
_IGNORED_KEYS = ("params",)
# The model's per-row code for a value that is not bytes (serving_model.NOT_BYTES); given here
# to rows that never reach the model (a number, a list, text that is not base64).
NOT_BYTES = "not_bytes"
VERSION_HEADER = "X-Model-Version"
# Prediction log batches: written when this many records wait, or this often, and at shutdown.
LOG_BATCH_RECORDS = 100
LOG_FLUSH_SECONDS = 60.0
# Records kept for another try while S3 fails: bounded, the log is a sample anyway.
_LOG_MAX_PENDING = 10 * LOG_BATCH_RECORDS


class RequestError(Exception):
    """A request the endpoint refuses as a whole: an HTTP status and a reason for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --- the pure core ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ParsedRequest:
    """One request's rows: ``images[i]`` bytes (None: null, the model says ``empty``) unless
    ``errors[i]`` says why row i is no image at all (it never reaches the model)."""

    images: tuple[bytes | None, ...]
    errors: tuple[str | None, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"rows": len(self.images), "row_errors": sum(1 for e in self.errors if e)}


def parse_invocation(body: bytes, content_type: str | None) -> ParsedRequest:
    """The rows of an ``/invocations`` body, or a :class:`RequestError` (400, 415) saying why not.

    MLflow's JSON formats with exactly the one column ``image``; any other column (``path``
    above all) is refused, never dropped: a client must learn that its request was not served.
    """
    mime, _, params = (content_type or "").partition(";")
    if mime.strip().lower() != "application/json":
        raise RequestError(415, f"content type must be application/json, got {content_type!r}")
    if "charset" in params.lower() and "utf-8" not in params.lower():
        raise RequestError(415, "only UTF-8 JSON is accepted")
    if not body.strip():
        raise RequestError(400, "empty request body: send JSON with one of " + ", ".join(FORMATS))
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise RequestError(400, f"expected a JSON object, got {type(payload).__name__}")
    formats = [k for k in payload if k in FORMATS]
    if len(formats) != 1:
        raise RequestError(400, f"expected exactly one of {', '.join(FORMATS)}; got keys "
                           f"{sorted(payload)}")
    unknown = sorted(k for k in payload if k not in FORMATS and k not in _IGNORED_KEYS)
    if unknown:
        raise RequestError(400, f"unexpected keys {unknown} beside {formats[0]!r}")
    values = _column_values(formats[0], payload[formats[0]])
    rows = [_row(v) for v in values]
    return ParsedRequest(tuple(r[0] for r in rows), tuple(r[1] for r in rows))


def _refuse_columns(columns: Sequence[Any]) -> None:
    if [str(c) for c in columns] != [INPUT_COLUMN]:
        raise RequestError(400, f"expected one column {INPUT_COLUMN!r} (image bytes as base64; "
                           f"the server reads no files), got columns {list(columns)}")


def _column_values(fmt: str, data: Any) -> list[Any]:
    """The ``image`` values of one format's data, in order."""
    if fmt == "dataframe_split":
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise RequestError(400, "dataframe_split must be an object with 'columns' and "
                               "'data' (a list of rows)")
        extra = sorted(set(data) - {"columns", "data", "index"})
        if extra:
            raise RequestError(400, f"unexpected keys {extra} in dataframe_split")
        _refuse_columns(data.get("columns") or [])
        out = []
        for row in data["data"]:
            if not isinstance(row, list) or len(row) != 1:
                raise RequestError(400, f"each dataframe_split row must be a list of one value "
                                   f"({INPUT_COLUMN}), got {_short(row)}")
            out.append(row[0])
        return out
    if fmt == "dataframe_records":
        return _records(fmt, data)
    # inputs / instances: columnar ({"image": [...]}) or records ([{"image": ...}, ...]).
    if isinstance(data, dict):
        _refuse_columns(list(data))
        column = data[INPUT_COLUMN]
        return list(column) if isinstance(column, list) else [column]
    return _records(fmt, data)


def _records(fmt: str, data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise RequestError(400, f"{fmt} must be a list of objects {{{INPUT_COLUMN!r}: ...}}")
    out = []
    for record in data:
        if not isinstance(record, dict):
            raise RequestError(400, f"each {fmt} record must be an object "
                               f"{{{INPUT_COLUMN!r}: ...}}, got {_short(record)}")
        _refuse_columns(list(record))
        out.append(record[INPUT_COLUMN])
    return out


def _row(value: Any) -> tuple[bytes | None, str | None]:
    """One value as image bytes, None (null: the model reports ``empty``) or the reason it is
    no image (``not_bytes``), decoded as the model decodes base64 text."""
    if value is None:
        return None, None
    if isinstance(value, dict) and list(value) == ["b64"]:  # TF serving's binary value
        value = value["b64"]
    if not isinstance(value, str):
        return None, f"'image' must be base64 text, got {type(value).__name__}"
    try:
        return base64.b64decode(value, validate=False), None
    except (binascii.Error, ValueError) as exc:
        return None, f"'image' is text but not base64: {exc}"


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def sampled(rate: float, draw: Callable[[], float] = random.random) -> bool:
    """Whether this request goes to the prediction log: never at 0, always at 1."""
    return rate >= 1.0 or (rate > 0.0 and draw() < rate)


def prediction_record(
    when: dt.datetime, version: str, images: Sequence[bytes | None], rows: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """One request in the prediction log: never the image, only its sha256 (null: no bytes)."""
    out = []
    for image, row in zip(images, rows, strict=True):
        probs = {k.removeprefix("prob_"): v for k, v in row.items() if k.startswith("prob_")}
        out.append({
            "sha256": hashlib.sha256(image).hexdigest() if image else None,
            "label": row.get("label"),
            "probabilities": None if row.get("error_code") or row.get("error") else probs,
            "error_code": row.get("error_code"),
        })
    return {"time": when.astimezone(dt.UTC).isoformat(timespec="milliseconds"),
            "model_version": version, "rows": out}


def log_key(prefix: str, when: dt.datetime, host: str, n: int) -> str:
    """``<prefix><YYYY-MM-DD>/<host>-<time>-<n>.jsonl`` (UTC): one object per batch, never
    overwritten (host and a per-process counter keep names apart)."""
    utc = when.astimezone(dt.UTC)
    safe_host = "".join(c if c.isalnum() or c in "-." else "_" for c in host) or "host"
    return f"{prefix}{utc:%Y-%m-%d}/{safe_host}-{utc:%Y%m%dT%H%M%S}-{n:06d}.jsonl"


# --- the model being served -------------------------------------------------------------------
@dataclass(frozen=True)
class Served:
    """The loaded model of one version; requests hold it for their whole life."""

    name: str
    version: str
    model: Any
    loaded_at: str
    # Keras models are called from one thread at a time; the next version has its own lock, so
    # a swap never waits for the old one's requests.
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, compare=False)

    def predict(self, parsed: ParsedRequest) -> list[dict[str, Any]]:
        """One output row per request row: label, prob_<class>..., error, error_code."""
        import pandas as pd

        sent = [i for i, e in enumerate(parsed.errors) if e is None]
        frame = pd.DataFrame({INPUT_COLUMN: pd.Series([parsed.images[i] for i in sent],
                                                      dtype=object)})
        with self.lock:
            out = self.model.predict(frame)
        columns = [str(c) for c in out.columns]
        if "error_code" not in columns:  # a model logged before error codes existed
            columns.append("error_code")
        answered = iter(out.astype(object).where(out.notna(), None).to_dict("records"))
        rows = []
        for error in parsed.errors:
            if error is None:
                row = next(answered)
                rows.append({c: row.get(c) for c in columns})
            else:
                rows.append({**dict.fromkeys(columns), "error": error, "error_code": NOT_BYTES})
        return rows


@dataclass(frozen=True)
class EndpointStatus:
    registered_model: str
    version: str | None  # None: no champion yet
    loaded_at: str | None
    last_poll: str | None
    last_poll_error: str | None
    swaps: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        if self.version is None:
            return (f"served nothing: no version of {self.registered_model} had "
                    f"@{tracking.CHAMPION}")
        return (f"served models:/{self.registered_model}/{self.version} (@{tracking.CHAMPION}); "
                f"{self.swaps} swap(s)")


class Endpoint:
    """The served model, the alias poller, the metrics and the prediction log of one app."""

    def __init__(self, cfg: PipelineConfig, s3: Any = None,
                 loader: Callable[[str, PipelineConfig], Any] = serving.load_model) -> None:
        self.cfg = cfg
        self._loader = loader
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.last_poll: str | None = None
        self.last_poll_error: str | None = None
        self.swaps = 0
        self.metrics = Metrics()
        self.prediction_log = PredictionLog(cfg, s3) if cfg.serve_log_sample > 0 else None
        self.served: Served | None = None  # None until there is a champion
        version = self._champion_version()
        if version is None:
            log.warning("%s; answering 503 until there is one (checked every %g s)",
                        self._no_champion(), cfg.serve_poll_seconds)
        else:
            self.served = self._load(version)
            self.metrics.set_version(version)

    # -- the alias ------------------------------------------------------------------------------
    def _champion_version(self) -> str | None:
        name = self.cfg.registered_model
        with tracking.mlflow_errors(self.cfg):
            return tracking.alias_version(tracking.client(self.cfg), name, tracking.CHAMPION)

    def _no_champion(self) -> str:
        return (f"no version of {self.cfg.registered_model!r} has alias @{tracking.CHAMPION} on "
                f"{self.cfg.mlflow_tracking_uri}")

    def _load(self, version: str) -> Served:
        uri = tracking.version_uri(self.cfg.registered_model, version)
        started = time.monotonic()
        with tracking.mlflow_errors(self.cfg):
            model = self._loader(uri, self.cfg)
        log.info("loaded %s in %.1f s", uri, time.monotonic() - started)
        return Served(self.cfg.registered_model, version, model, _now().isoformat())

    def poll_once(self) -> bool:
        """Check the alias; load and swap in a new champion (or the first one). True when it
        swapped. Every failure is logged and left for the next poll: the served model, if any,
        keeps answering."""
        self.last_poll = _now().isoformat()
        old = self.served
        serving = f"still serving version {old.version}" if old else "nothing served yet"
        try:
            version = self._champion_version()
            error = f"{self._no_champion()} any more" if version is None and old else None
        except Exception as exc:  # noqa: BLE001 - unreachable MLflow: keep serving
            version, error = None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self.last_poll_error = error
        if error is not None:
            self.metrics.poll_failures.inc()
            log.warning("champion poll failed (%s): %s", serving, error)
            return False
        if version is None or (old is not None and version == old.version):
            return False
        try:
            new = self._load(version)  # beside the served one, which keeps answering
        except Exception as exc:  # noqa: BLE001 - a broken version must not stop serving
            self.metrics.load_failures.inc()
            log.warning("cannot load version %s (%s; retried next poll): %s",
                        version, serving, exc)
            return False
        self.served = new  # one assignment: requests see old or new, whole
        if old is not None:
            self.swaps += 1
            self.metrics.swaps.inc()
        self.metrics.set_version(new.version)
        log.info("now serving version %s (was %s)", new.version, old.version if old else "none")
        return True

    def start(self) -> None:
        """Start the poller (and the prediction log's writer)."""
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll_loop, name="champion-poller",
                                            daemon=True)
            self._poller.start()
        if self.prediction_log is not None:
            self.prediction_log.start()

    def stop(self) -> None:
        """Stop polling and write the prediction log's last batch."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=30)
        if self.prediction_log is not None:
            self.prediction_log.stop()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.cfg.serve_poll_seconds):
            self.poll_once()

    def status(self) -> EndpointStatus:
        served = self.served
        return EndpointStatus(self.cfg.registered_model, served.version if served else None,
                              served.loaded_at if served else None, self.last_poll,
                              self.last_poll_error, self.swaps)

    # -- one request ----------------------------------------------------------------------------
    def invoke(self, body: bytes, content_type: str | None) -> tuple[str, list[dict[str, Any]]]:
        """The version that answered and its rows; :class:`RequestError` for a refused request."""
        served = self.served  # once: a swap during this request does not change its model
        if served is None:
            raise RequestError(503, f"no model to serve yet: {self._no_champion()}")
        parsed = parse_invocation(body, content_type)
        rows = served.predict(parsed)
        for row in rows:
            self.metrics.rows.labels(error_code=row.get("error_code") or "none").inc()
        if self.prediction_log is not None and sampled(self.cfg.serve_log_sample):
            self.prediction_log.add(prediction_record(_now(), served.version, parsed.images,
                                                      rows))
        return served.version, rows


class Metrics:
    """Prometheus metrics in the app's own registry (never the process's global one)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("weather_endpoint_requests", "HTTP requests to /invocations by "
                                "status code", ["code"], registry=self.registry)
        self.rows = Counter("weather_endpoint_rows", "rows answered by error code (none: a "
                            "label)", ["error_code"], registry=self.registry)
        self.latency = Histogram("weather_endpoint_request_seconds", "/invocations latency",
                                 registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.swaps = Counter("weather_endpoint_model_swaps", "champion versions swapped in",
                             registry=self.registry)
        self.poll_failures = Counter("weather_endpoint_poll_failures", "alias polls that failed "
                                     "(MLflow unreachable)", registry=self.registry)
        self.load_failures = Counter("weather_endpoint_load_failures", "new versions that "
                                     "failed to load (retried next poll)", registry=self.registry)
        self.version = Gauge("weather_endpoint_model_version", "the registered model version "
                             "being served", registry=self.registry)

    def set_version(self, version: str) -> None:
        try:
            self.version.set(float(version))
        except ValueError:  # registry versions are integers; never fail over a metric
            pass

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class PredictionLog:
    """Sampled prediction records, written to the bucket in batches by a background thread."""

    def __init__(self, cfg: PipelineConfig, s3: Any, host: str | None = None) -> None:
        self.cfg = cfg
        self._s3 = s3
        self.host = host or socket.gethostname()
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._n = 0
        self.written: list[str] = []

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._pending.append(record)
            if len(self._pending) >= LOG_BATCH_RECORDS:
                self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="prediction-log", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.flush()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(LOG_FLUSH_SECONDS)
            self._wake.clear()
            self.flush()

    def flush(self) -> str | None:
        """Write what is pending as one object; its key, or None (nothing, or S3 failed: logged,
        and the records kept for the next try up to a bound)."""
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return None
        if self._s3 is None:
            from weather_tasks import storage

            self._s3 = storage.make_client(self.cfg)
        self._n += 1
        key = log_key(self.cfg.predictions_prefix, _now(), self.host, self._n)
        body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in batch).encode()
        try:
            self._s3.put_object(Bucket=self.cfg.bucket, Key=key, Body=body,
                                ContentType="application/x-ndjson")
        except Exception as exc:  # noqa: BLE001 - the log must never fail serving
            with self._lock:
                kept = (batch + self._pending)[-_LOG_MAX_PENDING:]
                self._pending = kept
            log.warning("prediction log: cannot write s3://%s/%s (%d records kept): %s",
                        self.cfg.bucket, key, len(kept), exc)
            return None
        self.written.append(key)
        return key


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- the HTTP app -----------------------------------------------------------------------------
def create_app(endpoint: Endpoint) -> FastAPI:
    """The FastAPI app over ``endpoint``; its lifespan starts the poller and flushes the log."""
    import contextlib

    from starlette.concurrency import run_in_threadpool

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        endpoint.start()
        try:
            yield
        finally:
            await run_in_threadpool(endpoint.stop)

    app = FastAPI(title="weather classifier", lifespan=lifespan)
    limit = endpoint.cfg.serve_max_request_bytes
    metrics = endpoint.metrics

    def refused(status: int, reason: str) -> JSONResponse:
        metrics.requests.labels(code=str(status)).inc()
        return JSONResponse({"error": reason}, status_code=status)

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        started = time.monotonic()
        try:
            declared = int(request.headers.get("content-length") or 0)
        except ValueError:
            return refused(400, "invalid Content-Length")
        if declared > limit:
            return refused(413, f"request body of {declared} bytes > {limit} "
                           "(serve_max_request_bytes)")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # chunked or lying about its length: stop reading here
                return refused(413, f"request body over {limit} bytes (serve_max_request_bytes)")
            chunks.append(chunk)
        try:
            version, rows = await run_in_threadpool(
                endpoint.invoke, b"".join(chunks), request.headers.get("content-type")
            )
        except RequestError as exc:
            return refused(exc.status, exc.reason)
        except Exception as exc:  # a model failure: 500, logged; the server keeps serving
            log.exception("prediction failed")
            return refused(500, f"prediction failed: {type(exc).__name__}")
        metrics.requests.labels(code="200").inc()
        metrics.latency.observe(time.monotonic() - started)
        return JSONResponse({"predictions": rows, "model_version": version},
                            headers={VERSION_HEADER: version})

    @app.get("/ping")
    async def ping() -> Response:
        """200 once a model is served (ready), 503 before the first champion."""
        if endpoint.served is None:
            return Response("no model to serve yet\n", status_code=503, media_type="text/plain")
        return Response("\n", status_code=200, media_type="text/plain")

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse(endpoint.status().as_dict())

    @app.get("/metrics")
    async def metrics_text() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(cfg: PipelineConfig, host: str = "127.0.0.1", port: int = 8080) -> EndpointStatus:
    """Load the champion (or wait for one) and serve it until interrupted; what was served at
    the end."""
    import uvicorn

    endpoint = Endpoint(cfg)
    log.info("serving models:/%s@%s (version %s) on http://%s:%d", cfg.registered_model,
             tracking.CHAMPION, endpoint.served.version if endpoint.served else "none yet",
             host, port)
    uvicorn.run(create_app(endpoint), host=host, port=port, log_level="warning")
    return endpoint.status()
