"""Dataset versions: immutable manifests under ``curated/manifests/`` and a local image cache.

A manifest says, for each distinct image (by sha256), its label, split, format, size,
the source keys it arrived under and when it was first seen. It also keeps the ledger of
every ``incoming/`` object already looked at (key -> ETag and outcome), so that the next
ingest downloads only what is new and does not fetch a rejected file again until its
ETag changes. Versions are ``v000001``, ``v000002``, ...; a version is written once.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from weather_tasks.config import PipelineConfig, PipelineError
from weather_tasks.storage import get_json

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SPLITS = ("train", "val", "test")
_VERSION_RE = re.compile(r"^v(\d{6,})$")


class ManifestError(PipelineError):
    """A manifest is missing, malformed or would be overwritten."""


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
class Manifest:
    version: str
    parent: str | None
    created_at: str
    classes: tuple[str, ...]
    split_ratios: tuple[float, ...]
    split_seed: int
    images: dict[str, ImageRecord] = field(default_factory=dict)
    objects: dict[str, ObjectRecord] = field(default_factory=dict)

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
            "version": self.version,
            "parent": self.parent,
            "created_at": self.created_at,
            "classes": list(self.classes),
            "split_ratios": list(self.split_ratios),
            "split_seed": self.split_seed,
            "images": {k: _record_json(v) for k, v in sorted(self.images.items())},
            "objects": {k: _drop_none(asdict(v)) for k, v in sorted(self.objects.items())},
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), indent=1, sort_keys=True).encode()

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON: the dataset digest logged with every model."""
        return hashlib.sha256(self.encode()).hexdigest()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        try:
            return cls(
                version=data["version"],
                parent=data.get("parent"),
                created_at=data["created_at"],
                classes=tuple(data["classes"]),
                split_ratios=tuple(data["split_ratios"]),
                split_seed=int(data["split_seed"]),
                images={
                    k: ImageRecord(**{**v, "source_keys": tuple(v["source_keys"])})
                    for k, v in data["images"].items()
                },
                objects={k: ObjectRecord(**v) for k, v in data["objects"].items()},
            )
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"malformed manifest: {exc!r}") from exc


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


def next_version(version: str) -> str:
    match = _VERSION_RE.match(version)
    if not match:
        raise ManifestError(f"not a manifest version: {version!r}")
    return f"v{int(match.group(1)) + 1:06d}"


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
    return sorted(versions, key=lambda v: int(v[1:]))


def latest_version(s3: S3Client, cfg: PipelineConfig) -> str | None:
    versions = list_versions(s3, cfg)
    return versions[-1] if versions else None


def read_manifest(s3: S3Client, cfg: PipelineConfig, version: str | None = None) -> Manifest:
    """Read one version (default: the latest). Raises ManifestError when there is none."""
    version = version or latest_version(s3, cfg)
    if version is None:
        raise ManifestError(f"no manifest under s3://{cfg.bucket}/{cfg.manifests_prefix} yet")
    try:
        return Manifest.from_json(get_json(s3, cfg.bucket, manifest_key(cfg, version)))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise ManifestError(f"manifest {version} does not exist") from exc
        raise


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
            raise ManifestError(f"manifest {manifest.version} already exists") from exc
        raise
    return manifest_uri(cfg, manifest.version)


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
            body = s3.get_object(Bucket=cfg.bucket, Key=curated_key(cfg, rec.sha256, rec.ext))[
                "Body"
            ].read()
            if hashlib.sha256(body).hexdigest() != rec.stored_sha256:
                raise ManifestError(f"curated image {rec.sha256} is corrupt in the bucket")
            tmp = path.with_suffix(path.suffix + ".part")
            tmp.write_bytes(body)
            tmp.replace(path)
        return path, rec.label

    with ThreadPoolExecutor(max_workers=cfg.parallelism) as pool:
        return list(pool.map(fetch, records))


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _record_json(r: ImageRecord) -> dict[str, Any]:
    out = asdict(r)
    out["source_keys"] = list(r.source_keys)
    return out
