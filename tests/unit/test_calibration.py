"""Temperature scaling, ECE and reliability bins on synthetic probabilities whose calibration
is known: labels are drawn from ``softmax(z)``, so ``softmax(z)`` is perfectly calibrated and
``softmax(z * s)`` is over-confident for ``s > 1`` (the temperature that undoes it is ``s``)."""

from __future__ import annotations

import numpy as np
import pytest

from weather_tasks import calibration

N, K = 20_000, 4


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _synthetic(seed: int = 0, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from their softmax (the true class probabilities)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, (n, K))
    p = _softmax(z)
    labels = (rng.random((n, 1)) > p.cumsum(axis=1)).sum(axis=1)
    return z, np.minimum(labels, K - 1)


@pytest.mark.parametrize("scale", [2.0, 3.0, 0.5, 1.0])
def test_fit_recovers_the_temperature_that_distorted_calibrated_probabilities(
    scale: float,
) -> None:
    z, labels = _synthetic()
    fitted = calibration.fit_temperature(_softmax(z * scale), labels)
    assert fitted == pytest.approx(scale, rel=0.06)


@pytest.mark.parametrize("temperature", [0.3, 0.7, 1.5, 2.0, 10.0])
def test_temperature_keeps_the_answer_and_rows_summing_to_one(temperature: float) -> None:
    z, _ = _synthetic(n=500)
    probs = _softmax(z)
    scaled = calibration.apply_temperature(probs, temperature)
    assert (scaled.argmax(axis=1) == probs.argmax(axis=1)).all()
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0, atol=1e-12)
    # Above 1 softens (lower top probability), below 1 sharpens.
    top, scaled_top = probs.max(axis=1), scaled.max(axis=1)
    assert ((scaled_top < top) if temperature > 1 else (scaled_top > top)).all()


def test_temperature_scaling_is_softmax_of_the_logits_divided_by_t() -> None:
    z, _ = _synthetic(n=200)
    np.testing.assert_allclose(calibration.apply_temperature(_softmax(z), 1.7),
                               _softmax(z / 1.7), atol=1e-9)


def test_temperature_one_is_the_identity() -> None:
    probs = _softmax(_synthetic(n=100)[0])
    np.testing.assert_array_equal(calibration.apply_temperature(probs, 1.0), probs)


def test_a_nan_row_stays_nan_and_the_others_are_scaled() -> None:
    probs = np.array([[0.7, 0.2, 0.05, 0.05], [np.nan] * 4])
    scaled = calibration.apply_temperature(probs, 2.0)
    assert np.isnan(scaled[1]).all()
    assert np.isfinite(scaled[0]).all() and scaled[0].max() < 0.7


def test_nan_rows_are_ignored_by_the_fit_and_by_ece() -> None:
    z, labels = _synthetic(n=5000)
    probs = _softmax(z * 2.0)
    with_nan = np.vstack([probs, np.full((300, K), np.nan)])
    labels_nan = np.concatenate([labels, np.zeros(300, dtype=labels.dtype)])
    assert calibration.fit_temperature(with_nan, labels_nan) == pytest.approx(
        calibration.fit_temperature(probs, labels), rel=1e-6)
    assert calibration.expected_calibration_error(with_nan, labels_nan) == pytest.approx(
        calibration.expected_calibration_error(probs, labels))
    bins = calibration.reliability_bins(with_nan, labels_nan)
    assert sum(b["count"] for b in bins) == len(probs)


@pytest.mark.parametrize(
    ("probs", "labels"),
    [
        ([], []),
        (np.zeros((0, K)), []),
        (np.full((3, K), np.nan), [0, 1, 2]),
        ([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]], [0, 0, 0]),  # one class present: nothing to fit
    ],
)
def test_nothing_to_fit_gives_temperature_one(probs: object, labels: list[int]) -> None:
    assert calibration.fit_temperature(probs, labels) == 1.0


@pytest.mark.parametrize(
    ("probs", "labels"), [([], []), (np.zeros((0, K)), []), (np.full((2, K), np.nan), [0, 1])]
)
def test_ece_without_a_usable_row_is_nan(probs: object, labels: list[int]) -> None:
    assert np.isnan(calibration.expected_calibration_error(probs, labels))


@pytest.mark.parametrize(
    ("scale", "low", "high"),
    [
        (1.0, 0.0, 0.02),  # calibrated: only sampling noise
        (3.0, 0.12, 1.0),  # over-confident
        (0.4, 0.12, 1.0),  # under-confident
    ],
)
def test_ece_is_small_for_calibrated_and_large_for_distorted_probabilities(
    scale: float, low: float, high: float
) -> None:
    z, labels = _synthetic()
    assert low <= calibration.expected_calibration_error(_softmax(z * scale), labels) <= high


@pytest.mark.parametrize("scale", [2.0, 3.0, 0.5])
def test_fitting_the_temperature_brings_ece_down_to_noise(scale: float) -> None:
    z, labels = _synthetic()
    probs = _softmax(z * scale)
    before = calibration.expected_calibration_error(probs, labels)
    after = calibration.expected_calibration_error(
        calibration.apply_temperature(probs, calibration.fit_temperature(probs, labels)), labels)
    assert after < 0.02 < before


def test_reliability_bins_cover_the_rows_and_the_last_bin_holds_certainty() -> None:
    z, labels = _synthetic(n=1000)
    probs = np.vstack([_softmax(z), [[1.0, 0.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, 0.0]]])
    labels = np.concatenate([labels, [0, 1]])
    bins = calibration.reliability_bins(probs, labels, bins=10)
    assert len(bins) == 10
    assert sum(b["count"] for b in bins) == len(probs)
    assert bins[0]["low"] == 0.0 and bins[-1]["high"] == 1.0
    assert all(a["high"] == pytest.approx(b["low"]) for a, b in zip(bins, bins[1:], strict=False))
    # Every bin's images have confidences inside it; confidence 1.0 is in the last, closed bin.
    for b in bins:
        if b["count"]:
            assert b["low"] <= b["confidence"] <= b["high"]
    assert bins[-1]["count"] >= 2 and bins[-1]["confidence"] > 0.9


def test_reliability_bins_accuracy_is_the_share_of_right_answers() -> None:
    probs = [[0.95, 0.05], [0.95, 0.05], [0.05, 0.95], [0.55, 0.45], [0.45, 0.55]]
    labels = [0, 1, 1, 0, 0]
    bins = calibration.reliability_bins(probs, labels, bins=2)
    assert bins[0]["count"] == 0 and bins[0]["accuracy"] is None
    assert bins[1]["count"] == 5
    assert bins[1]["accuracy"] == pytest.approx(3 / 5)
    assert bins[1]["confidence"] == pytest.approx((0.95 * 3 + 0.55 * 2) / 5)
    assert calibration.expected_calibration_error(probs, labels, bins=2) == pytest.approx(
        abs(3 / 5 - (0.95 * 3 + 0.55 * 2) / 5))


def test_label_indices_follow_the_class_order() -> None:
    assert calibration.label_indices(["rain", "cloudy", "rain"], ["cloudy", "rain"]) == [1, 0, 1]


def test_no_fit_from_too_few_images_or_without_a_single_mistake() -> None:
    """Degenerate fits keep T = 1: a handful of images, or a val split with no wrong answer
    (the likelihood then grows without end as T shrinks: certainty from easy images)."""
    z, labels = _synthetic(seed=3, n=4000)
    probs = _softmax(z * 2.0)  # over-confident: the fit undoes it with T = 2
    assert calibration.fit_temperature(probs, labels) == pytest.approx(2.0, rel=0.1)
    few = calibration.MIN_FIT_IMAGES - 1
    assert calibration.fit_temperature(probs[:few], labels[:few]) == 1.0
    right = probs.argmax(axis=1) == labels
    assert right.sum() >= calibration.MIN_FIT_IMAGES and not right.all()
    assert calibration.fit_temperature(probs[right], labels[right]) == 1.0
