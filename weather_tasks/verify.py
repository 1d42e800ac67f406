"""``weather verify [--repair]``: does the bucket hold what the manifests say?

What is checked (reading only):

- every manifest version can be read: a damaged one is reported by its URI and problem, and
  the check goes on with the others;
- every image of the newest readable manifest is under ``curated/images/`` with the bytes of
  its ``stored_sha256`` (each object is downloaded and hashed, ``WEATHER_PARALLELISM`` at a
  time): otherwise it is ``missing`` or ``corrupt``;
- orphans: objects under ``curated/images/`` that no readable manifest version refers to (an
  interrupted ingest leaves them; harmless);
- stray quarantine records: records under ``quarantine/<version>/`` whose version has no
  manifest, or whose manifest does not list their object as quarantined.

With ``repair`` (``--repair``), and only when the newest manifest is readable (otherwise it
refuses, saying so, and writes nothing):

- a missing or corrupt image is put back from the first of its source keys still in
  ``incoming/`` whose bytes hash to the image's sha256 and validate to exactly the stored bytes;
- an image that cannot be put back is dropped: a new manifest version (parent: the newest)
  without it, each of its source keys quarantined in the ledger with reason ``lost``, and a
  quarantine record for each (``size`` null). The version is written with ``If-None-Match``:
  an ingest that wrote that version meanwhile makes the repair fail cleanly; run it again.
  Uploading the same bytes again under a new key brings the image back at the next ingest
  (under its old key it is not new: the ledger has seen that key and ETag).

Repair deletes nothing (orphans and stray records stay listed) and never writes to
``incoming/``. The report's ``failed`` (exit status 1 of ``weather verify``) means a damaged
manifest version or a missing or corrupt image that was not repaired; orphans and stray records
are listed but do not fail the check: no dataset version uses them.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from weather_tasks import manifest as mf
from weather_tasks.config import PipelineConfig, PipelineError
from weather_tasks.manifest import ImageRecord, Manifest, ManifestError, ObjectRecord
from weather_tasks.validate import Rejected, validate_image

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from mypy_boto3_s3 import S3Client

LOST = "lost"  # the quarantine reason of an image that could not be restored


class VerifyError(PipelineError):
    """Verification cannot do what was asked (repair over a damaged newest manifest)."""


@dataclass(frozen=True)
class ImageIssue:
    """An image of the newest manifest that is not as recorded, and what repair did."""

    sha256: str
    uri: str
    label: str
    split: str
    source_keys: tuple[str, ...]
    problem: str  # missing | corrupt
    outcome: str | None = None  # restored | lost (with repair)
    detail: str = ""  # where it was restored from, or why it could not be

    def as_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "uri": self.uri,
            "label": self.label,
            "split": self.split,
            "source_keys": list(self.source_keys),
            "problem": self.problem,
            "outcome": self.outcome,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class VerifyReport:
    bucket: str
    versions: int  # manifest versions listed
    checked_version: str | None  # the newest readable one, whose images were checked
    images_checked: int
    damaged: dict[str, str]  # version -> its one-line problem
    issues: tuple[ImageIssue, ...]
    orphans: tuple[str, ...]  # s3:// URIs
    stray_records: tuple[str, ...]  # s3:// URIs
    repaired_version: str | None  # the manifest version repair wrote
    seconds: float

    @property
    def failed(self) -> bool:
        return bool(self.damaged) or any(i.outcome is None for i in self.issues)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "versions": self.versions,
            "checked_version": self.checked_version,
            "images_checked": self.images_checked,
            "damaged": dict(self.damaged),
            "issues": [i.as_dict() for i in self.issues],
            "orphans": list(self.orphans),
            "stray_records": list(self.stray_records),
            "repaired_version": self.repaired_version,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        problems = {p: sum(i.problem == p for i in self.issues) for p in ("missing", "corrupt")}
        checked = (
            f"{self.images_checked} images of {self.checked_version} checked"
            if self.checked_version
            else "no readable manifest"
        )
        lines = [
            f"verified s3://{self.bucket}: {self.versions} manifest versions, "
            f"{len(self.damaged)} damaged; {checked}: {problems['missing']} missing, "
            f"{problems['corrupt']} corrupt; {len(self.orphans)} orphans, "
            f"{len(self.stray_records)} stray quarantine records; {self.seconds:.2f}s"
        ]
        lines += [f"  damaged: {problem}" for problem in self.damaged.values()]
        for i in self.issues:
            sources = ", ".join(i.source_keys)
            line = f"  {i.problem}: {i.uri} (label {i.label}, split {i.split}, from {sources})"
            if i.outcome == "restored":
                line += " -> restored"
            elif i.outcome == LOST:
                line += f" -> dropped in {self.repaired_version}"
            lines.append(f"{line}: {i.detail}" if i.detail else line)
        lines += [f"  orphan: {uri}" for uri in self.orphans]
        lines += [f"  stray quarantine record: {uri}" for uri in self.stray_records]
        if any(i.outcome is None for i in self.issues):
            lines.append(
                "run `weather verify --repair` to restore the images from incoming/ or drop "
                "them in a new manifest version"
            )
        if self.damaged:
            lines.append("fix or remove the damaged manifest objects (repair cannot)")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Version:
    """What one manifest version refers to (kept small: there may be hundreds)."""

    version: str
    problem: str | None  # why it could not be read
    images: frozenset[str]  # curated keys
    quarantine_records: frozenset[str]  # the record keys of its quarantined objects


def verify(cfg: PipelineConfig, s3: S3Client, repair: bool = False) -> VerifyReport:
    """Check the bucket against its manifests; with ``repair``, restore or drop bad images."""
    started = time.monotonic()
    listed = mf.list_versions(s3, cfg)
    with ThreadPoolExecutor(max_workers=cfg.parallelism) as pool:
        versions = {v.version: v for v in pool.map(lambda v: _read_version(cfg, s3, v), listed)}
    damaged = {v: r.problem for v, r in versions.items() if r.problem is not None}
    if repair and listed and listed[-1] in damaged:
        raise VerifyError(f"refusing to repair: the newest {damaged[listed[-1]]}")
    readable = [v for v in listed if v not in damaged]
    newest = mf.read_manifest(s3, cfg, readable[-1]) if readable else None
    issues = _check_images(cfg, s3, newest, repair) if newest else []
    # Listed before a repair writes: they describe the bucket as found.
    orphans = tuple(_orphans(cfg, s3, versions.values()))
    stray_records = tuple(_stray_records(cfg, s3, versions))
    lost = [i for i in issues if i.outcome == LOST]
    repaired_version = _drop_lost(cfg, s3, newest, lost) if newest and lost else None
    return VerifyReport(
        bucket=cfg.bucket,
        versions=len(listed),
        checked_version=newest.version if newest else None,
        images_checked=len(newest.images) if newest else 0,
        damaged=damaged,
        issues=tuple(issues),
        orphans=orphans,
        stray_records=stray_records,
        repaired_version=repaired_version,
        seconds=time.monotonic() - started,
    )


def _read_version(cfg: PipelineConfig, s3: S3Client, version: str) -> _Version:
    try:
        m = mf.read_manifest(s3, cfg, version)
    except ManifestError as exc:
        return _Version(version, str(exc), frozenset(), frozenset())
    return _Version(
        version,
        None,
        frozenset(mf.curated_key(cfg, r.sha256, r.ext) for r in m.images.values()),
        frozenset(
            mf.quarantine_key(cfg, version, key)
            for key, o in m.objects.items()
            if o.status == "quarantined"
        ),
    )


def _check_images(
    cfg: PipelineConfig, s3: S3Client, newest: Manifest, repair: bool
) -> list[ImageIssue]:
    """The images of ``newest`` that are missing or corrupt (restored or lost with ``repair``)."""
    with ThreadPoolExecutor(max_workers=cfg.parallelism) as pool:
        checked = pool.map(lambda r: _check_image(cfg, s3, r), newest.images.values())
        issues = sorted((i for i in checked if i is not None), key=lambda i: i.sha256)
        if repair:
            issues = list(pool.map(lambda i: _restore(cfg, s3, newest.images[i.sha256], i), issues))
    return issues


def _check_image(cfg: PipelineConfig, s3: S3Client, rec: ImageRecord) -> ImageIssue | None:
    issue = ImageIssue(
        rec.sha256, mf.image_uri(cfg, rec), rec.label, rec.split, rec.source_keys, "missing"
    )
    try:
        body = s3.get_object(Bucket=cfg.bucket, Key=mf.curated_key(cfg, rec.sha256, rec.ext))
    except ClientError as exc:
        if mf.is_missing(exc):
            return issue
        raise
    actual = hashlib.sha256(body["Body"].read()).hexdigest()
    if actual != rec.stored_sha256:
        return replace(issue, problem="corrupt", detail=f"its bytes hash to {actual}")
    return None


def _restore(cfg: PipelineConfig, s3: S3Client, rec: ImageRecord, issue: ImageIssue) -> ImageIssue:
    """Put the image back from the first source key that still has its bytes, else mark it
    lost (saying why each source key would not do)."""
    why = []
    for key in rec.source_keys:
        try:
            data = s3.get_object(Bucket=cfg.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if not mf.is_missing(exc):
                raise
            why.append(f"{key} is gone")
            continue
        if hashlib.sha256(data).hexdigest() != rec.sha256:
            why.append(f"{key} holds other bytes now")
            continue
        try:
            valid = validate_image(data, cfg)
        except Rejected as exc:
            why.append(f"{key} no longer validates ({exc})")
            continue
        if hashlib.sha256(valid.stored_bytes).hexdigest() != rec.stored_sha256:
            why.append(f"{key} converts to other bytes than were stored")
            continue
        mf.put_curated_image(s3, cfg, rec.sha256, valid)
        return replace(issue, outcome="restored", detail=f"from {key}")
    return replace(issue, outcome=LOST, detail="; ".join(why))


def _drop_lost(cfg: PipelineConfig, s3: S3Client, newest: Manifest, lost: list[ImageIssue]) -> str:
    """Write a new manifest version without the lost images, their keys quarantined ``lost``;
    then their quarantine records (after the manifest: a failed write leaves no stray record)."""
    version = mf.next_version(newest.version)
    objects = dict(newest.objects)
    records: list[dict[str, Any]] = []
    for issue in lost:
        for key in issue.source_keys:
            seen = objects.get(key)
            etag = seen.etag if seen else ""
            objects[key] = ObjectRecord(etag, "quarantined", issue.sha256, LOST)
            records.append({
                "source_key": key,
                "etag": etag,
                "size": None,
                "reason": LOST,
                "detail": f"curated image {issue.uri} was {issue.problem} and could not be "
                f"restored: {issue.detail}",
                "label": issue.label,
                "sha256": issue.sha256,
            })
    dropped = {i.sha256 for i in lost}
    mf.write_manifest(
        s3,
        cfg,
        replace(
            newest,
            version=version,
            parent=newest.version,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            images={k: r for k, r in newest.images.items() if k not in dropped},
            objects=objects,
            # A lost image held for review leaves review too (review lists images only).
            review={k: n for k, n in newest.review.items() if k not in dropped},
        ),
    )
    mf.write_quarantine_records(s3, cfg, version, records)
    return version


def _list_keys(cfg: PipelineConfig, s3: S3Client, prefix: str) -> Iterator[str]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cfg.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"]


def _orphans(cfg: PipelineConfig, s3: S3Client, versions: Iterable[_Version]) -> Iterator[str]:
    referenced: set[str] = set().union(*(v.images for v in versions))
    for key in _list_keys(cfg, s3, cfg.curated_images_prefix):
        if key not in referenced:
            yield f"s3://{cfg.bucket}/{key}"


def _stray_records(
    cfg: PipelineConfig, s3: S3Client, versions: dict[str, _Version]
) -> Iterator[str]:
    for key in _list_keys(cfg, s3, cfg.quarantine_prefix):
        written_with = versions.get(key[len(cfg.quarantine_prefix) :].split("/", 1)[0])
        if written_with is not None and written_with.problem is not None:
            continue  # its manifest is damaged: cannot tell
        if written_with is None or key not in written_with.quarantine_records:
            yield f"s3://{cfg.bucket}/{key}"
