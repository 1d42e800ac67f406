"""The screening's pure parts: the MMD permutation test, image statistics, the suspect finder on
crafted probabilities, the hold rule, the samples of a manifest, the report dict and figure."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from weather_tasks import config, plots, screen
from weather_tasks.manifest import ImageRecord, Manifest

CLASSES = ("shine", "sunrise", "cloudy", "rain")


# --- MMD -------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mmd_same_distribution_is_not_significant(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(30, 8)), rng.normal(size=(120, 8))
    mmd2, p = screen.mmd_permutation_test(x, y, n_permutations=300)
    assert p > 0.05
    assert mmd2 >= 0


@pytest.mark.parametrize(("shift", "n_new"), [(1.0, 30), (3.0, 5)])
def test_mmd_shifted_distribution_is_significant(shift: float, n_new: int) -> None:
    rng = np.random.default_rng(7)
    x, y = rng.normal(loc=shift, size=(n_new, 8)), rng.normal(size=(120, 8))
    _, p = screen.mmd_permutation_test(x, y, n_permutations=300)
    assert p < 0.01


def test_mmd_p_value_is_never_zero_and_is_seeded() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(loc=10, size=(20, 4)), rng.normal(size=(20, 4))
    first = screen.mmd_permutation_test(x, y, n_permutations=99, seed=5)
    assert first[1] == pytest.approx(1 / 100)  # no permutation reaches a huge shift
    assert screen.mmd_permutation_test(x, y, n_permutations=99, seed=5) == first


def test_mmd_identical_points() -> None:
    x = np.ones((4, 3))
    mmd2, p = screen.mmd_permutation_test(x, x.copy(), n_permutations=50)
    assert mmd2 == pytest.approx(0.0)
    assert p == 1.0


def test_mmd_needs_both_samples() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        screen.mmd_permutation_test(np.zeros((0, 2)), np.ones((3, 2)))


# --- image statistics ------------------------------------------------------------------------
def _jpeg(rgb: tuple[int, int, int], size: tuple[int, int] = (40, 20), fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, rgb).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    ("rgb", "brightness", "saturation"),
    [((0, 0, 0), 0.0, 0.0), ((255, 255, 255), 1.0, 0.0), ((128, 128, 128), 128 / 255, 0.0),
     ((255, 0, 0), 76 / 255, 1.0)],  # PIL's ITU-R 601 luma of pure red: 76
)
def test_image_statistics(rgb: tuple[int, int, int], brightness: float,
                          saturation: float) -> None:
    stats = screen.image_statistics(_jpeg(rgb))
    assert stats["brightness"] == pytest.approx(brightness, abs=1e-3)
    assert stats["saturation"] == pytest.approx(saturation, abs=1e-3)
    assert stats["contrast"] == pytest.approx(0.0, abs=1e-6)  # flat image
    assert (stats["width"], stats["height"], stats["aspect"]) == (40, 20, 2.0)


def test_image_statistics_contrast_of_a_half_black_half_white_image() -> None:
    img = Image.new("RGB", (20, 20), (0, 0, 0))
    img.paste((255, 255, 255), (10, 0, 20, 20))
    out = io.BytesIO()
    img.save(out, format="PNG")
    assert screen.image_statistics(out.getvalue())["contrast"] == pytest.approx(0.5, abs=1e-3)


def test_compare_statistics_flags_a_brightness_shift_only() -> None:
    rng = np.random.default_rng(0)

    def rows(mean: float, n: int) -> list[dict[str, float]]:
        return [{"brightness": b, "contrast": 0.2, "saturation": 0.3, "width": 100.0,
                 "height": 50.0, "aspect": 2.0} for b in rng.normal(mean, 0.05, n)]

    shifts = {s.name: s for s in screen.compare_statistics(rows(0.2, 20), rows(0.5, 100))}
    assert list(shifts) == list(screen.STATISTICS)
    assert shifts["brightness"].ks_p < 1e-6
    assert shifts["brightness"].new_mean == pytest.approx(0.2, abs=0.05)
    assert shifts["width"].ks_p == 1.0  # identical values: nothing to tell apart


# --- suspect labels --------------------------------------------------------------------------
def _probs(rng: np.random.Generator, label: int, confidence: float) -> np.ndarray:
    p = rng.dirichlet(np.ones(len(CLASSES))) * (1 - confidence)
    p[label] += confidence
    return p


def _reference(rng: np.random.Generator, per_class: int = 40) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    return labels, np.array([_probs(rng, int(c), rng.uniform(0.5, 0.99)) for c in labels])


def test_find_suspects_finds_planted_wrong_labels_only() -> None:
    rng = np.random.default_rng(1)
    ref_labels, ref_probs = _reference(rng)
    true = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 2])
    given = true.copy()
    planted = [1, 4, 7]
    given[planted] = (true[planted] + 2) % len(CLASSES)
    probs = np.array([_probs(rng, int(t), 0.95) for t in true])
    flags, quality, method = screen.find_suspects(given, probs, ref_labels, ref_probs)
    assert method == "cleanlab confident learning"
    assert sorted(np.flatnonzero(flags).tolist()) == planted
    assert (quality[planted] < 0.1).all()


def test_find_suspects_tiny_night_and_absent_classes() -> None:
    """One photo, of a class the reference lacks (rain): still judged, with cleanlab."""
    rng = np.random.default_rng(2)
    ref_labels, ref_probs = _reference(rng)
    keep = ref_labels != 3
    wrong = screen.find_suspects(np.array([3]), np.array([[0.96, 0.02, 0.01, 0.01]]),
                                 ref_labels[keep], ref_probs[keep])
    right = screen.find_suspects(np.array([0]), np.array([[0.96, 0.02, 0.01, 0.01]]),
                                 ref_labels[keep], ref_probs[keep])
    assert wrong[0].tolist() == [True]
    assert right[0].tolist() == [False]
    assert wrong[2] == "cleanlab confident learning"


def test_find_suspects_not_confident_is_not_suspect() -> None:
    """A label the champion doubts but does not confidently contradict is left alone."""
    rng = np.random.default_rng(3)
    ref_labels, ref_probs = _reference(rng)
    flags, _, _ = screen.find_suspects(np.array([0]), np.array([[0.3, 0.4, 0.2, 0.1]]),
                                       ref_labels, ref_probs)
    assert flags.tolist() == [False]


def test_find_suspects_empty_night() -> None:
    flags, quality, method = screen.find_suspects(np.zeros(0, dtype=int), np.zeros((0, 4)),
                                                  np.array([0]), np.array([[1.0, 0, 0, 0]]))
    assert flags.size == 0 and quality.size == 0 and method == "none"


# --- hold rule -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("threshold", "p", "held"),
    [(0.0, 0.0001, False), (0.01, 0.002, True), (0.01, 0.01, False), (0.01, 0.5, False),
     (0.05, None, False)],
)
def test_drift_hold_reason(threshold: float, p: float | None, held: bool) -> None:
    cfg = config.from_env(environ={}, drift_hold_p_value=threshold)
    reason = screen.drift_hold_reason(cfg, p, 12, "v000003")
    assert (reason is not None) == held
    if reason:
        assert "\n" not in reason
        assert "12 new photos" in reason and "v000003" in reason
        assert "`weather promote <run id>` promotes anyway" in reason


# --- samples of a manifest -------------------------------------------------------------------
def _record(i: int, split: str, first_version: str, label: str = "shine") -> ImageRecord:
    sha = f"{i:064x}"
    return ImageRecord(sha256=sha, stored_sha256=sha, label=label, split=split, ext="jpg",
                       format="JPEG", width=10, height=10, source_keys=(f"incoming/{i}.jpg",),
                       first_seen="", first_version=first_version)


def test_new_photos_and_reference_sample() -> None:
    records = [_record(1, "train", "v000001"), _record(2, "val", "v000001"),
               _record(3, "train", "v000002"), _record(4, "test", "v000003"),
               _record(5, "train", "v000003"), _record(6, "train", "v000002")]
    m = Manifest(version="v000003", parent="v000002", created_at="", classes=CLASSES,
                 split_ratios=(0.7, 0.15, 0.15), split_seed=1,
                 images={r.sha256: r for r in records})
    assert [r.sha256[-1] for r in screen.new_photos(m, "v000003")] == ["4", "5"]
    assert [r.sha256[-1] for r in screen.reference_sample(m, "v000003")] == ["1", "3", "6"]
    assert [r.sha256[-1] for r in screen.reference_sample(m, "v000003", limit=2)] == ["1", "3"]
    assert screen.reference_sample(m, "v000001") == []


# --- the report ------------------------------------------------------------------------------
def _report(**changes: object) -> screen.ScreenReport:
    base = screen.ScreenReport(
        screened_version="v000002", manifest_version="v000003", n_new=3, n_reference=40,
        statistics=(screen.StatisticShift("brightness", 0.2, 0.5, 0.001),),
        champion_version="4", mmd2=0.3, mmd_p=0.002,
        class_mix_new=dict.fromkeys(CLASSES, 0.25),
        class_mix_reference=dict.fromkeys(CLASSES, 0.25),
        confidence={"mean": 0.8, "q25": 0.7, "median": 0.8, "q75": 0.9},
        suspects=(screen.Suspect("a" * 64, "rain", "shine", 0.97, 0.01, "train",
                                 ("incoming/rain_1.jpg",), True),
                  screen.Suspect("b" * 64, "rain", "shine", 0.95, 0.02, "test",
                                 ("incoming/rain_2.jpg",), False)),
        suspect_method="cleanlab confident learning", hold_reason="drift: ...", run_id="r1",
    )
    return screen._replace(base, **changes)


def test_report_dict_is_small_and_round_trips() -> None:
    report = _report()
    small = report.as_dict()
    assert small["n_suspects"] == 2 and small["held"] == 1
    assert small["manifest_version"] == "v000003" and small["screened_version"] == "v000002"
    assert "suspects" not in small and "statistics" not in small
    assert screen.ScreenReport.from_full_dict(report.full_dict()) == report
    text = report.summary()
    assert "HOLD: drift" in text and "[held]" in text and "permutation p 0.002" in text


def test_drift_figure_has_a_panel_per_statistic_and_the_p_value() -> None:
    stats = [screen.image_statistics(_jpeg((v, v, v))) for v in (10, 200, 90)]
    fig = plots.drift_figure(stats[:1], stats[1:], confidences=[0.9],
                             class_mix_new=dict.fromkeys(CLASSES, 0.25),
                             class_mix_reference=dict.fromkeys(CLASSES, 0.25), mmd_p=0.004)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible][:6] == list(screen.STATISTICS)
    assert len(visible) == len(screen.STATISTICS) + 2
    assert "p = 0.004" in fig.get_suptitle()
    no_champion = plots.drift_figure(stats[:1], stats[1:])
    assert "not tested" in no_champion.get_suptitle()
    assert len([ax for ax in no_champion.axes if ax.get_visible()]) == len(screen.STATISTICS)


def test_a_champion_that_cannot_be_loaded_is_reported_and_the_night_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As in evaluate: a broken champion must not stop the night whose training replaces it;
    the screening says why it has no drift test and no suspects."""
    from types import SimpleNamespace

    from weather_tasks import serving, tracking

    def broken(uri: str, cfg: config.PipelineConfig) -> None:
        raise OSError(f"{uri}: model directory is damaged")

    monkeypatch.setattr(tracking, "client", lambda cfg: None)
    monkeypatch.setattr(tracking, "alias_model_version",
                        lambda client, name, alias: SimpleNamespace(version=7))
    monkeypatch.setattr(serving, "load_model", broken)
    cfg = config.from_env(environ={})
    report = screen.ScreenReport(screened_version="v000002", manifest_version="v000002",
                                 n_new=1, n_reference=1)
    out, confidences = screen._champion_view(cfg, None, None, report, [], [], [], [])
    assert confidences == [] and out.mmd_p is None and out.suspects == ()
    assert out.note == ("champion v7 unusable: OSError: models:/weather-classifier/7: model "
                        "directory is damaged")
    assert out.manifest_version == "v000002"  # nothing held
