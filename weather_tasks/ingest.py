"""Incremental ingest: ``incoming/`` -> validated, labelled, split ``curated/`` + a new manifest.

One run:
1. read the latest manifest (its ledger says which key+ETag pairs were already seen);
2. list ``incoming/`` (paginated) and keep only objects not seen with that ETag;
3. label by file name, then download, hash, validate and store each new object in
   parallel (bounded; botocore retries throttling, 5xx and connection errors with backoff).
   Known content is not decoded again, but its curated object is checked (one HEAD) and,
   if it went missing from the bucket, stored again from these bytes;
4. merge the outcomes in key order: new content is accepted, known content is a
   duplicate, anything invalid is quarantined, and so is content with a label conflict
   (below);
5. assign splits to the accepted images and write the new manifest version
   (``If-None-Match``). Any S3 failure before that point, or a lost race for the version,
   fails the run with no new manifest and nothing else written or deleted, and the next run
   sees everything as new again (content addressing makes the already-stored images
   harmless);
6. only then write the quarantine records (``quarantine/<version>/``) and delete the
   orphans: content this run stored under ``curated/`` that is not in the dataset. If that
   fails, the run fails with the S3 error, but the manifest stands and its ledger holds each
   key's outcome and reason: a rerun sees nothing new, so it neither writes the missing
   records nor deletes the orphans (both are conveniences, not dataset state; ``weather
   verify`` lists orphans).
   ``incoming/`` is only ever read.

The label-conflict rule, one rule whatever the arrival order: content (the sha256 of the
source bytes) ever seen as a valid image under two or more labels is quarantined as
``conflicting_label``, every key of it, in this run and every later one. The manifest
remembers it in ``conflicts`` (sha256 -> the labels); content that was in the dataset
leaves it, and its earlier keys are quarantined too (their records are written under the
new version). Its curated object stays, for the older versions that list it. So any
sequence of batches ends as the same keys in one batch would.

People's review (:mod:`weather_tasks.review`) carries over the same way: content a person
rejected (the manifest's ``rejected``) is quarantined as ``rejected_in_review`` whatever key
and label it arrives under, and every version ingest writes keeps ``rejected`` and ``review``
(an image held for review stays held across nights until a person decides; one that leaves
the dataset, by a label conflict, leaves ``review`` too).

Object keys are never used as local paths: no image and no key is written to local disk
(the first ingest's bulk split lays out empty files named by content hash in a temporary
folder, see :func:`weather_tasks.split.bulk_split`).
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from botocore.exceptions import ClientError, ResponseStreamingError

from weather_tasks import manifest as mf
from weather_tasks import split as sp
from weather_tasks.config import PipelineConfig, PipelineError
from weather_tasks.label import label_for_key
from weather_tasks.manifest import ImageRecord, Manifest, ManifestError, ObjectRecord
from weather_tasks.review import REJECTED
from weather_tasks.validate import Rejected, ValidImage, validate_image

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)
_T = TypeVar("_T")
CONFLICT = "conflicting_label"  # the reason of content seen under two or more labels


class IngestError(PipelineError):
    """The run cannot proceed (missing bucket, unreadable manifest); nothing was written."""


@dataclass(frozen=True)
class IngestReport:
    listed: int
    new: int
    accepted: int
    duplicate: int
    quarantined: dict[str, int]  # this run's new objects, by reason
    requarantined: int  # earlier keys of content that conflicts now (conflicting_label)
    restored: int  # curated images missing from the bucket, stored again from a new copy
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
            "requarantined": self.requarantined,
            "restored": self.restored,
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
        earlier = (
            f"; {self.requarantined} earlier keys quarantined ({CONFLICT})"
            if self.requarantined
            else ""
        )
        restored = f"; {self.restored} missing curated images restored" if self.restored else ""
        return (
            f"listed {self.listed} objects, {self.new} new: {self.accepted} accepted, "
            f"{self.duplicate} duplicate, quarantined {q}{earlier}{restored}; {version}; "
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
    (by this run, or by an earlier one when the content was already known; ``restored``:
    it had gone missing and this run stored it again)."""

    key: str
    etag: str
    label: str
    sha256: str
    stored_sha256: str
    stored_ext: str
    format: str
    width: int
    height: int
    restored: bool = False


@dataclass(frozen=True)
class _Quarantined:
    """A key to quarantine. ``label`` and ``sha256`` are set when it got that far."""

    key: str
    etag: str
    reason: str
    detail: str
    label: str | None = None
    sha256: str | None = None


_Outcome = _Image | _Quarantined  # what happened to one new object, before the merge


@dataclass
class _Merge:
    images: dict[str, ImageRecord]
    objects: dict[str, ObjectRecord]
    conflicts: dict[str, tuple[str, ...]]
    accepted: list[_Image] = field(default_factory=list)
    batch_keys: dict[str, list[str]] = field(default_factory=dict)  # sha -> keys, this batch
    rejected: list[_Quarantined] = field(default_factory=list)  # this run's new objects
    requarantined: list[_Quarantined] = field(default_factory=list)  # earlier keys
    duplicates: int = 0


def ingest(cfg: PipelineConfig, s3: S3Client) -> IngestReport:
    """Run one ingest; returns the report. Raises on S3 failure (see the module docstring
    for what is written by then)."""
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
        store, restore = _Once[ValidImage | Rejected](), _Once[bool]()
        outcomes = list(pool.map(lambda o: _process(cfg, s3, o, base, store, restore), new))

    merged = _merge(base, outcomes)
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
    manifest = Manifest(
        version=version,
        parent=previous.version if previous else None,
        created_at=now,
        classes=cfg.classes,
        split_ratios=cfg.split_ratios,
        split_seed=cfg.split_seed,
        images=merged.images,
        objects=merged.objects,
        conflicts=merged.conflicts,
        review={k: v for k, v in base.review.items() if k in merged.images},
        rejected=dict(base.rejected),
    )
    uri = mf.write_manifest(s3, cfg, manifest)  # ManifestError if another run wrote it first
    log.info("wrote %s", uri)
    # Only now: a run that failed or lost the race for the version must leave no records
    # under a version its winner does not list, and must not delete what the winner may list.
    sizes = {o.key: o.size for o in listed}
    _write_quarantine(cfg, s3, version, [*merged.rejected, *merged.requarantined], sizes)
    _delete_orphans(cfg, s3, base, manifest, outcomes)
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


class _Once(Generic[_T]):
    """Does the work for each content once per run (validate and store it, or restore it):
    many new keys may share one content (copies arrive together), and decoding or uploading
    it again for each is wasted work (concurrent PUTs of one key also trip up some S3
    servers). Later callers wait for the first one's result; its S3 error, if any, reaches
    them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[str, Future[_T]] = {}

    def __call__(self, sha: str, work: Callable[[], _T]) -> _T:
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
    cfg: PipelineConfig,
    s3: S3Client,
    obj: _Listed,
    base: Manifest,
    store: _Once[ValidImage | Rejected],
    restore: _Once[bool],
) -> _Outcome:
    """Label, download, hash, validate and store one object. S3 errors propagate."""
    labelled = label_for_key(obj.key, cfg.classes)
    if labelled.label is None:
        return _Quarantined(obj.key, obj.etag, labelled.reason, labelled.detail)
    label = labelled.label
    if obj.size == 0:
        return _Quarantined(obj.key, obj.etag, "empty", "the object has no bytes", label)
    if obj.size > cfg.max_object_bytes:
        detail = f"{obj.size} bytes > {cfg.max_object_bytes}"
        return _Quarantined(obj.key, obj.etag, "too_many_bytes", detail, label)
    data = _download(cfg, s3, obj)
    sha = hashlib.sha256(data).hexdigest()
    if sha in base.conflicts:  # never in the dataset again: no need to decode or store it
        return _Quarantined(obj.key, obj.etag, CONFLICT, "", label, sha)  # detail: _merge
    if sha in base.rejected:  # a person rejected this content: never in the dataset again
        detail = f"the same content {sha[:12]} was rejected in review: {base.rejected[sha]}"
        return _Quarantined(obj.key, obj.etag, REJECTED, detail, label, sha)
    known = base.images.get(sha)
    if known is not None:  # content already curated: no need to decode it, if it is there
        restored = not _curated_exists(cfg, s3, known) and restore(
            sha, lambda: _restore(cfg, s3, known, data)
        )
        return _Image(
            obj.key,
            obj.etag,
            label,
            sha,
            known.stored_sha256,
            known.ext,
            known.format,
            known.width,
            known.height,
            restored,
        )
    valid = store(sha, lambda: _validate_and_store(cfg, s3, sha, data))
    if isinstance(valid, Rejected):
        return _Quarantined(obj.key, obj.etag, valid.reason, valid.detail, label, sha)
    return _Image(
        obj.key,
        obj.etag,
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
    mf.put_curated_image(s3, cfg, sha, valid)
    return valid


def _curated_exists(cfg: PipelineConfig, s3: S3Client, rec: ImageRecord) -> bool:
    try:
        s3.head_object(Bucket=cfg.bucket, Key=mf.curated_key(cfg, rec.sha256, rec.ext))
    except ClientError as exc:
        if mf.is_missing(exc):
            return False
        raise
    return True


def _restore(cfg: PipelineConfig, s3: S3Client, rec: ImageRecord, data: bytes) -> bool:
    """Store a curated image missing from the bucket again, from a new copy of its source;
    only if these bytes give the very file the manifest lists (a different Pillow version
    may convert differently): otherwise the record is left as it is, with a warning."""
    key = mf.curated_key(cfg, rec.sha256, rec.ext)
    try:
        valid = validate_image(data, cfg)
    except Rejected as exc:
        log.warning("s3://%s/%s is missing and cannot be restored: %s", cfg.bucket, key, exc)
        return False
    if hashlib.sha256(valid.stored_bytes).hexdigest() != rec.stored_sha256:
        log.warning(
            "s3://%s/%s is missing and cannot be restored: its source converts to a file "
            "other than the manifest's (stored_sha256 %s)",
            cfg.bucket,
            key,
            rec.stored_sha256[:12],
        )
        return False
    mf.put_curated_image(s3, cfg, rec.sha256, valid)
    log.info("restored s3://%s/%s from a new copy of its source", cfg.bucket, key)
    return True


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


def _merge(base: Manifest, outcomes: list[_Outcome]) -> _Merge:
    """Decide accepted / duplicate / quarantined, deterministically (key order), and apply
    the label-conflict rule (module docstring) to this batch together with ``base``."""
    merged = _Merge(
        images=dict(base.images), objects=dict(base.objects), conflicts=dict(base.conflicts)
    )
    labels = {sha: set(seen) for sha, seen in base.conflicts.items()}
    for o in outcomes:
        if isinstance(o, _Image):
            labels.setdefault(o.sha256, set()).add(o.label)
        elif o.reason == CONFLICT and o.sha256 and o.label:  # a remembered conflict
            labels[o.sha256].add(o.label)
    for sha, seen in labels.items():
        if sha in base.images:
            seen.add(base.images[sha].label)
        if len(seen) > 1:
            merged.conflicts[sha] = tuple(sorted(seen))

    for o in sorted(outcomes, key=lambda o: o.key):
        if o.sha256 is not None and o.sha256 in merged.conflicts:
            o = _conflicting(o.key, o.etag, o.label, o.sha256, merged.conflicts[o.sha256])
        if isinstance(o, _Quarantined):
            merged.rejected.append(o)
            merged.objects[o.key] = ObjectRecord(o.etag, "quarantined", o.sha256, o.reason)
            continue
        record = merged.images.get(o.sha256)
        if record is None and o.sha256 not in merged.batch_keys:
            merged.accepted.append(o)
            merged.batch_keys[o.sha256] = [o.key]
            merged.objects[o.key] = ObjectRecord(o.etag, "accepted", o.sha256)
            continue
        merged.duplicates += 1
        merged.objects[o.key] = ObjectRecord(o.etag, "duplicate", o.sha256)
        if record is None:
            merged.batch_keys[o.sha256].append(o.key)
        elif o.key not in record.source_keys:
            merged.images[o.sha256] = replace(record, source_keys=(*record.source_keys, o.key))

    # Content of the dataset that conflicts now leaves it, with every earlier key of it.
    leaving = {sha: merged.images.pop(sha) for sha in merged.conflicts.keys() & base.images.keys()}
    for key, rec in sorted(merged.objects.items()):
        if rec.sha256 in leaving and rec.status != "quarantined":
            label = leaving[rec.sha256].label
            old = _conflicting(key, rec.etag, label, rec.sha256, merged.conflicts[rec.sha256])
            merged.requarantined.append(old)
            merged.objects[key] = ObjectRecord(rec.etag, "quarantined", rec.sha256, CONFLICT)
    return merged


def _conflicting(
    key: str, etag: str, label: str | None, sha: str, labels: tuple[str, ...]
) -> _Quarantined:
    detail = f"the same content {sha[:12]} arrived under labels {', '.join(labels)}"
    return _Quarantined(key, etag, CONFLICT, detail, label, sha)


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
    cfg: PipelineConfig,
    s3: S3Client,
    version: str,
    rejected: list[_Quarantined],
    sizes: Mapping[str, int],
) -> None:
    """One JSON record per quarantined key, named by the hash of the key (never the key).
    ``sizes``: the listed sizes (an earlier key may no longer be listed: size null)."""

    mf.write_quarantine_records(s3, cfg, version, [
        {"source_key": o.key, "etag": o.etag, "size": sizes.get(o.key), "reason": o.reason,
         "detail": o.detail, "label": o.label, "sha256": o.sha256}
        for o in rejected
    ])


def _delete_orphans(
    cfg: PipelineConfig, s3: S3Client, base: Manifest, manifest: Manifest, outcomes: list[_Outcome]
) -> None:
    """Delete what this run stored under ``curated/`` that is not in its dataset (content that
    conflicts within the batch). Content the base manifest listed is never stored by a run,
    only restored, and stays: the older versions that list it must stay reproducible."""
    orphans = sorted(
        {
            mf.curated_key(cfg, o.sha256, o.stored_ext)
            for o in outcomes
            if isinstance(o, _Image)
            and o.sha256 not in base.images
            and o.sha256 not in manifest.images
        }
    )
    for key in orphans:
        s3.delete_object(Bucket=cfg.bucket, Key=key)
        log.info("deleted the orphan s3://%s/%s (conflicting content)", cfg.bucket, key)


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
        requarantined=len(merged.requarantined) if merged else 0,
        restored=len({o.sha256 for o in outcomes if isinstance(o, _Image) and o.restored}),
        manifest_version=manifest.version if (written or previous) else None,
        previous_version=previous.version if previous else None,
        manifest_uri=mf.manifest_uri(cfg, manifest.version) if (written or previous) else None,
        images_total=len(manifest.images),
        split_counts=manifest.counts(),
        split_method=split_method,
        seconds=time.monotonic() - started,
        warnings=warnings,
    )
