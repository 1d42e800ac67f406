"""Dataset versions: immutable manifests under ``curated/manifests/`` and a local image cache.

A manifest says, for each distinct image (by sha256), its label, split, format, size,
the source keys it arrived under and when it was first seen. It also keeps the ledger of
every ``incoming/`` object already looked at (key -> ETag and outcome), so that the next
ingest downloads only what is new and does not fetch a rejected file again until its
ETag changes. Versions are ``v000001``, ``v000002``, ...; a version is written once.

Every manifest is validated when it is read (:func:`decode_manifest`, pydantic over the
dataclasses below plus the rules between fields): types and required fields, ``split`` one of
train/val/test, ``label`` one of the manifest's classes, sha256s of 64 hex digits, each image
filed under its own sha256, object status accepted/duplicate/quarantined, label conflicts of
two or more known labels, sane split ratios, and the ``version`` field equal to the version in
the object's name. A damaged object (empty, not UTF-8, not JSON, cut short, wrong shape, a bad
value) is a permanent :class:`ManifestError` of one line naming its ``s3://`` URI and the first
problems, e.g. ``manifest s3://weather/curated/manifests/v000003.json: damaged:
images.ab12cd34ef56...: split 'bogus' is not one of train, val, test; ...``. Nothing is ever
written on top of a manifest that could not be read.

Two states come from people's review of suspect labels (:mod:`weather_tasks.review`):
``review`` (sha256 -> :class:`ReviewNote`) holds train/val images out of training until a
person decides (they stay in ``images`` and keep their split; a test image is never held), and
``rejected`` (sha256 -> the reason) remembers content a person rejected: like ``conflicts``, it
is not an image of the manifest and the same bytes arriving again under any key are
quarantined (``rejected_in_review``).

``format_version`` (:data:`FORMAT_VERSION`, 3) is written in every new manifest. A manifest
without it is format 1 (written before the field existed, without ``conflicts``); format 2 has
no ``review`` and ``rejected``; both read as before (the missing fields empty). A format newer
than this code knows is refused as written by a newer weather-retrain.

A curated image that is missing from the bucket or whose bytes do not hash to its record's
``stored_sha256`` fails :func:`fetch_images` (training) with a message naming the image (sha256,
label, split, source keys, curated URI) and pointing at ``weather verify --repair``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from weather_tasks.config import PipelineConfig, PipelineError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from weather_tasks.validate import ValidImage

SPLITS = ("train", "val", "test")
STATUSES = ("accepted", "duplicate", "quarantined")  # of an incoming/ object in the ledger
STORED_EXTS = ("jpg", "png")
# Written in every new manifest. 1: no such field, no ``conflicts``; 2: both; 3: ``review``
# and ``rejected`` too.
FORMAT_VERSION = 3
# Fields a document of an older format may lack (they read as empty): field -> first format.
_ADDED_IN = {"conflicts": 2, "review": 3, "rejected": 3}
_VERSION_RE = re.compile(r"^v(\d{6,})$")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")  # fullmatch
_MAX_PROBLEMS = 3  # named in one message; the rest are counted
_DAMAGED_ADVICE = (
    "fix or remove this object (the versions before it are not affected; "
    "`weather verify` lists every damaged version)"
)
_REPAIR_ADVICE = (
    "run `weather verify --repair` to restore it from incoming/ or drop it in a new manifest "
    "version"
)


class ManifestError(PipelineError):
    """A manifest is missing, damaged or would be overwritten, or a curated image of one is
    missing or corrupt. Permanent: retrying cannot repair data."""


@dataclass(frozen=True)
class ImageRecord:
    """One distinct image. ``sha256`` is of the source bytes (its identity, for dedup);
    ``stored_sha256`` is of the curated file, which is the source itself or, for formats and
    modes the trainer should not have to handle (GIF, BMP, WebP, grayscale, palette, RGBA),
    an RGB PNG conversion of it."""

    sha256: str
    stored_sha256: str
    label: str
    split: str
    ext: str
    format: str
    width: int
    height: int
    source_keys: tuple[str, ...]
    first_seen: str
    first_version: str


@dataclass(frozen=True)
class ObjectRecord:
    """What happened to one ``incoming/`` object (the ingest ledger)."""

    etag: str
    status: str  # accepted | duplicate | quarantined
    sha256: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ReviewNote:
    """Why an image is held out of training until a person decides: the screening's
    ``reason``, the champion's ``predicted`` class and its ``confidence`` in it (0 to 1), and
    ``flagged_in``, the manifest version whose screening flagged it."""

    reason: str
    predicted: str
    confidence: float
    flagged_in: str

    def as_dict(self) -> dict[str, Any]:
        # float(): a caller may pass a NumPy scalar, which JSON cannot encode as such.
        return {**asdict(self), "confidence": float(self.confidence)}


@dataclass(frozen=True)
class Manifest:
    version: str
    parent: str | None
    created_at: str
    classes: tuple[str, ...]
    split_ratios: tuple[float, ...]
    split_seed: int
    images: dict[str, ImageRecord] = field(default_factory=dict)
    objects: dict[str, ObjectRecord] = field(default_factory=dict)
    # Content seen under more than one label: sha256 -> the labels (sorted). Remembered so
    # that the content stays quarantined whatever label or order it arrives in later.
    conflicts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Images held out of training until a person decides (train/val images of this manifest).
    review: dict[str, ReviewNote] = field(default_factory=dict)
    # Content a person rejected: sha256 -> the reason. Remembered like ``conflicts``.
    rejected: dict[str, str] = field(default_factory=dict)

    def split(self, name: str) -> list[ImageRecord]:
        """Images of one split by sha256; ``test`` falls back to ``val`` for 2-way ratios."""
        if name == "test" and len(self.split_ratios) == 2:
            name = "val"
        return sorted((r for r in self.images.values() if r.split == name), key=lambda r: r.sha256)

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {label: n}} over all images."""
        out: dict[str, dict[str, int]] = {s: dict.fromkeys(self.classes, 0) for s in SPLITS}
        for r in self.images.values():
            out[r.split][r.label] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "parent": self.parent,
            "created_at": self.created_at,
            "classes": list(self.classes),
            "split_ratios": list(self.split_ratios),
            "split_seed": self.split_seed,
            "images": {k: _record_json(v) for k, v in sorted(self.images.items())},
            "objects": {k: _drop_none(asdict(v)) for k, v in sorted(self.objects.items())},
            "conflicts": {k: list(v) for k, v in sorted(self.conflicts.items())},
            "review": {k: v.as_dict() for k, v in sorted(self.review.items())},
            "rejected": dict(sorted(self.rejected.items())),
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), indent=1, sort_keys=True).encode()

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON: the dataset digest logged with every model."""
        return hashlib.sha256(self.encode()).hexdigest()

    @classmethod
    def from_json(cls, data: Any, version: str | None = None) -> Manifest:
        """Validate a parsed manifest document (``version``: the one its object name says).

        Raises :class:`ManifestError` naming the first problems (no location: the caller knows
        it, see :func:`decode_manifest`).
        """
        if not isinstance(data, dict):
            raise ManifestError(_damaged([f"not a JSON object but {type(data).__name__}"]))
        fmt = data.get("format_version", 1)
        if type(fmt) is not int or fmt < 1:  # bool is an int subclass: excluded
            raise ManifestError(_damaged([f"format_version {fmt!r} is not a positive integer"]))
        if fmt > FORMAT_VERSION:
            raise ManifestError(
                f"format_version {fmt}: written by a newer weather-retrain (this one reads "
                f"formats 1 to {FORMAT_VERSION}); upgrade weather-retrain to read it"
            )
        # Fields with a default in the dataclass are still required in the document, except
        # in a format written before the field existed.
        missing = [
            f"{f.name}: missing"
            for f in fields(cls)
            if f.name not in data and fmt >= _ADDED_IN.get(f.name, 1)
        ]
        if missing:
            raise ManifestError(_damaged(missing))
        try:
            manifest = _MANIFEST_SCHEMA.validate_python(data)
        except ValidationError as exc:
            raise ManifestError(
                _damaged([_schema_problem(e) for e in exc.errors(include_url=False)])
            ) from None
        problems = _rule_problems(manifest)
        if version is not None and manifest.version != version:
            problems.append(
                f"version: {manifest.version!r} differs from the object name's {version}"
            )
        if problems:
            raise ManifestError(_damaged(problems))
        return manifest


# Types and required fields of the document (the dataclasses); the rest: _rule_problems.
_MANIFEST_SCHEMA = TypeAdapter(Manifest)


def empty_manifest(cfg: PipelineConfig) -> Manifest:
    """The state before the first ingest (never written)."""
    return Manifest(
        version="v000000",
        parent=None,
        created_at="",
        classes=cfg.classes,
        split_ratios=cfg.split_ratios,
        split_seed=cfg.split_seed,
    )


def version_number(version: str) -> int:
    """The number of a version name (``v000012`` -> 12); ManifestError for another name."""
    match = _VERSION_RE.match(version)
    if not match:
        raise ManifestError(f"not a manifest version: {version!r}")
    return int(match.group(1))


def next_version(version: str) -> str:
    return f"v{version_number(version) + 1:06d}"


def manifest_key(cfg: PipelineConfig, version: str) -> str:
    if not _VERSION_RE.match(version):
        raise ManifestError(f"not a manifest version: {version!r} (expected e.g. v000001)")
    return f"{cfg.manifests_prefix}{version}.json"


def manifest_uri(cfg: PipelineConfig, version: str) -> str:
    return f"s3://{cfg.bucket}/{manifest_key(cfg, version)}"


def curated_key(cfg: PipelineConfig, sha256: str, ext: str) -> str:
    return f"{cfg.curated_images_prefix}{sha256}.{ext}"


def list_versions(s3: S3Client, cfg: PipelineConfig) -> list[str]:
    versions = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=cfg.bucket, Prefix=cfg.manifests_prefix):
        for obj in page.get("Contents", []):
            name = obj["Key"][len(cfg.manifests_prefix) :].removesuffix(".json")
            if _VERSION_RE.match(name):
                versions.append(name)
    return sorted(versions, key=version_number)


def latest_version(s3: S3Client, cfg: PipelineConfig) -> str | None:
    versions = list_versions(s3, cfg)
    return versions[-1] if versions else None


def read_manifest(s3: S3Client, cfg: PipelineConfig, version: str | None = None) -> Manifest:
    """Read and validate one version (default: the latest). Raises ManifestError when there is
    none or it is damaged."""
    version = version or latest_version(s3, cfg)
    if version is None:
        raise ManifestError(f"no manifest under s3://{cfg.bucket}/{cfg.manifests_prefix} yet")
    try:
        body = s3.get_object(Bucket=cfg.bucket, Key=manifest_key(cfg, version))["Body"].read()
    except ClientError as exc:
        if is_missing(exc):
            raise ManifestError(f"manifest {manifest_uri(cfg, version)} does not exist") from exc
        raise
    return decode_manifest(cfg, version, body)


def decode_manifest(cfg: PipelineConfig, version: str, body: bytes) -> Manifest:
    """Parse and validate the bytes of manifest ``version``; a ManifestError names its URI."""
    try:
        return Manifest.from_json(_parse_json(body), version)
    except ManifestError as exc:
        raise ManifestError(f"manifest {manifest_uri(cfg, version)}: {exc}") from exc


def write_manifest(s3: S3Client, cfg: PipelineConfig, manifest: Manifest) -> str:
    """Write a new version; refuses to overwrite one (versions are immutable). Returns its URI."""
    key = manifest_key(cfg, manifest.version)
    try:
        s3.put_object(
            Bucket=cfg.bucket,
            Key=key,
            Body=manifest.encode(),
            ContentType="application/json",
            IfNoneMatch="*",
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
            raise ManifestError(
                f"manifest {manifest_uri(cfg, manifest.version)} already exists: another "
                "ingest or repair wrote it meanwhile; run again",
                transient=True,  # a rerun reads the winner's version and applies its own on top
            ) from exc
        raise
    return manifest_uri(cfg, manifest.version)


def is_missing(exc: ClientError) -> bool:
    """Does the S3 error say the object is not there?"""
    return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404")


def image_uri(cfg: PipelineConfig, rec: ImageRecord) -> str:
    return f"s3://{cfg.bucket}/{curated_key(cfg, rec.sha256, rec.ext)}"


def describe_image(cfg: PipelineConfig, rec: ImageRecord) -> str:
    """The curated image and where it came from, for messages."""
    return (
        f"{image_uri(cfg, rec)} (label {rec.label}, split {rec.split}, sha256 {rec.sha256}, "
        f"from {', '.join(_printable(k) for k in rec.source_keys)})"
    )


def put_curated_image(s3: S3Client, cfg: PipelineConfig, sha256: str, valid: ValidImage) -> None:
    """Store a validated image under ``curated/`` by the sha256 of its source bytes."""
    s3.put_object(
        Bucket=cfg.bucket,
        Key=curated_key(cfg, sha256, valid.stored_ext),
        Body=valid.stored_bytes,
        ContentType="image/png" if valid.stored_ext == "png" else "image/jpeg",
        Metadata={"source-format": valid.format, "source-mode": valid.mode},
    )


def quarantine_key(cfg: PipelineConfig, version: str, source_key: str) -> str:
    """The quarantine record of ``source_key`` written with ``version``: named by a hash of the
    key, never by the key itself."""
    name = hashlib.sha256(source_key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{cfg.quarantine_prefix}{version}/{name}.json"


def write_quarantine_records(
    s3: S3Client, cfg: PipelineConfig, version: str, records: Iterable[dict[str, Any]]
) -> None:
    """One JSON object per quarantined key under :func:`quarantine_key`, in parallel. Each
    record has ``source_key``, ``etag``, ``size``, ``reason``, ``detail``, ``label`` and
    ``sha256``; the bucket and ``version`` are added here (the one record format)."""
    from weather_tasks.storage import put_json

    def put(record: dict[str, Any]) -> None:
        put_json(s3, cfg.bucket, quarantine_key(cfg, version, record["source_key"]),
                 {"source_bucket": cfg.bucket, **record, "manifest_version": version})

    with ThreadPoolExecutor(max_workers=cfg.parallelism) as pool:
        list(pool.map(put, records))


def fetch_images(
    s3: S3Client, cfg: PipelineConfig, records: Iterable[ImageRecord]
) -> list[tuple[Path, str]]:
    """Download curated images into the local cache once; return (path, label) pairs.

    The cache is content-addressed (``<work_dir>/cache/images/<sha256>.<ext>``), so a file
    that is present is correct; a download is verified against its sha256 before it lands.
    """
    cache = Path(cfg.work_dir) / "cache" / "images"
    cache.mkdir(parents=True, exist_ok=True)
    records = list(records)

    def fetch(rec: ImageRecord) -> tuple[Path, str]:
        path = cache / f"{rec.sha256}.{rec.ext}"
        if not path.exists():
            key = curated_key(cfg, rec.sha256, rec.ext)
            try:
                body = s3.get_object(Bucket=cfg.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if is_missing(exc):
                    raise ManifestError(
                        f"curated image {describe_image(cfg, rec)} is missing from the bucket: "
                        f"{_REPAIR_ADVICE}"
                    ) from exc
                raise
            actual = hashlib.sha256(body).hexdigest()
            if actual != rec.stored_sha256:
                raise ManifestError(
                    f"curated image {describe_image(cfg, rec)} is corrupt (its bytes hash to "
                    f"{actual}, the manifest says {rec.stored_sha256}): {_REPAIR_ADVICE}"
                )
            tmp = path.with_suffix(path.suffix + ".part")
            tmp.write_bytes(body)
            tmp.replace(path)
        return path, rec.label

    with ThreadPoolExecutor(max_workers=cfg.parallelism) as pool:
        return list(pool.map(fetch, records))


def _parse_json(body: bytes) -> Any:
    if not body:
        raise ManifestError(_damaged(["the object is empty (0 bytes)"]))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            _damaged([f"not UTF-8 text (byte 0x{body[exc.start]:02x} at offset {exc.start})"])
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            _damaged(
                [
                    f"not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno}; the "
                    f"object has {len(body)} bytes)"
                ]
            )
        ) from None


def _damaged(problems: list[str]) -> str:
    more = len(problems) - _MAX_PROBLEMS
    named = "; ".join(problems[:_MAX_PROBLEMS]) + (f" (and {more} more)" if more > 0 else "")
    return f"damaged: {named}; {_DAMAGED_ADVICE}"


def _schema_problem(err: ErrorDetails) -> str:
    where = ".".join(_short(str(p)) for p in err["loc"]) or "the document"
    if err["type"] == "missing":
        return f"{where}: missing"
    msg = err["msg"][:1].lower() + err["msg"][1:]
    return f"{where}: {msg} (got {_short(repr(err['input']))})"


def _rule_problems(m: Manifest) -> list[str]:
    """What the types cannot say: values from fixed sets, shapes, fields that must agree."""
    out = []
    if len(m.classes) < 2 or len(set(m.classes)) != len(m.classes):
        out.append(f"classes: {list(m.classes)} must be two or more distinct names")
    if not (
        len(m.split_ratios) in (2, 3)
        and all(0 < r < 1 for r in m.split_ratios)
        and math.isclose(sum(m.split_ratios), 1.0, abs_tol=1e-6)
    ):
        out.append(f"split_ratios: {list(m.split_ratios)} are not 2 or 3 fractions summing to 1")
    for key, r in m.images.items():
        where = f"images.{_short(key)}"
        if key != r.sha256:
            out.append(f"{where}: filed under another sha256 than its own ({_short(r.sha256)})")
        for name, value in (("sha256", r.sha256), ("stored_sha256", r.stored_sha256)):
            if not _SHA256_RE.fullmatch(value):
                out.append(f"{where}: {name} {_short(value)!r} is not 64 hex digits")
        if r.split not in SPLITS:
            out.append(f"{where}: split {r.split!r} is not one of {', '.join(SPLITS)}")
        if r.label not in m.classes:
            out.append(f"{where}: label {r.label!r} is not one of {', '.join(m.classes)}")
        if r.ext not in STORED_EXTS:
            out.append(f"{where}: ext {r.ext!r} is not one of {', '.join(STORED_EXTS)}")
        if not r.source_keys:
            out.append(f"{where}: source_keys is empty")
    for key, o in m.objects.items():
        where = f"objects.{_short(key)}"
        if o.status not in STATUSES:
            out.append(f"{where}: status {o.status!r} is not one of {', '.join(STATUSES)}")
        if o.sha256 is not None and not _SHA256_RE.fullmatch(o.sha256):
            out.append(f"{where}: sha256 {_short(o.sha256)!r} is not 64 hex digits")
    for key, labels in m.conflicts.items():
        where = f"conflicts.{_short(key)}"
        if not _SHA256_RE.fullmatch(key):
            out.append(f"{where}: not a sha256 (64 hex digits)")
        if len(set(labels)) < 2 or not set(labels) <= set(m.classes):
            out.append(f"{where}: {list(labels)} are not two or more of {', '.join(m.classes)}")
    for key, note in m.review.items():
        where = f"review.{_short(key)}"
        rec = m.images.get(key)
        if rec is None:
            out.append(f"{where}: not an image of this manifest")
        elif rec.split not in ("train", "val"):
            out.append(f"{where}: split {rec.split!r} cannot be held (only train or val)")
        if note.predicted not in m.classes:
            out.append(f"{where}: predicted {note.predicted!r} is not one of "
                       f"{', '.join(m.classes)}")
        if not (math.isfinite(note.confidence) and 0 <= note.confidence <= 1):
            out.append(f"{where}: confidence {note.confidence!r} is not between 0 and 1")
        if not _VERSION_RE.match(note.flagged_in):
            out.append(f"{where}: flagged_in {_short(note.flagged_in)!r} is not a manifest "
                       "version")
    for key in m.rejected:
        where = f"rejected.{_short(key)}"
        if not _SHA256_RE.fullmatch(key):
            out.append(f"{where}: not a sha256 (64 hex digits)")
        elif key in m.images:
            out.append(f"{where}: rejected content is still an image of this manifest")
    return out


def _short(text: str, keep: int = 40) -> str:
    """Long keys and values cut for a one-line message (sha256s keep 12 digits)."""
    if _SHA256_RE.fullmatch(text):
        return text[:12] + "…"
    text = _printable(text)
    return text if len(text) <= keep else text[: keep - 1] + "…"


def _printable(text: str) -> str:
    """Control characters (a key may hold a newline) escaped: messages stay one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _record_json(r: ImageRecord) -> dict[str, Any]:
    out = asdict(r)
    out["source_keys"] = list(r.source_keys)
    return out
