"""Manifest schema: every kind of damage is one line naming the object and the problem."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from weather_tasks import config
from weather_tasks.manifest import (
    FORMAT_VERSION,
    ImageRecord,
    Manifest,
    ManifestError,
    ObjectRecord,
    ReviewNote,
    decode_manifest,
)

CFG = config.from_env(environ={}, bucket="wxb")
URI = "s3://wxb/curated/manifests/v000003.json"
SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()
SHA_C = hashlib.sha256(b"c").hexdigest()
SHA_R = hashlib.sha256(b"r").hexdigest()  # content a person rejected


def _image(sha: str, label: str, split: str) -> ImageRecord:
    return ImageRecord(
        sha256=sha,
        stored_sha256=sha,
        label=label,
        split=split,
        ext="jpg",
        format="JPEG",
        width=48,
        height=40,
        source_keys=(f"incoming/{label}_{sha[:4]}.jpg",),
        first_seen="2026-01-02T03:04:05+00:00",
        first_version="v000001",
    )


MANIFEST = Manifest(
    version="v000003",
    parent="v000002",
    created_at="2026-01-02T03:04:05+00:00",
    classes=CFG.classes,
    split_ratios=(0.7, 0.15, 0.15),
    split_seed=123,
    images={SHA_A: _image(SHA_A, "rain", "train"), SHA_B: _image(SHA_B, "shine", "test")},
    objects={
        f"incoming/rain_{SHA_A[:4]}.jpg": ObjectRecord("e1", "accepted", SHA_A),
        f"incoming/shine_{SHA_B[:4]}.jpg": ObjectRecord("e2", "accepted", SHA_B),
        "incoming/notes.jpg": ObjectRecord("e3", "quarantined", reason="not_an_image"),
        "incoming/x/rain.jpg": ObjectRecord("e4", "quarantined", SHA_C, "conflicting_label"),
    },
    conflicts={SHA_C: ("cloudy", "rain")},
    review={SHA_A: ReviewNote("confident_contradiction", "cloudy", 0.93, "v000002")},
    rejected={SHA_R: "a screenshot, not a photo"},
)


def _doc(change: Callable[[dict[str, Any]], None]) -> bytes:
    data = MANIFEST.to_json()
    change(data)
    return json.dumps(data).encode()


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    """Set the value at ``path`` (dict keys) in the document."""

    def change(data: dict[str, Any]) -> None:
        *parents, last = path
        for p in parents:
            data = data[p]
        data[last] = value

    return change


def _drop(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda data: data.pop(name)


def _note() -> dict[str, Any]:
    return {"reason": "r", "predicted": "rain", "confidence": 0.9, "flagged_in": "v000002"}


def _newline_key(data: dict[str, Any]) -> None:
    data["objects"]["incoming/a\nb.jpg"] = {"etag": "e5", "status": "maybe"}


def _refile(data: dict[str, Any]) -> None:
    data["images"][SHA_C] = data["images"].pop(SHA_A)


def test_round_trip() -> None:
    data = MANIFEST.to_json()
    assert data["format_version"] == FORMAT_VERSION == 3
    assert data["review"] == {
        SHA_A: {
            "reason": "confident_contradiction",
            "predicted": "cloudy",
            "confidence": 0.93,
            "flagged_in": "v000002",
        }
    }
    assert data["rejected"] == {SHA_R: "a screenshot, not a photo"}
    assert Manifest.from_json(data) == MANIFEST
    assert Manifest.from_json(json.loads(MANIFEST.encode()), "v000003") == MANIFEST
    assert decode_manifest(CFG, "v000003", MANIFEST.encode()) == MANIFEST


def test_format_1_without_format_version_or_conflicts_still_reads() -> None:
    data = MANIFEST.to_json()
    del data["format_version"], data["conflicts"], data["review"], data["rejected"]
    read = decode_manifest(CFG, "v000003", json.dumps(data).encode())
    assert read.conflicts == {} and read.review == {} and read.rejected == {}
    assert read.images == MANIFEST.images and read.objects == MANIFEST.objects
    assert read.to_json()["format_version"] == 3  # written again, it is format 3


def test_format_2_without_review_or_rejected_still_reads() -> None:
    data = MANIFEST.to_json()
    data["format_version"] = 2
    del data["review"], data["rejected"]
    read = decode_manifest(CFG, "v000003", json.dumps(data).encode())
    assert read.review == {} and read.rejected == {}
    assert read.conflicts == MANIFEST.conflicts and read.images == MANIFEST.images
    assert read.to_json()["format_version"] == 3


@pytest.mark.parametrize(("fmt", "name"), [(2, "conflicts"), (3, "review"), (3, "rejected")])
def test_a_format_requires_the_fields_it_has(fmt: int, name: str) -> None:
    def change(data: dict[str, Any]) -> None:
        data["format_version"] = fmt
        del data[name]

    with pytest.raises(ManifestError, match=f"damaged: {name}: missing"):
        decode_manifest(CFG, "v000003", _doc(change))


def test_newer_format_is_refused_as_such() -> None:
    with pytest.raises(ManifestError) as err:
        decode_manifest(CFG, "v000003", _doc(_set(("format_version",), 4)))
    assert str(err.value) == (
        f"manifest {URI}: format_version 4: written by a newer weather-retrain (this one reads "
        "formats 1 to 3); upgrade weather-retrain to read it"
    )
    assert not err.value.transient


TRUNCATED = MANIFEST.encode()[:300]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "damaged: the object is empty (0 bytes)"),
        (b"\xff\xd8\xff\xe0 a JPEG?", "damaged: not UTF-8 text (byte 0xff at offset 0)"),
        (
            b"garbage\x00bytes",
            "damaged: not valid JSON (Expecting value: line 1 column 1; the object has 13 bytes)",
        ),
        (TRUNCATED, "damaged: not valid JSON ("),
        (b"[1, 2]", "damaged: not a JSON object but list"),
        (b'"v000003"', "damaged: not a JSON object but str"),
        (
            _doc(_set(("images",), [])),
            "damaged: images: input should be a valid dictionary (got [])",
        ),
        (_doc(_drop("images")), "damaged: images: missing"),
        (_doc(_drop("objects")), "damaged: objects: missing"),
        (
            _doc(_set(("images", SHA_A, "split"), "bogus")),
            f"damaged: images.{SHA_A[:12]}…: split 'bogus' is not one of train, val, test",
        ),
        (
            _doc(_set(("images", SHA_A, "label"), "snow")),
            f"images.{SHA_A[:12]}…: label 'snow' is not one of shine, sunrise, cloudy, rain",
        ),
        (
            _doc(_set(("images", SHA_A, "width"), "wide")),
            f"images.{SHA_A[:12]}….width: input should be a valid integer",
        ),
        (
            _doc(_set(("images", SHA_A, "source_keys"), "incoming/a.jpg")),
            f"images.{SHA_A[:12]}….source_keys: input should be a valid tuple",
        ),
        (
            _doc(_set(("images", SHA_A, "stored_sha256"), "abc")),
            f"images.{SHA_A[:12]}…: stored_sha256 'abc' is not 64 hex digits",
        ),
        (
            _doc(_set(("images", SHA_A, "ext"), "../../x")),
            f"images.{SHA_A[:12]}…: ext '../../x' is not one of jpg, png",
        ),
        (_doc(_refile), f"images.{SHA_C[:12]}…: filed under another sha256 than its own"),
        (
            _doc(_set(("objects", "incoming/notes.jpg", "status"), "maybe")),
            "objects.incoming/notes.jpg: status 'maybe' is not one of accepted, duplicate, "
            "quarantined",
        ),
        (
            _doc(_newline_key),  # a key with a newline keeps the message on one line
            "objects.incoming/a\\nb.jpg: status 'maybe' is not one of",
        ),
        (
            _doc(_set(("conflicts",), {SHA_C: ["rain"]})),
            f"conflicts.{SHA_C[:12]}…: ['rain'] are not two or more of shine, sunrise",
        ),
        (
            _doc(_set(("split_ratios",), [0.5, 0.6])),
            "split_ratios: [0.5, 0.6] are not 2 or 3 fractions summing to 1",
        ),
        (
            _doc(_set(("version",), "v000002")),
            "version: 'v000002' differs from the object name's v000003",
        ),
        (
            _doc(_set(("format_version",), "2")),
            "damaged: format_version '2' is not a positive integer",
        ),
        (
            _doc(_set(("review", SHA_C), _note())),
            f"damaged: review.{SHA_C[:12]}…: not an image of this manifest",
        ),
        (
            _doc(_set(("review", SHA_B), _note())),
            f"damaged: review.{SHA_B[:12]}…: split 'test' cannot be held (only train or val)",
        ),
        (
            _doc(_set(("review", SHA_A, "predicted"), "snow")),
            f"damaged: review.{SHA_A[:12]}…: predicted 'snow' is not one of shine, sunrise",
        ),
        (
            _doc(_set(("review", SHA_A, "confidence"), 1.5)),
            f"damaged: review.{SHA_A[:12]}…: confidence 1.5 is not between 0 and 1",
        ),
        (
            _doc(_set(("review", SHA_A, "confidence"), "high")),
            f"damaged: review.{SHA_A[:12]}….confidence: input should be a valid number",
        ),
        (
            _doc(_set(("review", SHA_A, "flagged_in"), "yesterday")),
            f"damaged: review.{SHA_A[:12]}…: flagged_in 'yesterday' is not a manifest version",
        ),
        (
            _doc(lambda data: data["review"][SHA_A].pop("flagged_in")),
            f"damaged: review.{SHA_A[:12]}….flagged_in: missing",
        ),
        (
            _doc(_set(("review",), [SHA_A])),
            "damaged: review: input should be a valid dictionary",
        ),
        (
            _doc(_set(("rejected", "abc"), "no")),
            "damaged: rejected.abc: not a sha256 (64 hex digits)",
        ),
        (
            _doc(_set(("rejected", SHA_A), "no")),
            f"damaged: rejected.{SHA_A[:12]}…: rejected content is still an image of this "
            "manifest",
        ),
        (
            _doc(_set(("rejected", SHA_R), None)),
            f"damaged: rejected.{SHA_R[:12]}…: input should be a valid string",
        ),
    ],
    ids=lambda v: None if isinstance(v, bytes) else v[:40],
)
def test_each_damage_is_one_line_naming_object_and_problem(body: bytes, problem: str) -> None:
    with pytest.raises(ManifestError) as err:
        decode_manifest(CFG, "v000003", body)
    message = str(err.value)
    assert message.startswith(f"manifest {URI}: damaged: ")
    assert problem in message
    assert message.endswith(
        "fix or remove this object (the versions before it are not affected; "
        "`weather verify` lists every damaged version)"
    )
    assert "\n" not in message
    assert not err.value.transient  # Airflow must not retry damaged data


def test_many_problems_are_counted_not_listed() -> None:
    def damage(data: dict[str, Any]) -> None:
        for rec in data["images"].values():
            rec["split"] = "bogus"
            rec["label"] = "snow"

    message = str(pytest.raises(ManifestError, decode_manifest, CFG, "v000003", _doc(damage)).value)
    # 4 bad values, and the held image's split is not train or val any more: 5 problems.
    assert message.count("is not one of") == 3 and "(and 2 more)" in message
