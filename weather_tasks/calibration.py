"""Calibrated probabilities: temperature scaling, expected calibration error, reliability bins.

Pure numpy/scipy, no Keras or MLflow. A classifier is calibrated when, among the images it
gives probability ``p`` for its answer, a fraction ``p`` is right; batch-normalized CNNs
trained with cross-entropy are usually over-confident. Temperature scaling (Guo et al. 2017,
"On Calibration of Modern Neural Networks") divides the logits by one scalar ``T`` fitted on
held-out data by minimizing the negative log-likelihood: ``T > 1`` softens over-confident
probabilities, ``T < 1`` sharpens. It never changes the predicted class (argmax is invariant),
so accuracy and the promotion rule are unaffected; only what ``prob_*`` mean changes.

The models output softmax probabilities, so the logits are recovered as ``log(p)`` (up to an
additive constant per row, which softmax ignores): ``softmax(log(p) / T)``.

Expected calibration error (ECE): the images are put in ``bins`` equal-width bins of their
confidence (the top probability); ECE is the image-weighted mean over bins of
``|accuracy(bin) - mean confidence(bin)|``. 15 bins, as Guo et al.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ECE_BINS = 15
# Fewer val images than this give a temperature too noisy to apply (fit_temperature keeps 1).
MIN_FIT_IMAGES = 20
# Temperatures outside this range mean the fit failed (or the data is degenerate).
_T_BOUNDS = (0.05, 20.0)
_EPS = 1e-12


def apply_temperature(probs: Any, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / temperature)`` row by row; NaN rows stay NaN."""
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return p
    logits = np.log(np.clip(p, _EPS, 1.0)) / temperature
    logits -= np.max(logits, axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


def fit_temperature(probs: Any, labels: Sequence[int]) -> float:
    """The temperature minimizing the mean negative log-likelihood of ``labels`` (class
    indices) under ``apply_temperature(probs, T)``. Rows with NaN are ignored.

    The answer is 1.0 (no change) where a fit would mislead: fewer than
    :data:`MIN_FIT_IMAGES` usable rows or a single class present; no misclassified row (the
    likelihood then keeps growing as ``T`` shrinks, so the fit would sharpen every answer
    towards certainty from a handful of easy images); or an optimum on a bound of the search
    range (no interior minimum: the data cannot place ``T``).
    """
    from scipy.optimize import minimize_scalar

    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if p.size == 0:  # also ``[]``, which has no class axis to check rows along
        return 1.0
    ok = np.isfinite(p).all(axis=1)
    p, y = p[ok], y[ok]
    if len(y) < MIN_FIT_IMAGES or len(np.unique(y)) < 2 or (p.argmax(axis=1) == y).all():
        return 1.0
    logp = np.log(np.clip(p, _EPS, 1.0))

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z -= z.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(z).sum(axis=1))
        return float(np.mean(log_norm - z[np.arange(len(y)), y]))

    lo, hi = np.log(_T_BOUNDS[0]), np.log(_T_BOUNDS[1])
    res = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    t = float(np.exp(res.x))
    if not _T_BOUNDS[0] * 1.01 < t < _T_BOUNDS[1] / 1.01:
        return 1.0
    return t


def reliability_bins(
    probs: Any, labels: Sequence[int], bins: int = ECE_BINS
) -> list[dict[str, Any]]:
    """Per confidence bin ``[low, high)`` (the last closed): images, accuracy, mean confidence
    (None for an empty bin). NaN rows are ignored."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    ok = np.isfinite(p).all(axis=1) if p.size else np.zeros(0, dtype=bool)
    p, y = p[ok], y[ok]
    conf = p.max(axis=1) if len(p) else np.zeros(0)
    right = (p.argmax(axis=1) == y) if len(p) else np.zeros(0, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=False), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        out.append({
            "low": float(edges[b]),
            "high": float(edges[b + 1]),
            "count": n,
            "accuracy": float(right[mask].mean()) if n else None,
            "confidence": float(conf[mask].mean()) if n else None,
        })
    return out


def expected_calibration_error(probs: Any, labels: Sequence[int], bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width confidence bins (NaN with no usable row)."""
    rows = reliability_bins(probs, labels, bins)
    total = sum(r["count"] for r in rows)
    if total == 0:
        return float("nan")
    return float(sum(
        r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"]
    ) / total)


def label_indices(labels: Sequence[str], classes: Sequence[str]) -> list[int]:
    """Class indices of ``labels`` in ``classes`` order."""
    index = {c: i for i, c in enumerate(classes)}
    return [index[label] for label in labels]
