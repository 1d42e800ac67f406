"""The S3 client every stage uses, and what its failures mean.

The client: bounded connection pool, connect/read timeouts from the config, botocore's
"standard" retries (throttling, 5xx and connection errors, with exponential backoff and
jitter) with two changes:

- ``s3_max_attempts`` is the number of attempts, the first included (botocore's
  ``total_max_attempts``; its ``max_attempts`` client option counts retries only);
- every retryable HTTP status backs off like throttling (base 1 s, doubling, capped at 20 s).
  botocore does that only for an error *code* it knows as throttling (``SlowDown``); a bodiless
  503 from a proxy or a load balancer would otherwise be retried ~50 ms apart and the request
  would give up within a second or two. Connection errors keep botocore's short base: the
  retries of a dead server are over quickly and the DAG's own retries wait longer.

The failures: :func:`storage_error` maps a botocore/urllib3 exception to a
:class:`StorageError` with one line saying what failed, where (endpoint, bucket, key) and what
to check, and whether it is transient. Entry points (the CLI's ``main``, each DAG task) wrap
their work in :func:`s3_errors`; library functions let botocore's exceptions through. Each
client notes the operation, bucket and key of every request in its error (an event hook), so
the mapping can name them wherever the call was made, worker threads included.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
import urllib3.exceptions
from botocore import exceptions as bex
from botocore.config import Config
from botocore.retries import quota, standard

from weather_tasks.config import PipelineConfig, PipelineError, env_name

if TYPE_CHECKING:  # the stubs (boto3-stubs[s3]) are a development dependency
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

_TARGET = "weather_target"  # request context key and exception attribute: the request's target
# HTTP statuses and error codes that may succeed later (throttling, server trouble).
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                              "InternalError", "ServiceUnavailable", "RequestLimitExceeded"})
_MAX_BACKOFF_S = 20.0  # botocore's cap on one wait
_NOT_FOUND_CODES = frozenset({"NoSuchBucket", "NoSuchKey", "404", "NotFound"})
_DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId",
                           "SignatureDoesNotMatch", "AllAccessDisabled", "ExpiredToken",
                           "InvalidToken"})


class StorageError(PipelineError):
    """An S3 request failed; the message names the endpoint, bucket and key and what to check."""


def make_client(cfg: PipelineConfig, session: boto3.session.Session | None = None) -> S3Client:
    """A boto3 S3 client for ``cfg``.

    Credentials come from ``session`` (in Airflow: the ``aws`` connection's boto3 session)
    or else from the standard AWS chain.
    """
    client = (session or boto3.session.Session()).client(
        "s3",
        endpoint_url=cfg.s3_endpoint_url,
        region_name=cfg.s3_region,
        config=Config(
            retries={"total_max_attempts": cfg.s3_max_attempts, "mode": "standard"},
            max_pool_connections=max(10, cfg.parallelism * 2),
            connect_timeout=cfg.s3_connect_timeout,
            read_timeout=cfg.s3_read_timeout,
        ),
    )
    _install_retries(client, cfg.s3_max_attempts)
    _note_targets(client)
    return client


def get_json(s3: S3Client, bucket: str, key: str) -> Any:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def put_json(s3: S3Client, bucket: str, key: str, value: Any) -> None:
    body = json.dumps(value, indent=1, sort_keys=True).encode()
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")


# --- failures -----------------------------------------------------------------------------------
@contextlib.contextmanager
def s3_errors(cfg: PipelineConfig) -> Iterator[None]:
    """Turn botocore/urllib3 failures raised inside into :class:`StorageError` (one line)."""
    try:
        yield
    except (bex.BotoCoreError, bex.ClientError) as exc:
        raise storage_error(exc, cfg) from exc


def storage_error(exc: BaseException, cfg: PipelineConfig) -> StorageError:
    """The :class:`StorageError` for a botocore exception (transient or not) raised for ``cfg``."""
    noted = getattr(exc, _TARGET, None)
    if noted is None and isinstance(exc, bex.ClientError):
        noted = exc.response.get(_TARGET)
    target: dict[str, Any] = noted if isinstance(noted, dict) else {}
    endpoint = target.get("endpoint") or cfg.s3_endpoint_url or "AWS S3"
    bucket = target.get("bucket") or cfg.bucket
    where = f"s3://{bucket}/{target.get('key') or ''}"
    op = f"{target['operation']} {where}" if target.get("operation") else where
    attempts = f"{cfg.s3_max_attempts} attempt{'s' if cfg.s3_max_attempts > 1 else ''}"
    endpoint_var = env_name("s3_endpoint_url")

    def error(message: str, transient: bool) -> StorageError:
        return StorageError(f"S3 {op} at {endpoint}: {message}", transient=transient)

    if isinstance(exc, bex.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS:
            answer = f"{status} {code}" if code and code != str(status) else str(status)
            return error(f"the server answered {answer} ({attempts}); the server is "
                         f"overloaded or unwell, try again later or raise "
                         f"{env_name('s3_max_attempts')}", True)
        if code in _DENIED_CODES or status == 403:
            return error(f"access denied ({code or status}): check the credentials "
                         "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the AWS profile or the "
                         f"Airflow connection) and their rights on bucket {bucket!r}", False)
        if code == "NoSuchBucket" or (code in _NOT_FOUND_CODES and not target.get("key")):
            return error(f"bucket {bucket!r} does not exist: check {env_name('bucket')} and "
                         f"{endpoint_var}, or create the bucket", False)
        if code in _NOT_FOUND_CODES:
            return error("no such object", False)
        return error(f"the server refused the request: {status} {code} "
                     f"{err.get('Message', '')}".rstrip()
                     + f" (is {endpoint_var} an S3 endpoint?)", False)
    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
        return error(f"no usable S3 credentials ({exc}): set AWS_ACCESS_KEY_ID and "
                     "AWS_SECRET_ACCESS_KEY or an AWS profile (in Airflow: the connection "
                     "weather_s3)", False)
    if isinstance(exc, bex.ConnectTimeoutError):
        return error(f"no connection within {cfg.s3_connect_timeout:g} s "
                     f"({env_name('s3_connect_timeout')}), {attempts}: is the host up and "
                     f"{endpoint_var} right?", True)
    if isinstance(exc, bex.ReadTimeoutError):
        return error(f"connected, but no answer within {cfg.s3_read_timeout:g} s "
                     f"({env_name('s3_read_timeout')}), {attempts}: the server is hung or "
                     "overloaded", True)
    if isinstance(exc, bex.SSLError):
        return error(f"TLS failed ({exc}): check {endpoint_var} (http or https?) and the "
                     "certificate", False)
    if isinstance(exc, bex.EndpointConnectionError):
        # A name that does not resolve is a bad setting, not an outage worth retrying.
        if isinstance(exc.kwargs.get("error"), urllib3.exceptions.NameResolutionError):
            return error(f"cannot resolve the host name: check {endpoint_var}", False)
        return error(f"cannot connect ({attempts}; connection refused): is the S3 server "
                     f"running and {endpoint_var} right?", True)
    if isinstance(exc, bex.ConnectionClosedError | bex.ResponseStreamingError
                  | bex.IncompleteReadError | bex.HTTPClientError | bex.ConnectionError):
        return error(f"the connection was dropped ({attempts}): the S3 server went away or "
                     "restarted; try again", True)
    return error(f"{type(exc).__name__}: {exc}", False)


# --- the client's hooks -------------------------------------------------------------------------
def _note_targets(client: Any) -> None:
    """Remember each request's operation, bucket and key, and attach them to its failure."""
    endpoint = client.meta.endpoint_url
    events = client.meta.events

    def note(params: dict[str, Any], context: dict[str, Any], model: Any = None,
             **_: Any) -> None:
        context[_TARGET] = {
            "operation": getattr(model, "name", None),
            "bucket": params.get("Bucket"),
            "key": params.get("Key") or params.get("Prefix"),
            "endpoint": endpoint,
        }

    def attach(exception: BaseException, context: dict[str, Any], **_: Any) -> None:
        # Connection errors, timeouts, missing credentials: raised inside the request.
        with contextlib.suppress(AttributeError):
            setattr(exception, _TARGET, context.get(_TARGET))

    def attach_to_response(parsed: dict[str, Any], context: dict[str, Any],
                           http_response: Any, **_: Any) -> None:
        # An HTTP error becomes a ClientError after this hook, built from ``parsed``: the
        # mapping finds the target in its ``response``.
        if http_response is not None and http_response.status_code >= 300:
            parsed[_TARGET] = context.get(_TARGET)

    events.register("provide-client-params.s3", note)
    events.register("after-call-error.s3", attach)
    events.register("after-call.s3", attach_to_response)
    events.register_first("needs-retry.s3", _log_retry)


def _log_retry(request_dict: dict[str, Any], attempts: int, response: Any = None,
               caught_exception: BaseException | None = None, **_: Any) -> None:
    """Say what is being waited for while botocore retries (it logs only at DEBUG)."""
    if caught_exception is None and (response is None or response[0].status_code < 300):
        return
    target = request_dict.get("context", {}).get(_TARGET) or {}
    what = caught_exception.__class__.__name__ if caught_exception else response[0].status_code
    # Timeouts are the long silent waits worth announcing; the other retries (refused or
    # dropped connections, 5xx) are quick and, in a parallel stage, many.
    slow = isinstance(caught_exception, bex.ConnectTimeoutError | bex.ReadTimeoutError)
    log.log(logging.INFO if slow else logging.DEBUG, "S3 %s s3://%s/%s: attempt %d failed (%s)",
            target.get("operation"), target.get("bucket"), target.get("key") or "", attempts,
            what)


class _Backoff(standard.ExponentialBackoff):
    """botocore's backoff, with the throttling base (1 s) for every retryable HTTP status."""

    def delay_amount(self, context: Any) -> float:
        response = context.http_response
        if response is None or response.status_code < 400:  # connection errors: botocore's
            return float(super().delay_amount(context))
        return random.random() * min(2.0 ** (context.attempt_number - 1), _MAX_BACKOFF_S)


def _install_retries(client: Any, total_attempts: int) -> None:
    """Replace the client's standard retry handler by the same one with :class:`_Backoff`."""
    name = client.meta.service_model.service_id.hyphenize()
    events = client.meta.events
    events.unregister(f"needs-retry.{name}", unique_id=f"retry-config-{name}")
    adapter = standard.RetryEventAdapter()
    throttling = standard.ThrottlingErrorDetector(adapter)
    retry_quota = standard.RetryQuotaChecker(quota.RetryQuota(), throttling)
    handler = standard.RetryHandler(
        retry_policy=standard.RetryPolicy(
            retry_checker=standard.StandardRetryConditions(max_attempts=total_attempts),
            retry_backoff=_Backoff(service_name=name, throttling_detector=throttling),
        ),
        retry_event_adapter=adapter,
        retry_quota=retry_quota,  # type: ignore[arg-type]  # the stubs predate RetryQuotaChecker
        service_name=name,
    )
    events.register(f"after-call.{name}", retry_quota.release_retry_quota)
    events.register(f"needs-retry.{name}", handler.needs_retry, unique_id=f"retry-config-{name}")
