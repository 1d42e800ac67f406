"""The training run's figures render as PNG, with the seed's learning-curve lines."""

from __future__ import annotations

import io

import numpy as np

from weather_tasks import plots


def test_plots_render_as_png() -> None:
    history = {"accuracy": [0.5, 0.7], "val_accuracy": [0.4, 0.6], "loss": [1.2, 0.8],
               "val_loss": [1.3, 0.9], "learning_rate": [1e-3, 1e-4]}
    figures = [
        plots.learning_curve_figure(history),
        plots.confusion_matrix_figure(np.array([[3, 1], [0, 4]]), ("a", "b"), "val"),
    ]
    for fig in figures:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [line.get_label() for line in figures[0].axes[0].get_lines()] == ["train acc", "val acc"]
