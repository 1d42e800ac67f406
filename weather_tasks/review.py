"""People's review of suspect labels: hold train/val photos out of training, then accept or
reject them.

The nightly screening (:mod:`weather_tasks.screen`) finds new photos whose file-name label the
champion confidently contradicts. With ``suspect_labels = review`` it calls
:func:`hold_for_review`, which writes a manifest version whose ``review`` field holds the
train/val ones: they stay in ``images`` with their split, but :mod:`weather_tasks.data` leaves
them out of the train and val datasets until a person decides (``weather review``):

- :func:`accept`: they leave ``review`` and are trained on from the next night on;
- :func:`reject`: they leave ``images`` and ``review``; their sha256 goes into ``rejected``
  (the reason), every ``incoming/`` key of them becomes quarantined (``rejected_in_review``)
  in the ledger with a quarantine record, and ingest quarantines the same bytes whatever key
  they arrive under later. The sources in ``incoming/`` are never deleted, nor the curated
  object (the older versions that list it stay reproducible).

Test photos are never held: the test split must not be filtered by the opinion of the model it
judges. Each call writes one new manifest version (``If-None-Match``), never one per image.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from weather_tasks import manifest as mf
from weather_tasks.config import PipelineConfig, PipelineError
from weather_tasks.manifest import Manifest, ObjectRecord, ReviewNote

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

REJECTED = "rejected_in_review"  # the quarantine reason of content a person rejected
HOLDABLE_SPLITS = ("train", "val")
DEFAULT_REASON = "rejected in review"
MIN_PREFIX = 8  # hex digits of a sha256 prefix accepted on the command line
_HEX_RE = re.compile(r"[0-9a-f]+")  # fullmatch

__all__ = [
    "REJECTED",
    "Pending",
    "ReviewError",
    "ReviewNote",
    "ReviewReport",
    "accept",
    "hold_for_review",
    "pending",
    "reject",
    "review_report",
]


class ReviewError(PipelineError):
    """A review request that cannot be applied (an unknown or not-pending sha256, a bad
    reason), or a hold that lost the race for the next manifest version (transient)."""


@dataclass(frozen=True)
class Pending:
    """One image held for review, as a person sees it."""

    sha256: str
    label: str  # the file-name label it arrived with
    predicted: str
    confidence: float
    split: str
    source_keys: tuple[str, ...]
    flagged_in: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "label": self.label,
            "predicted": self.predicted,
            "confidence": self.confidence,
            "split": self.split,
            "source_keys": list(self.source_keys),
            "flagged_in": self.flagged_in,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ReviewReport:
    """What ``weather review`` prints: the images still held in ``manifest_version`` and, after
    a decision, which ones were ``decided`` (accepted | rejected) in that new version."""

    manifest_version: str
    pending: tuple[Pending, ...]
    decided: str | None = None
    changed: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "manifest_version": self.manifest_version,
            "pending": [p.as_dict() for p in self.pending],
            "decided": self.decided,
            "changed": list(self.changed),
        }

    def summary(self) -> str:
        lines = []
        if self.decided:
            after = (
                "trained on from the next night"
                if self.decided == "accepted"
                else f"quarantined as {REJECTED}, also under any key they arrive under later"
            )
            lines.append(
                f"{self.decided} {len(self.changed)} "
                f"({', '.join(sha[:12] for sha in self.changed)}) in new manifest "
                f"{self.manifest_version}: {after}"
            )
        if not self.pending:
            lines.append(f"manifest {self.manifest_version}: no photos held for review")
            return "\n".join(lines)
        lines.append(
            f"manifest {self.manifest_version}: {len(self.pending)} photos held for review, out "
            "of training until `weather review accept|reject SHA256...`"
        )
        lines.append(
            f"  {'sha256':<12}  {'label':<8} {'predicted':<9} {'conf':>5}  {'split':<5} "
            f"{'flagged':<8} source keys"
        )
        for p in self.pending:
            keys = ", ".join(_printable(k) for k in p.source_keys)
            lines.append(
                f"  {p.sha256[:12]}  {p.label:<8} {p.predicted:<9} {p.confidence:>5.2f}  "
                f"{p.split:<5} {p.flagged_in:<8} {keys}"
            )
        return "\n".join(lines)


def review_report(
    m: Manifest, decided: str | None = None, changed: Iterable[str] = ()
) -> ReviewReport:
    return ReviewReport(m.version, tuple(pending(m)), decided, tuple(sorted(changed)))


def hold_for_review(
    s3: S3Client, cfg: PipelineConfig, m: Manifest, notes: Mapping[str, ReviewNote]
) -> Manifest:
    """The manifest to train on: ``m`` itself when there is nothing (new) to hold, else a new
    version (parent ``m.version``) whose ``review`` also holds ``notes``' sha256s.

    Idempotent for a retried task: when the latest version already is that child, it is
    returned instead of writing another. Raises ValueError for a sha256 that is not a train
    or val image of ``m`` (a caller's bug), and a transient :class:`ReviewError` when another
    writer got a newer version in first.
    """
    for sha in sorted(notes):
        rec = m.images.get(sha)
        if rec is None:
            raise ValueError(f"cannot hold {sha}: not an image of manifest {m.version}")
        if rec.split not in HOLDABLE_SPLITS:
            raise ValueError(
                f"cannot hold {sha}: it is in the {rec.split} split, which is never filtered "
                "by the champion's opinion (only train or val images can be held)"
            )
    # An image already held keeps its first note: it was flagged first in that version.
    review = {**notes, **m.review}
    if review == m.review:
        return m
    latest = mf.latest_version(s3, cfg)
    child = mf.next_version(m.version)
    if latest == child:
        written = mf.read_manifest(s3, cfg, child)
        if written.parent == m.version and written.review == review:
            log.info("manifest %s already holds these %d for review", child, len(notes))
            return written
    if latest != m.version:
        raise ReviewError(
            f"cannot hold {len(notes)} images of manifest {m.version} for review: the latest "
            f"version is {latest} (another ingest or review wrote it meanwhile); run again",
            transient=True,
        )
    out = replace(m, version=child, parent=m.version, created_at=_now(), review=review)
    try:
        uri = mf.write_manifest(s3, cfg, out)
    except mf.ManifestError as exc:  # lost the race for the version: transient
        raise ReviewError(str(exc), transient=exc.transient) from exc
    log.info("wrote %s: %d held for review (%d in all)", uri, len(notes), len(review))
    return out


def pending(m: Manifest) -> list[Pending]:
    """The images held for review, oldest flag first, then by sha256."""
    out = []
    for sha, note in m.review.items():
        rec = m.images[sha]  # the manifest's rules guarantee it is there
        out.append(
            Pending(
                sha256=sha,
                label=rec.label,
                predicted=note.predicted,
                confidence=note.confidence,
                split=rec.split,
                source_keys=rec.source_keys,
                flagged_in=note.flagged_in,
                reason=note.reason,
            )
        )
    return sorted(out, key=lambda p: (mf.version_number(p.flagged_in), p.sha256))


def accept(s3: S3Client, cfg: PipelineConfig, sha256s: Iterable[str]) -> Manifest:
    """A person accepts these pending images (sha256s or unambiguous prefixes): one new
    manifest version without them in ``review``; they are trained on from the next night."""
    m = mf.read_manifest(s3, cfg)
    chosen = resolve(m, sha256s)
    review = {k: v for k, v in m.review.items() if k not in chosen}
    out = replace(_successor(m), review=review)
    uri = mf.write_manifest(s3, cfg, out)
    log.info("wrote %s: %d accepted after review", uri, len(chosen))
    return out


def reject(
    s3: S3Client, cfg: PipelineConfig, sha256s: Iterable[str], reason: str = DEFAULT_REASON
) -> Manifest:
    """A person rejects these pending images: one new manifest version without them in
    ``images`` and ``review``, their sha256 in ``rejected``, and every ``incoming/`` key of
    them quarantined (``rejected_in_review``, detail: ``reason``) with a quarantine record
    written after the manifest. Nothing is deleted."""
    reason = " ".join(reason.split())  # one line, whatever was typed
    if not reason:
        raise ReviewError("the reason for rejecting is empty")
    m = mf.read_manifest(s3, cfg)
    chosen = resolve(m, sha256s)
    images = {k: v for k, v in m.images.items() if k not in chosen}
    review = {k: v for k, v in m.review.items() if k not in chosen}
    rejected = {**m.rejected, **dict.fromkeys(chosen, reason)}
    objects = dict(m.objects)
    records = []
    for key, o in sorted(m.objects.items()):
        if o.sha256 in chosen and o.status != "quarantined":
            objects[key] = ObjectRecord(o.etag, "quarantined", o.sha256, REJECTED)
            records.append(
                {
                    "source_key": key,
                    "etag": o.etag,
                    "size": None,  # the ledger does not keep sizes
                    "reason": REJECTED,
                    "detail": reason,
                    "label": m.images[o.sha256].label,
                    "sha256": o.sha256,
                }
            )
    out = replace(
        _successor(m), images=images, objects=objects, review=review, rejected=rejected
    )
    uri = mf.write_manifest(s3, cfg, out)
    log.info("wrote %s: %d rejected after review (%d keys quarantined)", uri, len(chosen),
             len(records))
    mf.write_quarantine_records(s3, cfg, out.version, records)
    return out


def resolve(m: Manifest, sha256s: Iterable[str]) -> set[str]:
    """The pending sha256s that ``sha256s`` (full or prefixes of at least 8 hex digits) name;
    a one-line :class:`ReviewError` names every one that is bad, unknown, not pending or
    ambiguous."""
    given = [s.strip().lower() for s in sha256s]
    if not given:
        raise ReviewError("no sha256 given (see `weather review` for the pending ones)")
    chosen: set[str] = set()
    problems: list[str] = []
    for token in given:
        if not (MIN_PREFIX <= len(token) <= 64 and _HEX_RE.fullmatch(token)):
            problems.append(
                f"{token[:70]!r} is not a sha256 or a prefix of {MIN_PREFIX} or more hex digits"
            )
            continue
        matches = [sha for sha in m.review if sha.startswith(token)]
        if len(matches) == 1:
            chosen.add(matches[0])
        elif matches:
            problems.append(f"{token} is ambiguous ({len(matches)} pending images start so)")
        elif any(sha.startswith(token) for sha in m.images):
            problems.append(f"{token} is not pending review")
        elif any(sha.startswith(token) for sha in m.rejected):
            problems.append(f"{token} was already rejected")
        else:
            problems.append(f"{token} is not an image of manifest {m.version}")
    if problems:
        raise ReviewError(
            "; ".join(problems) + " (see `weather review` for the pending ones); nothing "
            "was changed"
        )
    return chosen


def _printable(text: str) -> str:
    """Control characters escaped (a key may hold a newline): one line per photo."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _successor(m: Manifest) -> Manifest:
    return replace(m, version=mf.next_version(m.version), parent=m.version, created_at=_now())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
