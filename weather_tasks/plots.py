"""The training run's figures: learning curve and confusion matrix (matplotlib, no pyplot).

Figures are built with ``matplotlib.figure.Figure`` directly: no pyplot, so no global figure
state and no GUI backend in a worker process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def learning_curve_figure(history: dict[str, list[float]]) -> Any:
    """The seed's ``train_curve_graph`` (train vs val accuracy) plus loss and learning rate."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    epochs = np.arange(1, len(history["accuracy"]) + 1)
    acc_ax.plot(epochs, history["accuracy"], label="train acc")
    acc_ax.plot(epochs, history["val_accuracy"], label="val acc")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy")
    acc_ax.legend(loc="lower left")
    loss_ax.plot(epochs, history["loss"], label="train loss")
    loss_ax.plot(epochs, history["val_loss"], label="val loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend(loc="upper right")
    if history.get("learning_rate"):
        lr_ax = loss_ax.twinx()
        lr_ax.semilogy(epochs, history["learning_rate"], "k:", label="learning rate")
        lr_ax.set_ylabel("learning rate (dotted)")
    return fig


def confusion_matrix_figure(cm: np.ndarray, classes: Sequence[str], split: str) -> Any:
    """Counts per (true row, predicted column), annotated, titled with the split and n."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({split}, n={int(cm.sum())})")
    threshold = cm.max() / 2 if cm.size and cm.max() else 0
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if v > threshold else "black")
    return fig
