"""The training run's figures render as PNG; the learning curve says what it shows (a title,
the restored epoch, the LR drops) and its legend covers no data (checked on the figure's
structure, not its pixels)."""

from __future__ import annotations

import io

import numpy as np

from weather_tasks import plots

HISTORY = {
    "accuracy": [0.5, 0.7, 0.8, 0.85, 0.9],
    "val_accuracy": [0.4, 0.6, 0.7, 0.75, 0.75],  # first maximum: epoch 4
    "loss": [1.2, 0.8, 0.6, 0.5, 0.4],
    "val_loss": [1.3, 0.9, 0.7, 0.72, 0.8],
    "learning_rate": [1e-3, 1e-3, 1e-4, 1e-4, 1e-5],  # epochs 3 and 5 start lower
}


def _png(fig: object) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # type: ignore[attr-defined]
    return buf.getvalue()


def test_plots_render_as_png() -> None:
    figures = [
        plots.learning_curve_figure(HISTORY, title="m"),
        plots.confusion_matrix_figure(np.array([[3, 1], [0, 4]]), ("a", "b"), "test"),
    ]
    for fig in figures:
        assert _png(fig)[:8] == b"\x89PNG\r\n\x1a\n"
    assert figures[1].axes[0].get_title() == "confusion matrix (test, n=8)"


def test_learning_curve_titles_and_series() -> None:
    fig = plots.learning_curve_figure(HISTORY, title="mobilenet_v3_small, 224 px, v000003")
    acc_ax, loss_ax, lr_ax = fig.axes
    assert fig.get_suptitle() == "mobilenet_v3_small, 224 px, v000003"
    assert acc_ax.get_title() == "accuracy" and loss_ax.get_title() == "loss and learning rate"
    labels = [line.get_label() for line in acc_ax.get_lines()]
    assert labels[:2] == ["train acc", "val acc"]
    assert list(acc_ax.get_lines()[1].get_ydata()) == HISTORY["val_accuracy"]
    # The learning rate on its own log axis, every epoch's value.
    (lr_line,) = lr_ax.get_lines()
    assert lr_ax.get_yscale() == "log"
    assert list(lr_line.get_ydata()) == HISTORY["learning_rate"]


def _vertical_lines(ax: object, colour: str) -> list[tuple[float, str]]:
    """(x, label) of the axes' vertical lines of one colour (both ends at one x)."""
    out = []
    for line in ax.get_lines():  # type: ignore[attr-defined]
        x = list(line.get_xdata())
        if len(x) == 2 and x[0] == x[1] and line.get_color() == colour:
            out.append((float(x[0]), line.get_label()))
    return out


def test_learning_curve_marks_the_restored_epoch_and_lr_drops() -> None:
    fig = plots.learning_curve_figure(HISTORY)
    acc_ax, loss_ax, _ = fig.axes
    # The first maximum of val_accuracy (epoch 4, not the tie at 5), on both panels.
    best = plots.BEST_EPOCH_COLOUR
    assert _vertical_lines(acc_ax, best) == [(4.0, "best epoch 4 (weights restored)")]
    assert [x for x, _ in _vertical_lines(loss_ax, best)] == [4.0]
    # Each epoch that starts at a lower rate has a dotted line on both panels, in the legend
    # once.
    for ax in (acc_ax, loss_ax):
        assert [x for x, _ in _vertical_lines(ax, plots.LR_COLOUR)] == [3.0, 5.0]
    assert [label for _, label in _vertical_lines(acc_ax, plots.LR_COLOUR)] == [
        "LR drop", "_nolegend_"
    ]


def test_learning_curve_legend_is_outside_the_axes() -> None:
    fig = plots.learning_curve_figure(HISTORY)
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == ["train acc", "val acc", "best epoch 4 (weights restored)", "LR drop",
                     "train loss", "val loss", "learning rate (right axis)"]
    # Drawn, the legend lies below every axes: it hides no point.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    legend_top = legend.get_window_extent(renderer).y1
    assert all(legend_top <= ax.get_window_extent(renderer).y0 for ax in fig.axes)


def test_learning_curve_without_learning_rate() -> None:
    """A history without the LR (as logged before it was recorded) still gets a curve."""
    history = {k: v for k, v in HISTORY.items() if k != "learning_rate"}
    fig = plots.learning_curve_figure(history)
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "loss"
    assert _png(fig)[:4] == b"\x89PNG"
