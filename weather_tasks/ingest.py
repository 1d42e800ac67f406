"""Incremental ingest: ``incoming/`` -> validated, labelled, split ``curated/`` + a new manifest.

One run:
1. read the latest manifest (its ledger says which key+ETag pairs were already seen);
2. list ``incoming/`` (paginated) and keep only objects not seen with that ETag;
3. label by file name, then download, hash, validate and store each new object in
   parallel (bounded; botocore retries throttling, 5xx and connection errors with backoff);
4. merge the outcomes in key order: new content is accepted, known content is a
   duplicate, the same content under two labels is quarantined, and so is anything invalid;
5. assign splits to the accepted images, write quarantine records, and last of all write
   the new manifest version. Any S3 failure before that point fails the run with no new
   manifest, and the next run sees everything as new again (content addressing makes the
   already-stored images harmless). ``incoming/`` is only ever read.

Object keys are never used as local paths: nothing is written to local disk at all.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ResponseStreamingError

from weather_tasks import manifest as mf
from weather_tasks import split as sp
from weather_tasks.config import PipelineConfig, PipelineError
from weather_tasks.label import label_for_key
from weather_tasks.manifest import ImageRecord, Manifest, ManifestError, ObjectRecord
from weather_tasks.storage import put_json
from weather_tasks.validate import Rejected, ValidImage, validate_image

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


class IngestError(PipelineError):
    """The run cannot proceed (missing bucket, unreadable manifest); nothing was written."""


@dataclass(frozen=True)
class IngestReport:
    listed: int
    new: int
    accepted: int
    duplicate: int
    quarantined: dict[str, int]
    manifest_version: str | None
    previous_version: str | None
    manifest_uri: str | None
    images_total: int
    split_counts: dict[str, dict[str, int]]
    split_method: str  # bulk (split-folders) | incremental | none
    seconds: float
    warnings: tuple[str, ...] = ()

    @property
    def has_new_images(self) -> bool:
        return self.accepted > 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "listed": self.listed,
            "new": self.new,
            "accepted": self.accepted,
            "duplicate": self.duplicate,
            "quarantined": dict(self.quarantined),
            "quarantined_total": sum(self.quarantined.values()),
            "manifest_version": self.manifest_version,
            "previous_version": self.previous_version,
            "manifest_uri": self.manifest_uri,
            "images_total": self.images_total,
            "split_counts": self.split_counts,
            "split_method": self.split_method,
            "seconds": round(self.seconds, 3),
            "warnings": list(self.warnings),
        }

    def summary(self) -> str:
        q = ", ".join(f"{k}={v}" for k, v in sorted(self.quarantined.items())) or "none"
        version = (
            f"new manifest {self.manifest_version} (was {self.previous_version})"
            if self.manifest_version != self.previous_version
            else f"manifest unchanged ({self.manifest_version})"
        )
        return (
            f"listed {self.listed} objects, {self.new} new: {self.accepted} accepted, "
            f"{self.duplicate} duplicate, quarantined {q}; {version}; "
            f"{self.images_total} images in the dataset; {self.seconds:.2f}s"
        )


@dataclass(frozen=True)
class _Listed:
    key: str
    etag: str
    size: int


@dataclass(frozen=True)
class _Image:
    """A new object whose content is a valid image with a label, stored in ``curated/``
    (by this run, or by an earlier one when the content was already known)."""

    obj: _Listed
    label: str
    sha256: str
    stored_sha256: str
    stored_ext: str
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class _Quarantined:
    """A new object to quarantine. ``label`` and ``sha256`` are set when it got that far."""

    obj: _Listed
    reason: str
    detail: str
    label: str | None = None
    sha256: str | None = None


_Outcome = _Image | _Quarantined  # what happened to one new object, before the merge


@dataclass
class _Merge:
    images: dict[str, ImageRecord]
    objects: dict[str, ObjectRecord]
    accepted: list[_Image] = field(default_factory=list)
    batch_keys: dict[str, list[str]] = field(default_factory=dict)  # sha -> keys, this batch
    rejected: list[_Quarantined] = field(default_factory=list)
    duplicates: int = 0


def ingest(cfg: PipelineConfig, s3: S3Client) -> IngestReport:
    """Run one ingest; returns the report. Raises on S3 failure with nothing written."""
    started = time.monotonic()
    _check_bucket(cfg, s3)
    try:
        previous = mf.read_manifest(s3, cfg) if mf.latest_version(s3, cfg) else None
    except ManifestError as exc:
        raise IngestError(f"cannot read the latest manifest: {exc}") from exc
    base = previous or mf.empty_manifest(cfg)
    warnings = _ratio_warnings(cfg, previous)

    listed = list(_list_incoming(cfg, s3))
    new = [o for o in listed if _is_new(o, base)]
    log.info("listed %d objects under %s, %d new", len(listed), cfg.incoming_prefix, len(new))
    if not new:
        return _report(cfg, listed, [], base, previous, None, "none", started, warnings)

    with ThreadPoolExecutor(max_workers=cfg.parallelism) as pool:
        store = _StoreOnce()
        outcomes = list(pool.map(lambda o: _process(cfg, s3, o, base, store), new))

    merged = _merge(cfg, base, outcomes)
    version = mf.next_version(base.version)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    split_method = "bulk" if previous is None else "incremental"
    splits = _assign_splits(cfg, merged, previous is None)
    for out in merged.accepted:
        merged.images[out.sha256] = ImageRecord(
            sha256=out.sha256,
            stored_sha256=out.stored_sha256,
            label=out.label,
            split=splits[out.sha256],
            ext=out.stored_ext,
            format=out.format,
            width=out.width,
            height=out.height,
            source_keys=tuple(merged.batch_keys[out.sha256]),
            first_seen=now,
            first_version=version,
        )
    _write_quarantine(cfg, s3, version, merged.rejected)
    manifest = Manifest(
        version=version,
        parent=previous.version if previous else None,
        created_at=now,
        classes=cfg.classes,
        split_ratios=cfg.split_ratios,
        split_seed=cfg.split_seed,
        images=merged.images,
        objects=merged.objects,
    )
    uri = mf.write_manifest(s3, cfg, manifest)
    log.info("wrote %s", uri)
    return _report(
        cfg, listed, outcomes, manifest, previous, merged, split_method, started, warnings
    )


def upload_folder(cfg: PipelineConfig, s3: S3Client, folder: str | Path) -> dict[str, Any]:
    """Upload every file under ``folder`` to ``incoming/<relative path>`` (for demos and tests)."""
    root = Path(folder)
    if not root.is_dir():
        raise IngestError(f"{root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file())

    def put(path: Path) -> None:
        key = cfg.incoming_prefix + path.relative_to(root).as_posix()
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        s3.put_object(Bucket=cfg.bucket, Key=key, Body=path.read_bytes(), ContentType=ctype)

    with ThreadPoolExecutor(max_workers=cfg.parallelism) as pool:
        list(pool.map(put, files))
    return {"uploaded": len(files), "bucket": cfg.bucket, "prefix": cfg.incoming_prefix}


def _check_bucket(cfg: PipelineConfig, s3: S3Client) -> None:
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=cfg.bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise IngestError(
                f"bucket {cfg.bucket!r} does not exist at {cfg.s3_endpoint_url or 'AWS'} "
                "(set WEATHER_BUCKET or create it); nothing was ingested"
            ) from exc
        raise


def _list_incoming(cfg: PipelineConfig, s3: S3Client) -> Iterator[_Listed]:
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=cfg.bucket, Prefix=cfg.incoming_prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/") and obj["Size"] == 0:
                continue  # a "folder" marker, not a photo
            yield _Listed(obj["Key"], obj["ETag"].strip('"'), int(obj["Size"]))


def _is_new(obj: _Listed, base: Manifest) -> bool:
    seen = base.objects.get(obj.key)
    return seen is None or seen.etag != obj.etag


class _StoreOnce:
    """Validates and stores each content once per run: many new keys may share one content
    (copies arrive together), and decoding or uploading it again for each is wasted work
    (concurrent PUTs of one key also trip up some S3 servers). Later callers wait for the
    first one's result; its S3 error, if any, reaches them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[str, Future[ValidImage | Rejected]] = {}

    def __call__(
        self, sha: str, work: Callable[[], ValidImage | Rejected]
    ) -> ValidImage | Rejected:
        with self._lock:
            future = self._results.get(sha)
            first = future is None
            if future is None:
                future = self._results[sha] = Future()
        if first:
            try:
                future.set_result(work())
            except BaseException as exc:
                future.set_exception(exc)
        return future.result()


def _process(
    cfg: PipelineConfig, s3: S3Client, obj: _Listed, base: Manifest, store: _StoreOnce
) -> _Outcome:
    """Label, download, hash, validate and store one object. S3 errors propagate."""
    labelled = label_for_key(obj.key, cfg.classes)
    if labelled.label is None:
        return _Quarantined(obj, labelled.reason, labelled.detail)
    label = labelled.label
    if obj.size == 0:
        return _Quarantined(obj, "empty", "the object has no bytes", label)
    if obj.size > cfg.max_object_bytes:
        return _Quarantined(
            obj, "too_many_bytes", f"{obj.size} bytes > {cfg.max_object_bytes}", label
        )
    data = _download(cfg, s3, obj)
    sha = hashlib.sha256(data).hexdigest()
    known = base.images.get(sha)
    if known is not None:  # content already curated: no need to decode or store it again
        return _Image(
            obj, label, sha, known.stored_sha256, known.ext, known.format, known.width, known.height
        )
    valid = store(sha, lambda: _validate_and_store(cfg, s3, sha, data))
    if isinstance(valid, Rejected):
        return _Quarantined(obj, valid.reason, valid.detail, label, sha)
    return _Image(
        obj,
        label,
        sha,
        hashlib.sha256(valid.stored_bytes).hexdigest(),
        valid.stored_ext,
        valid.format,
        valid.width,
        valid.height,
    )


def _validate_and_store(
    cfg: PipelineConfig, s3: S3Client, sha: str, data: bytes
) -> ValidImage | Rejected:
    """Validate by content; put a valid image under ``curated/`` (by the hash of the source)."""
    try:
        valid = validate_image(data, cfg)
    except Rejected as exc:
        return exc
    s3.put_object(
        Bucket=cfg.bucket,
        Key=mf.curated_key(cfg, sha, valid.stored_ext),
        Body=valid.stored_bytes,
        ContentType="image/png" if valid.stored_ext == "png" else "image/jpeg",
        Metadata={"source-format": valid.format, "source-mode": valid.mode},
    )
    return valid


def _download(cfg: PipelineConfig, s3: S3Client, obj: _Listed) -> bytes:
    """GET with botocore's retries, plus retries of a body stream cut mid-read (which
    botocore leaves to the caller), with the same exponential backoff."""
    for attempt in range(1, cfg.s3_max_attempts + 1):
        try:
            return s3.get_object(Bucket=cfg.bucket, Key=obj.key, IfMatch=obj.etag)["Body"].read()
        except ResponseStreamingError:
            if attempt == cfg.s3_max_attempts:
                raise
            time.sleep(min(20.0, 0.5 * 2 ** (attempt - 1)))
    raise AssertionError("unreachable")


def _merge(cfg: PipelineConfig, base: Manifest, outcomes: list[_Outcome]) -> _Merge:
    """Decide accepted / duplicate / quarantined, deterministically (key order)."""
    merged = _Merge(images=dict(base.images), objects=dict(base.objects))
    labels_by_sha: dict[str, set[str]] = {}
    for out in outcomes:
        if isinstance(out, _Image):
            labels_by_sha.setdefault(out.sha256, set()).add(out.label)
    for sha, known in base.images.items():
        if sha in labels_by_sha:
            labels_by_sha[sha].add(known.label)

    for o in sorted(outcomes, key=lambda o: o.obj.key):
        if isinstance(o, _Image) and len(labels_by_sha[o.sha256]) > 1:
            labels = ", ".join(sorted(labels_by_sha[o.sha256]))
            o = _Quarantined(
                o.obj,
                "conflicting_label",
                f"the same content {o.sha256[:12]} arrived under labels {labels}",
                o.label,
                o.sha256,
            )
        if isinstance(o, _Quarantined):
            merged.rejected.append(o)
            merged.objects[o.obj.key] = ObjectRecord(o.obj.etag, "quarantined", o.sha256, o.reason)
            continue
        record = merged.images.get(o.sha256)
        if record is None and o.sha256 not in merged.batch_keys:
            merged.accepted.append(o)
            merged.batch_keys[o.sha256] = [o.obj.key]
            merged.objects[o.obj.key] = ObjectRecord(o.obj.etag, "accepted", o.sha256)
            continue
        merged.duplicates += 1
        merged.objects[o.obj.key] = ObjectRecord(o.obj.etag, "duplicate", o.sha256)
        if record is None:
            merged.batch_keys[o.sha256].append(o.obj.key)
        elif o.obj.key not in record.source_keys:
            merged.images[o.sha256] = replace(record, source_keys=(*record.source_keys, o.obj.key))
    return merged


def _assign_splits(cfg: PipelineConfig, merged: _Merge, first: bool) -> dict[str, str]:
    items = [(o.sha256, o.label) for o in merged.accepted]
    if first:
        sp.warn_if_two_way(cfg.split_ratios)
        return sp.bulk_split(items, cfg.split_ratios, cfg.split_seed)
    counts: dict[str, dict[str, int]] = {c: {} for c in cfg.classes}
    for rec in merged.images.values():
        counts[rec.label][rec.split] = counts[rec.label].get(rec.split, 0) + 1
    return sp.incremental_split(items, counts, cfg.split_ratios, cfg.split_seed)


def _write_quarantine(
    cfg: PipelineConfig, s3: S3Client, version: str, rejected: list[_Quarantined]
) -> None:
    """One JSON record per rejected object, named by the hash of its key (never the key)."""

    def put(o: _Quarantined) -> None:
        name = hashlib.sha256(o.obj.key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        put_json(
            s3,
            cfg.bucket,
            f"{cfg.quarantine_prefix}{version}/{name}.json",
            {
                "source_bucket": cfg.bucket,
                "source_key": o.obj.key,
                "etag": o.obj.etag,
                "size": o.obj.size,
                "reason": o.reason,
                "detail": o.detail,
                "label": o.label,
                "sha256": o.sha256,
                "manifest_version": version,
            },
        )

    with ThreadPoolExecutor(max_workers=cfg.parallelism) as pool:
        list(pool.map(put, rejected))


def _ratio_warnings(cfg: PipelineConfig, previous: Manifest | None) -> tuple[str, ...]:
    out = []
    if len(cfg.split_ratios) == 2:
        out.append("two-way split ratio: the val split doubles as the test split (optimistic)")
    if previous is not None and tuple(previous.split_ratios) != tuple(cfg.split_ratios):
        out.append(
            f"split ratios changed from {tuple(previous.split_ratios)} to {cfg.split_ratios}: "
            "existing images keep their splits; only new images use the new ratios"
        )
    for w in out:
        log.warning(w)
    return tuple(out)


def _report(
    cfg: PipelineConfig,
    listed: list[_Listed],
    outcomes: list[_Outcome],
    manifest: Manifest,
    previous: Manifest | None,
    merged: _Merge | None,
    split_method: str,
    started: float,
    warnings: tuple[str, ...],
) -> IngestReport:
    written = merged is not None
    quarantined = Counter(o.reason for o in merged.rejected) if merged else Counter()
    return IngestReport(
        listed=len(listed),
        new=len(outcomes),
        accepted=len(merged.accepted) if merged else 0,
        duplicate=merged.duplicates if merged else 0,
        quarantined=dict(sorted(quarantined.items())),
        manifest_version=manifest.version if (written or previous) else None,
        previous_version=previous.version if previous else None,
        manifest_uri=mf.manifest_uri(cfg, manifest.version) if (written or previous) else None,
        images_total=len(manifest.images),
        split_counts=manifest.counts(),
        split_method=split_method,
        seconds=time.monotonic() - started,
        warnings=warnings,
    )
