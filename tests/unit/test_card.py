"""The model card renders from a plain dict (no services): every section, text escaped, no
external resource, and "not recorded" where an older run lacks calibration or a champion; the
pure helpers behind its sections (LR drops, seed differences, confused pairs, new images)."""

from __future__ import annotations

import base64
import copy
import io
import re
from typing import Any

import pytest
from PIL import Image

from weather_tasks import card, manifest

CLASSES = ["shine", "sunrise", "cloudy", "rain"]
HOSTILE = "<script>alert('x')</script>"
SECTIONS = ("use", "data", "recipe", "test", "calibration", "comparison", "decision",
            "weaknesses")


def _jpeg_uri() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (160, 120), (200, 120, 40)).save(buf, format="JPEG")
    return card.data_uri(buf.getvalue(), "jpeg")


def _png_uri() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 20, 200)).save(buf, format="PNG")
    return card.data_uri(buf.getvalue(), "png")


def _data() -> dict[str, Any]:
    png, jpeg = _png_uri(), _jpeg_uri()
    return {
        "model_name": "weather-classifier", "run_id": "a" * 32, "run_name": HOSTILE,
        "version": "3", "generated_at": "2026-01-02 03:04 UTC", "classes": CLASSES,
        "data": {
            "manifest_version": "v000004", "manifest_uri": "s3://weather/curated/manifests/v4",
            "created_at": "2026-01-02T02:00:00+00:00", "splits": ["train", "val", "test"],
            "counts": [{"label": c, "train": 10, "val": 2, "test": 3, "total": 15}
                       for c in CLASSES],
            "totals": {"train": 40, "val": 8, "test": 12, "total": 60},
            "replaced_version": "2", "replaced_manifest": "v000003",
            "new_images": {"train": 5, "val": 1, "test": 2, "total": 8},
            "sources": [{"prefix": "incoming/cam-<b>1</b>/", "images": 60}],
        },
        "recipe": {
            "model": "model_3", "image_size": "128", "epochs_configured": "30", "epochs_run": 21,
            "best_epoch": 16, "lr_initial": "0.001",
            "lr_drops": [{"epoch": 12, "lr": 1e-4, "from": 1e-3}],
            "batch_size": "16",
            "differs_from_seed": [{"name": "image_size", "value": "128", "seed": "250"}],
            "precision": "mixed_bfloat16", "device": "GPU:0 (H200)", "train_seconds": 754.2,
            "code_version": "0.1.0+abc1234",
        },
        "learning_curve": png,
        "test": {
            "n": 12, "n_errors": 0, "accuracy": 0.75, "accuracy_ci": [0.468, 0.911],
            "log_loss": 0.61,
            "per_class": [{"label": c, "precision": 0.75, "recall": 0.75, "f1": 0.75,
                           "support": 3} for c in CLASSES],
            "confusion_matrix": [[3, 0, 0, 0], [1, 2, 0, 0], [0, 0, 2, 1], [0, 0, 1, 2]],
            "confusion_plot": png,
        },
        "calibration": {"temperature": 1.7, "val_ece_before": 0.081, "val_ece_after": 0.023,
                        "val_n": 8, "test_ece": 0.04, "val_diagram": png,
                        "test_diagram": png},
        "comparison": {"champion_version": "2", "champion_error": None, "n_test": 12,
                       "challenger_accuracy": 0.75, "challenger_ci": [0.468, 0.911],
                       "champion_accuracy": 0.6667, "champion_ci": [0.391, 0.862],
                       "difference": {"estimate": 0.0833, "low": -0.2, "high": 0.35},
                       "mcnemar_p": 1.0},
        "decision": {"status": "promoted", "text": card.STATUS_TEXT["promoted"],
                     "reason": "accuracy 0.75 >= champion", "evaluation_says": True,
                     "reasons": ["accuracy 0.75 >= champion 0.67", HOSTILE],
                     "version": "3", "previous_version": "2"},
        "weaknesses": {
            "confused_pairs": card.confused_pairs(
                [[3, 0, 0, 0], [1, 2, 0, 0], [0, 0, 2, 1], [0, 0, 1, 2]], CLASSES),
            "misclassified_total": 3,
            "misclassified": [{"sha256": "b" * 64, "label": "sunrise", "predicted": "shine",
                               "confidence": 0.91, "source_key": "incoming/sunrise12.jpg",
                               "thumbnail": jpeg},
                              {"sha256": "c" * 64, "label": "rain", "predicted": "cloudy",
                               "confidence": 0.55, "source_key": "incoming/rain3.jpg",
                               "thumbnail": "https://evil.example/x.jpg"}],
        },
    }


def _without_extras(data: dict[str, Any]) -> dict[str, Any]:
    """An older run: no calibration, no champion to compare, no per-image predictions."""
    old = copy.deepcopy(data)
    old["calibration"] = None
    old["comparison"] = {**old["comparison"], "champion_version": None,
                         "champion_accuracy": None, "difference": None, "mcnemar_p": None}
    old["data"]["new_images"] = None
    old["data"]["replaced_version"] = None
    old["decision"] = {**old["decision"], "status": "first_champion",
                       "text": card.STATUS_TEXT["first_champion"]}
    old["weaknesses"] = {"confused_pairs": [], "misclassified_total": None,
                         "misclassified": []}
    old["learning_curve"] = None
    return old


def test_html_has_every_section_and_the_numbers() -> None:
    html = card.render_html(_data())
    for section in SECTIONS:
        assert f'<section id="{section}">' in html, section
    assert "75.0%" in html and "(95% CI 46.8% to 91.1%)" in html
    assert "+8.3 pts" in html and "(95% CI -20.0 pts to +35.0 pts)" in html
    assert "epoch 12 &rarr; 0.0001" in html
    assert "<code>image_size</code> = 128" in html and "(seed: 250)" in html
    assert "12 min 34 s" in html and "mixed_bfloat16" in html
    assert "<b>8</b> images (5 train, 1 val, 2 test)" in html
    assert "1.700" in html and "0.081" in html and "0.023" in html
    assert "<b>sunrise</b> taken for <b>shine</b>: 1 image (33.3% of sunrise)" in html
    assert 'class="status promoted"' in html
    assert card.ATTRIBUTION in html


def test_html_escapes_text_and_loads_nothing_from_outside() -> None:
    html = card.render_html(_data())
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "incoming/cam-&lt;b&gt;1&lt;/b&gt;/" in html
    # No src/href to anything but embedded data: the hostile thumbnail URL was dropped.
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs and all(r.startswith("data:image/") for r in refs), refs
    assert "evil.example" not in html and "http://" not in html and "https://" not in html
    assert "@import" not in html and "url(" not in html
    # The thumbnail is a real JPEG no bigger than 160 px.
    jpeg = next(r for r in refs if r.startswith("data:image/jpeg"))
    with Image.open(io.BytesIO(base64.b64decode(jpeg.split(",", 1)[1]))) as im:
        assert im.format == "JPEG" and max(im.size) <= card.THUMBNAIL_PX


def test_html_and_markdown_without_calibration_or_champion() -> None:
    old = _without_extras(_data())
    html = card.render_html(old)
    for section in SECTIONS:
        assert f'<section id="{section}">' in html, section
    calibration = html[html.index('<section id="calibration">'):]
    assert "not recorded" in calibration[:400]
    assert "No champion to compare with" in html
    assert "Learning curve (train and val per epoch): not recorded" in html
    assert "Per-image test predictions: <span class=\"missing\">not recorded" in html
    assert card.ATTRIBUTION not in html  # no thumbnails, no attribution needed
    md = card.render_markdown(old)
    assert "## Calibration\n\nnot recorded" in md
    assert "No champion to compare with" in md
    assert "promoted: the first champion" in md


def test_markdown_has_the_tables_and_escapes() -> None:
    md = card.render_markdown(_data())
    for heading in ("Intended use", "Data", "Training recipe", "Test metrics", "Calibration",
                    "Comparison with the champion it replaced", "Decision", "Known weaknesses"):
        assert f"\n## {heading}\n" in md, heading
    assert "| shine | 10 | 2 | 3 | 15 |" in md
    assert "| sunrise | 1 | 2 | 0 | 0 |" in md  # a confusion-matrix row
    assert "| this model | 75.0% (46.8% to 91.1%) |" in md
    assert "<script" not in md and "&lt;script&gt;" in md
    assert "data:image" not in md  # figures live in the HTML card
    assert card.ATTRIBUTION in md


def test_lr_drops_and_seed_differences() -> None:
    assert card.lr_drops([1e-3, 1e-3, 1e-4, 1e-4, 1e-5]) == [
        {"epoch": 3, "lr": 1e-4, "from": 1e-3}, {"epoch": 5, "lr": 1e-5, "from": 1e-4}]
    assert card.lr_drops([]) == []
    params = {"model": "model_3", "image_size": "128", "epochs": "100", "learning_rate": "0.001",
              "tta_flip": "True", "lr_min": "1e-30"}
    assert card.differs_from_seed(params) == [
        {"name": "image_size", "value": "128", "seed": "250"},
        {"name": "tta_flip", "value": "True", "seed": "False"},
    ]


def test_confused_pairs_and_misclassified_order() -> None:
    pairs = card.confused_pairs([[5, 2, 0], [0, 4, 3], [1, 0, 6]], ["a", "b", "c"], top=2)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("b", "c", 3),
                                                                        ("a", "b", 2)]
    wrong = card.misclassified({"images": [
        {"sha256": "1", "label": "a", "source_keys": ["k1"],
         "challenger": {"predicted": "a", "confidence": 0.9}, "champion": None},
        {"sha256": "2", "label": "a", "source_keys": ["k2"],
         "challenger": {"predicted": "b", "confidence": 0.6}, "champion": None},
        {"sha256": "3", "label": "b", "source_keys": ["k3"],
         "challenger": {"predicted": None, "confidence": None}, "champion": None},
        {"sha256": "4", "label": "c", "source_keys": [],
         "challenger": {"predicted": "a", "confidence": 0.95}, "champion": None},
    ]})
    assert [w["sha256"] for w in wrong] == ["4", "2", "3"]
    assert wrong[1]["source_key"] == "k2" and wrong[0]["source_key"] is None


def _record(sha: str, split: str, label: str, first: str, keys: tuple[str, ...]
            ) -> manifest.ImageRecord:
    return manifest.ImageRecord(sha, sha, label, split, "jpg", "JPEG", 64, 64, keys,
                                "2026-01-01", first)


@pytest.mark.parametrize(("previous", "total"), [("v000001", 2), ("v000002", 1), ("v000003", 0)])
def test_new_since_counts_images_first_seen_later(previous: str, total: int) -> None:
    m = manifest.Manifest(
        version="v000003", parent="v000002", created_at="", classes=("a", "b"),
        split_ratios=(0.7, 0.15, 0.15), split_seed=1,
        images={s: _record(s, split, "a", first, (f"incoming/{s}.jpg",)) for s, split, first in
                [("1" * 64, "train", "v000001"), ("2" * 64, "test", "v000002"),
                 ("3" * 64, "train", "v000003")]},
    )
    assert card.new_since(m, previous)["total"] == total


def test_sources_group_by_folder() -> None:
    m = manifest.Manifest(
        version="v000001", parent=None, created_at="", classes=("a",),
        split_ratios=(0.7, 0.15, 0.15), split_seed=1,
        images={
            "1" * 64: _record("1" * 64, "train", "a", "v000001",
                              ("incoming/cam1/x.jpg", "incoming/cam2/x.jpg")),
            "2" * 64: _record("2" * 64, "train", "a", "v000001", ("incoming/cam1/y.jpg",)),
            "3" * 64: _record("3" * 64, "val", "a", "v000001", ("incoming/z.jpg",)),
        },
    )
    assert card.sources(m, "incoming/") == [
        {"prefix": "incoming/cam1/", "images": 2}, {"prefix": "incoming/", "images": 1},
        {"prefix": "incoming/cam2/", "images": 1}]


def test_cli_card_refuses_a_version_and_a_run_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from weather_tasks import cli

    monkeypatch.setenv("WEATHER_MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert cli.main(["card", "3", "--run", "a" * 32]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "weather card: error: give a VERSION or --run RUN_ID, not both"]
