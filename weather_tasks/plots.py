"""The pipeline's figures: training curves, confusion, reliability, drift (no pyplot).

Figures are built with ``matplotlib.figure.Figure`` directly: no pyplot, so no global figure
state and no GUI backend in a worker process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

BEST_EPOCH_COLOUR = "tab:green"
LR_COLOUR = "0.35"


def learning_curve_figure(
    history: dict[str, list[float]], *, title: str = "learning curve"
) -> Any:
    """Train vs val accuracy and loss per epoch, the restored epoch marked, the LR drops shown.

    The best epoch is the first maximum of ``val_accuracy``: the epoch whose weights
    ``ModelCheckpoint(save_best_only=True, mode="max")`` kept and training restored. The
    learning rate (``history["learning_rate"]``, at each epoch's start) is drawn on a log
    axis of the loss panel, with a dotted vertical line at each epoch that started with a
    lower rate than the one before. One legend for both panels sits below them, so it hides
    no point.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 5), layout="constrained")
    fig.suptitle(title)
    acc_ax, loss_ax = fig.subplots(1, 2)
    epochs = np.arange(1, len(history["accuracy"]) + 1)
    best = int(np.argmax(history["val_accuracy"])) + 1
    panels = ((acc_ax, "accuracy", "acc"), (loss_ax, "loss", "loss"))
    for ax, key, short in panels:
        ax.plot(epochs, history[key], ".-", label=f"train {short}")
        ax.plot(epochs, history[f"val_{key}"], ".-", label=f"val {short}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    # A label only on the first panel: the figure legend lists each line once.
    acc_ax.axvline(best, color=BEST_EPOCH_COLOUR, linestyle="--",
                   label=f"best epoch {best} (weights restored)")
    loss_ax.axvline(best, color=BEST_EPOCH_COLOUR, linestyle="--")
    acc_ax.annotate(
        f"{history['val_accuracy'][best - 1]:.3f}", (best, history["val_accuracy"][best - 1]),
        xytext=(-4, 4), textcoords="offset points", ha="right", color=BEST_EPOCH_COLOUR,
    )
    if history.get("learning_rate"):
        lr = np.asarray(history["learning_rate"], dtype=float)
        loss_ax.set_title("loss and learning rate")
        lr_ax = loss_ax.twinx()
        lr_ax.step(epochs, lr, where="post", color=LR_COLOUR, linestyle=":",
                   label="learning rate (right axis)")
        lr_ax.set_yscale("log")
        lr_ax.set_ylabel("learning rate")
        drops = np.flatnonzero(lr[1:] < lr[:-1]) + 2  # 1-based epochs that start lower
        for epoch in drops:
            label = "LR drop" if epoch == drops[0] else "_nolegend_"
            acc_ax.axvline(epoch, color=LR_COLOUR, linestyle=":", linewidth=1, label=label)
            loss_ax.axvline(epoch, color=LR_COLOUR, linestyle=":", linewidth=1)
            lr_ax.annotate(f"{lr[epoch - 1]:.0e}", (epoch, lr[epoch - 1]), xytext=(3, -12),
                           textcoords="offset points", color=LR_COLOUR, fontsize=8)
    handles = [h for ax in fig.axes for h in ax.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
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


def reliability_figure(
    curves: dict[str, Sequence[dict[str, Any]]], *, title: str = "reliability"
) -> Any:
    """Reliability diagram: accuracy against mean confidence per confidence bin, one line per
    curve (e.g. ``{"uncalibrated (ECE 0.081)": bins, "T=1.7 (ECE 0.023)": bins}``, the bins
    of :func:`weather_tasks.calibration.reliability_bins`), the diagonal for perfect
    calibration, and the images per bin as bars on a second axis."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect")
    counts_ax = ax.twinx()
    for k, (name, bins) in enumerate(curves.items()):
        filled = [b for b in bins if b["count"]]
        ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], "o-",
                label=name, markersize=4)
        if k == 0:
            centres = [(b["low"] + b["high"]) / 2 for b in bins]
            widths = [b["high"] - b["low"] for b in bins]
            counts_ax.bar(centres, [b["count"] for b in bins], width=widths, color="0.85",
                          zorder=0)
    counts_ax.set_ylabel("images per bin")
    ax.set_zorder(counts_ax.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def drift_figure(
    new: Sequence[dict[str, float]],
    reference: Sequence[dict[str, float]],
    *,
    confidences: Sequence[float] = (),
    class_mix_new: dict[str, float] | None = None,
    class_mix_reference: dict[str, float] | None = None,
    mmd_p: float | None = None,
    title: str = "drift",
) -> Any:
    """The night's new photos against the reference: one density histogram per image statistic
    (keys of the first row, e.g. ``weather_tasks.screen.STATISTICS``), then, with a champion,
    the confidence of the new photos and the predicted-class mix of both. The embedding MMD
    permutation p-value is in the title ("not tested" without a champion)."""
    from matplotlib.figure import Figure

    names = list(new[0]) if new else list(reference[0]) if reference else []
    champion = bool(confidences) or bool(class_mix_new)
    panels = len(names) + (2 if champion else 0)
    cols = 4
    rows = max(1, -(-panels // cols))
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows), layout="constrained")
    p_text = "not tested" if mmd_p is None else f"{mmd_p:.3g}"
    fig.suptitle(f"{title}: {len(new)} new vs {len(reference)} reference photos; "
                 f"embedding MMD p = {p_text}")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, name in zip(axes, names, strict=False):
        a = np.array([s[name] for s in new])
        b = np.array([s[name] for s in reference])
        both = np.concatenate([a, b])
        low, high = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
        bins = np.linspace(low, high if high > low else low + 1, 16)
        ax.hist(b, bins=bins, density=True, alpha=0.5, label="reference", color="tab:blue")
        ax.hist(a, bins=bins, density=True, alpha=0.5, label="new", color="tab:orange")
        ax.set_title(name)
        ax.legend(fontsize=7)
    used = len(names)
    if champion:
        ax = axes[used]
        ax.hist(list(confidences), bins=np.linspace(0, 1, 11), color="tab:orange")
        ax.set_title("champion confidence (new)")
        ax.set_xlabel("top probability")
        ax = axes[used + 1]
        classes = list((class_mix_new or class_mix_reference or {}).keys())
        x = np.arange(len(classes))
        ax.bar(x - 0.2, [(class_mix_reference or {}).get(c, 0) for c in classes], 0.4,
               label="reference", color="tab:blue")
        ax.bar(x + 0.2, [(class_mix_new or {}).get(c, 0) for c in classes], 0.4,
               label="new", color="tab:orange")
        ax.set_xticks(x, classes, rotation=30)
        ax.set_title("predicted classes")
        ax.legend(fontsize=7)
        used += 2
    for ax in axes[used:]:
        ax.set_visible(False)
    return fig
