"""Review of suspect labels, the pure parts: naming held photos by sha256 prefix, the pending
list, what ``weather review`` prints, and the holds refused before anything is written."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest

from weather_tasks import config, review
from weather_tasks.manifest import ImageRecord, Manifest, ReviewNote

CFG = config.from_env(environ={}, bucket="wxb")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _image(sha: str, label: str, split: str, *keys: str) -> ImageRecord:
    return ImageRecord(
        sha256=sha, stored_sha256=sha, label=label, split=split, ext="jpg", format="JPEG",
        width=64, height=48, source_keys=keys or (f"incoming/{label}_{sha[:6]}.jpg",),
        first_seen="2026-01-02T03:04:05+00:00", first_version="v000001",
    )


TWIN_A, TWIN_B = _sha("held in train"), _sha("held in val")
SHA_T = _sha("test photo")
SHA_F = _sha("free photo")  # in train, not held
SHA_R = _sha("rejected")
M = Manifest(
    version="v000004",
    parent="v000003",
    created_at="2026-01-02T03:04:05+00:00",
    classes=CFG.classes,
    split_ratios=(0.7, 0.15, 0.15),
    split_seed=123,
    images={
        TWIN_A: _image(TWIN_A, "rain", "train", "incoming/rain_1.jpg", "incoming/x/rain_9.jpg"),
        TWIN_B: _image(TWIN_B, "shine", "val"),
        SHA_T: _image(SHA_T, "cloudy", "test"),
        SHA_F: _image(SHA_F, "cloudy", "train"),
    },
    review={
        TWIN_A: ReviewNote("label_issue", "cloudy", 0.97, "v000004"),
        TWIN_B: ReviewNote("label_issue", "sunrise", 0.9, "v000002"),
    },
    rejected={SHA_R: "not a photo"},
)


def test_full_sha256s_and_unambiguous_prefixes_name_held_photos() -> None:
    assert review.resolve(M, [TWIN_A]) == {TWIN_A}
    assert review.resolve(M, [TWIN_B[:12].upper(), f" {TWIN_A} "]) == {TWIN_A, TWIN_B}


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ([TWIN_A[:4]], f"'{TWIN_A[:4]}' is not a sha256 or a prefix of 8 or more hex digits"),
        (["not-hex-at-all"], "'not-hex-at-all' is not a sha256 or a prefix of 8 or more hex"),
        ([SHA_F[:10]], f"{SHA_F[:10]} is not pending review"),
        ([SHA_T], f"{SHA_T} is not pending review"),
        ([SHA_R[:8]], f"{SHA_R[:8]} was already rejected"),
        (["0123456789abcdef"], "0123456789abcdef is not an image of manifest v000004"),
        ([], "no sha256 given"),
    ],
)
def test_a_bad_name_is_one_line_naming_it(given: list[str], problem: str) -> None:
    with pytest.raises(review.ReviewError) as err:
        review.resolve(M, [TWIN_A, *given] if given else [])
    message = str(err.value)
    assert problem in message and "\n" not in message
    assert not err.value.transient


def test_an_ambiguous_prefix_is_refused() -> None:
    # A second held photo sharing TWIN_A's first 10 digits (a made-up sha256: real ones
    # sharing 8 digits are rare).
    twin = TWIN_A[:10] + "0" * 54
    m = replace(
        M,
        images={**M.images, twin: _image(twin, "rain", "train")},
        review={**M.review, twin: ReviewNote("label_issue", "shine", 0.8, "v000003")},
    )
    with pytest.raises(review.ReviewError, match=f"{TWIN_A[:8]} is ambiguous \\(2 pending"):
        review.resolve(m, [TWIN_A[:8]])
    assert review.resolve(m, [TWIN_A[:11]]) == {TWIN_A}


def test_pending_lists_oldest_flag_first_with_the_image_facts() -> None:
    listed = review.pending(M)
    assert [p.sha256 for p in listed] == [TWIN_B, TWIN_A]
    first = listed[1].as_dict()
    assert first == {
        "sha256": TWIN_A, "label": "rain", "predicted": "cloudy", "confidence": 0.97,
        "split": "train", "source_keys": ["incoming/rain_1.jpg", "incoming/x/rain_9.jpg"],
        "flagged_in": "v000004", "reason": "label_issue",
    }


def test_the_listing_is_one_line_per_photo() -> None:
    text = review.review_report(M).summary()
    lines = text.splitlines()
    assert lines[0].startswith("manifest v000004: 2 photos held for review")
    rows = lines[2:]
    assert len(rows) == 2
    assert rows[1].split()[:6] == [TWIN_A[:12], "rain", "cloudy", "0.97", "train", "v000004"]
    assert rows[1].endswith("incoming/rain_1.jpg, incoming/x/rain_9.jpg")
    decided = review.review_report(M, "accepted", [SHA_F]).summary()
    assert decided.startswith(f"accepted 1 ({SHA_F[:12]}) in new manifest v000004: trained on")
    empty = replace(M, review={})
    assert review.review_report(empty).summary() == "manifest v000004: no photos held for review"


class _NoS3:
    """An S3 client that must not be used: the refusals and no-ops come first."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"S3 was called ({name})")


NOTE = ReviewNote("label_issue", "rain", 0.95, "v000004")


@pytest.mark.parametrize(
    ("sha", "message"),
    [
        (SHA_T, "it is in the test split, which is never filtered by the champion's opinion"),
        (SHA_R, "not an image of manifest v000004"),
    ],
)
def test_hold_refuses_test_images_and_unknown_ones(sha: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        review.hold_for_review(_NoS3(), CFG, M, {SHA_F: NOTE, sha: NOTE})  # type: ignore[arg-type]


def test_nothing_new_to_hold_returns_the_manifest_itself() -> None:
    assert review.hold_for_review(_NoS3(), CFG, M, {}) is M  # type: ignore[arg-type]
    # Already held (a re-flag keeps its first note): nothing to write either.
    assert review.hold_for_review(_NoS3(), CFG, M, {TWIN_A: NOTE}) is M  # type: ignore[arg-type]
