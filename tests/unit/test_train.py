"""Pure parts of the training stage: precision choice, class report, settings digest, plots."""

from __future__ import annotations

import io

import numpy as np
import pytest

from weather_tasks import config, train


@pytest.mark.parametrize(
    ("requested", "has_gpu", "expected"),
    [
        ("auto", True, "mixed_float16"),
        ("auto", False, "float32"),
        ("float32", True, "float32"),
        ("mixed_bfloat16", False, "mixed_bfloat16"),
        ("mixed_float16", True, "mixed_float16"),
    ],
)
def test_resolve_precision(requested: str, has_gpu: bool, expected: str) -> None:
    assert train.resolve_precision(requested, has_gpu) == expected


def test_class_report_counts_precision_recall_f1() -> None:
    y_true = np.array([0, 0, 1, 2, 3, 3])
    y_pred = np.array([0, 1, 1, 2, 3, 2])
    r = train.class_report(y_true, y_pred, ["a", "b", "c", "d"])
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["confusion_matrix"] == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    assert r["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3),
                                   "support": 2}
    assert r["per_class"]["c"]["precision"] == 0.5 and r["per_class"]["c"]["recall"] == 1.0


def test_class_report_survives_a_class_never_predicted_or_present() -> None:
    r = train.class_report(np.array([0, 0]), np.array([0, 0]), ["a", "b"])
    assert r["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({"mlflow_tracking_uri": "http://elsewhere:5000"}, True),
        ({"bucket": "other-bucket", "parallelism": 2}, True),
        ({"epochs": 99}, False),
        ({"image_size": 128}, False),
        ({"precision": "mixed_bfloat16"}, False),
        ({"seed": 1}, False),
    ],
)
def test_settings_digest_tracks_only_what_changes_the_model(
    change: dict[str, object], same: bool
) -> None:
    base = config.from_env(environ={})
    changed = config.override(base, **change)
    digest_equal = train.training_settings_digest(base) == train.training_settings_digest(changed)
    assert digest_equal is same


def test_plots_render_as_png() -> None:
    history = {"accuracy": [0.5, 0.7], "val_accuracy": [0.4, 0.6], "loss": [1.2, 0.8],
               "val_loss": [1.3, 0.9], "learning_rate": [1e-3, 1e-4]}
    figures = [
        train.learning_curve_figure(history),
        train.confusion_matrix_figure(np.array([[3, 1], [0, 4]]), ("a", "b"), "val"),
    ]
    for fig in figures:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [line.get_label() for line in figures[0].axes[0].get_lines()] == ["train acc", "val acc"]
