"""A lease on S3: one small object that one holder at a time owns, until it expires.

The MLflow registry has no compare-and-set on aliases: two promotions that each re-read the
champion can both see the old one and both move it. So promotions and rollbacks (the DAG's
promote task, ``weather promote``, ``weather rollback``) hold a lease around "read the champion,
register, move the aliases" (:mod:`weather_tasks.registry`), and S3's conditional writes make
taking it atomic:

- acquire: ``PutObject`` with ``If-None-Match: *``; of several writers exactly one creates the
  object, the others get 412 and read it;
- a holder that died (a killed task, a lost host) leaves its object behind; once the object is
  older than the expiry it declares, it is taken over with ``PutObject`` ``If-Match: <the ETag
  read>``, so of two contenders only one replaces it (the other gets 412 and reads again);
- otherwise wait, with backoff, up to ``lease_wait`` seconds, then raise :class:`LeaseError`
  (transient: another promotion is in progress);
- release: ``DeleteObject`` with ``If-Match: <our ETag>``: a lease taken over after ours
  expired is never deleted by us.

Age is measured on the S3 server's clock (the object's Last-Modified against the Date of the
answer that read it), so clock skew between workers does not matter; the ``acquired_at`` and
``expires_at`` in the body are the holder's clock, for people. Each body carries a random
token: ETags are MD5s of the body, and two holders must never write the same one; a retried
``PutObject`` whose first attempt did land finds its own token and holds the lease.

``lease_expiry`` must exceed the longest promotion (MLflow's retries times its timeout). A
holder still working after that may lose the lease; the registry's champion re-read right
before the alias move is then the last guard.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from botocore import exceptions as bex

from weather_tasks.config import PipelineConfig, PipelineError, env_name
from weather_tasks.storage import storage_error

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

_FIRST_WAIT_S = 0.2  # between reads of a held lease: doubling up to _MAX_WAIT_S
_MAX_WAIT_S = 5.0
_PRECONDITION_FAILED = frozenset({"PreconditionFailed", "412"})
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})


class LeaseError(PipelineError):
    """The lease is held by someone else for longer than ``lease_wait`` (transient)."""


@dataclass(frozen=True)
class Lease:
    """A lease this process holds: its object and the ETag of the body it wrote."""

    bucket: str
    key: str
    owner: str
    token: str
    etag: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class _Found:
    """A lease object as read, its expiry on the server's clock."""

    owner: str
    token: str
    etag: str
    expires_at: datetime
    expired: bool


def owner_name(airflow_run_id: str | None = None) -> str:
    """Who holds a lease: host, process id and the Airflow run (``cli`` outside Airflow)."""
    return f"{socket.gethostname()}:{os.getpid()}:{airflow_run_id or 'cli'}"


def lease_key(cfg: PipelineConfig, name: str) -> str:
    return f"{cfg.locks_prefix}{name}.json"


@contextlib.contextmanager
def hold(cfg: PipelineConfig, s3: S3Client, name: str, owner: str) -> Iterator[Lease]:
    """Hold the lease ``name`` for the body of the ``with``; see :func:`acquire`."""
    lease = acquire(cfg, s3, name, owner)
    try:
        yield lease
    finally:
        release(cfg, s3, lease)


def acquire(cfg: PipelineConfig, s3: S3Client, name: str, owner: str) -> Lease:
    """Take the lease ``name``: create it, take it over once expired, or wait for it.

    Raises :class:`LeaseError` when another owner still holds it after ``lease_wait`` seconds.
    """
    key = lease_key(cfg, name)
    token = uuid.uuid4().hex
    deadline = time.monotonic() + cfg.lease_wait
    wait = _FIRST_WAIT_S
    expired_etag: str | None = None  # the expired lease to replace, else create
    while True:
        try:
            etag = _put(s3, cfg, key, owner, token, expired_etag)
            return Lease(cfg.bucket, key, owner, token, etag)
        except bex.ClientError as exc:
            # 412: someone holds it (or took the expired one over first); 404: the expired
            # one was released meanwhile. Either way: read what is there now.
            if _code(exc) not in _PRECONDITION_FAILED | _NOT_FOUND:
                raise
        found = _read(s3, cfg.bucket, key)
        expired_etag = None
        if found is None:
            continue
        if found.token == token:  # our put landed; a retry of it got the 412
            return Lease(cfg.bucket, key, owner, token, found.etag)
        if found.expired:
            log.warning(
                "lease s3://%s/%s of %s expired at %s: taking it over",
                cfg.bucket,
                key,
                found.owner,
                found.expires_at.isoformat(timespec="seconds"),
            )
            expired_etag = found.etag
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            raise LeaseError(
                f"lease s3://{cfg.bucket}/{key} at {cfg.s3_endpoint_url or 'AWS S3'} is held "
                f"by {found.owner} until {found.expires_at.isoformat(timespec='seconds')} "
                f"(another promotion or rollback is in progress); waited {cfg.lease_wait:g} s "
                f"({env_name('lease_wait')}): try again later",
                transient=True,
            )
        log.info("lease s3://%s/%s is held by %s; waiting", cfg.bucket, key, found.owner)
        time.sleep(min(wait, left))
        wait = min(wait * 2, _MAX_WAIT_S)


def release(cfg: PipelineConfig, s3: S3Client, lease: Lease) -> None:
    """Delete the lease object if it still is ours (``If-Match`` on our ETag).

    Never raises: the work under the lease is done (or has its own error to report), and a
    lease that cannot be deleted expires on its own.
    """
    try:
        s3.delete_object(Bucket=lease.bucket, Key=lease.key, IfMatch=lease.etag)
    except (bex.ClientError, bex.BotoCoreError) as exc:
        if isinstance(exc, bex.ClientError) and _code(exc) in _PRECONDITION_FAILED | _NOT_FOUND:
            log.warning("lease %s was taken over after it expired; left to its holder", lease.uri)
        else:
            log.warning(
                "lease %s not released (it expires within %g s): %s",
                lease.uri,
                cfg.lease_expiry,
                storage_error(exc, cfg),
            )


def _put(
    s3: S3Client, cfg: PipelineConfig, key: str, owner: str, token: str, replace_etag: str | None
) -> str:
    """Write our lease body: create it, or replace exactly the object ``replace_etag``."""
    now = datetime.now(UTC)
    body = json.dumps(
        {
            "owner": owner,
            "token": token,
            "acquired_at": now.isoformat(timespec="seconds"),
            "expires_at": (now + timedelta(seconds=cfg.lease_expiry)).isoformat(timespec="seconds"),
            "expiry_s": cfg.lease_expiry,
        }
    ).encode()
    if replace_etag is None:
        put = s3.put_object(
            Bucket=cfg.bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*"
        )
    else:
        put = s3.put_object(
            Bucket=cfg.bucket,
            Key=key,
            Body=body,
            ContentType="application/json",
            IfMatch=replace_etag,
        )
    return put["ETag"]


def _read(s3: S3Client, bucket: str, key: str) -> _Found | None:
    """The lease object now, or None if there is none."""
    try:
        got = s3.get_object(Bucket=bucket, Key=key)
    except bex.ClientError as exc:
        if _code(exc) in _NOT_FOUND:
            return None
        raise
    data = json.loads(got["Body"].read())
    server_now = parsedate_to_datetime(got["ResponseMetadata"]["HTTPHeaders"]["date"])
    expires_at = got["LastModified"] + timedelta(seconds=float(data["expiry_s"]))
    return _Found(
        data["owner"], data["token"], got["ETag"], expires_at, expired=server_now >= expires_at
    )


def _code(exc: bex.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
