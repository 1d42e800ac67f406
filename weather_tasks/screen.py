"""Screen each night's new photos before training: drift against the training data, and labels
the champion confidently contradicts. One MLflow run per screened manifest version.

The night's photos are the records whose ``first_version`` is the screened version (all
splits); the reference is the training photos of earlier versions (train split,
``first_version`` before it), a deterministic sample of at most :data:`REFERENCE_MAX` (by
sha256, so a retry and the CLI see the same sample). No new photos or no reference yet (the
first night): the report says so, and nothing is tested.

What is measured:

1. image statistics per photo (brightness = mean luma, contrast = luma std, saturation =
   mean HSV saturation, width, height, aspect), on the curated files; per statistic the
   two-sample Kolmogorov-Smirnov p-value, new vs reference, and both means. Cheap and
   model-free, but blind to what the statistics do not measure;
2. with a champion (``@champion``, pinned to its version): its penultimate-layer embeddings
   (the input of the final Dense layer), preprocessed exactly as serving does, of new and
   reference photos; :func:`mmd_permutation_test` (MMD^2, RBF kernel, median-distance
   bandwidth, seeded permutation p-value) compares them. That is the drift test that can
   hold a promotion (``drift_hold_p_value``). Also the predicted-class mix of new vs
   reference photos and the confidence (top calibrated probability) of the new ones;
3. with a champion: suspect labels, :func:`find_suspects` (cleanlab's confident learning,
   with the reference photos' labels and probabilities supplying the per-class thresholds,
   so a night of one photo, or one without some class, works). A suspect in the test split
   is listed but never held: a test split filtered by the champion's opinion would be biased
   toward the champion. With ``suspect_labels=review`` the train/val suspects are held out of
   training (``review.hold_for_review``) and the report's ``manifest_version`` is the version
   to train on.

A hold of the promotion is a one-line ``hold_reason`` (the DAG passes it to
``registry.promote_if_better``); the screening itself never fails a night for drift.
"""

from __future__ import annotations

import io
import logging
import math
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from weather_tasks import manifest, storage, tracking
from weather_tasks.config import PipelineConfig, PipelineError
from weather_tasks.manifest import ImageRecord, Manifest

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

REFERENCE_MAX = 300  # reference photos sampled: enough for the tests, bounded work per night
N_PERMUTATIONS = 500
PERMUTATION_SEED = 20_181  # fixed: the same night gives the same p-value on a retry
STATISTICS = ("brightness", "contrast", "saturation", "width", "height", "aspect")
# Luma statistics are computed on a copy at most this many pixels on a side: the means of a
# downscaled photo are the photo's (to well below the KS test's resolution), in a fraction of
# the time of decoding a 4000 px photo at full size.
_STATS_SIDE = 256
_EMBED_BATCH = 32
THUMB_SIDE = 128
# Fallback when cleanlab's confident learning cannot run: a photo is suspect when the champion
# predicts another class and the given label's probability (cleanlab's self-confidence label
# quality) is below this.
FALLBACK_QUALITY_THRESHOLD = 0.05
NO_NEW = "no new photos in this manifest version"
NO_REFERENCE = "no training photos of earlier versions to compare with (first version)"
NO_CHAMPION = "no champion yet: image statistics only (no embedding drift test, no suspects)"


class ScreenError(PipelineError):
    """The night's photos cannot be screened (e.g. the champion cannot embed them)."""


# --- the report ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StatisticShift:
    """One image statistic, new vs reference photos."""

    name: str
    new_mean: float
    reference_mean: float
    ks_p: float


@dataclass(frozen=True)
class Suspect:
    """A new photo whose file-name label the champion confidently contradicts."""

    sha256: str
    given: str
    predicted: str
    confidence: float  # the champion's top (calibrated) probability
    label_quality: float  # cleanlab's self-confidence: the probability of the given label
    split: str
    source_keys: tuple[str, ...]
    held: bool  # held out of training for review (never for the test split)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["source_keys"] = list(self.source_keys)
        return out


@dataclass(frozen=True)
class ScreenReport:
    screened_version: str  # the manifest version whose new photos were screened
    manifest_version: str  # the version to train on (another one when suspects were held)
    n_new: int
    n_reference: int
    note: str | None = None  # why something was not tested
    statistics: tuple[StatisticShift, ...] = ()
    champion_version: str | None = None
    mmd2: float | None = None
    mmd_p: float | None = None
    class_mix_new: dict[str, float] = field(default_factory=dict)
    class_mix_reference: dict[str, float] = field(default_factory=dict)
    confidence: dict[str, float] | None = None  # of the new photos: mean, q25, median, q75
    suspects: tuple[Suspect, ...] = ()
    suspect_method: str | None = None
    hold_reason: str | None = None
    run_id: str | None = None
    airflow_run_id: str | None = None

    @property
    def held(self) -> int:
        """Suspects held out of training for review."""
        return sum(1 for s in self.suspects if s.held)

    def as_dict(self) -> dict[str, Any]:
        """The small dict for XCom and the night summary."""
        return {
            "screened_version": self.screened_version,
            "manifest_version": self.manifest_version,
            "n_new": self.n_new,
            "n_reference": self.n_reference,
            "note": self.note,
            "champion_version": self.champion_version,
            "mmd2": self.mmd2,
            "mmd_p": self.mmd_p,
            "n_suspects": len(self.suspects),
            "held": self.held,
            "hold_reason": self.hold_reason,
            "run_id": self.run_id,
        }

    def full_dict(self) -> dict[str, Any]:
        """Everything (the run's ``SCREENING_ARTIFACT``)."""
        out = asdict(self)
        out["statistics"] = [asdict(s) for s in self.statistics]
        out["suspects"] = [s.as_dict() for s in self.suspects]
        return out

    @classmethod
    def from_full_dict(cls, data: Mapping[str, Any]) -> ScreenReport:
        values = dict(data)
        values["statistics"] = tuple(StatisticShift(**s) for s in values.get("statistics", ()))
        values["suspects"] = tuple(
            Suspect(**{**s, "source_keys": tuple(s["source_keys"])})
            for s in values.get("suspects", ())
        )
        return cls(**values)

    def summary(self) -> str:
        lines = [f"screened manifest {self.screened_version}: {self.n_new} new photos vs "
                 f"{self.n_reference} reference; train on {self.manifest_version}"]
        if self.note:
            lines.append(f"  {self.note}")
        for shift in self.statistics:
            lines.append(f"  {shift.name}: new {shift.new_mean:.4g} vs reference "
                         f"{shift.reference_mean:.4g} (KS p {shift.ks_p:.3g})")
        if self.mmd_p is not None:
            lines.append(f"  champion v{self.champion_version} embeddings: MMD^2 {self.mmd2:.4g},"
                         f" permutation p {self.mmd_p:.3g}")
        if self.confidence:
            c = self.confidence
            lines.append(f"  confidence of the new photos: mean {c['mean']:.3f}, quartiles "
                         f"{c['q25']:.3f} / {c['median']:.3f} / {c['q75']:.3f}")
        if self.class_mix_new:
            lines.append("  predicted classes, new: " + _mix_text(self.class_mix_new)
                         + "; reference: " + _mix_text(self.class_mix_reference))
        if self.suspect_method:
            lines.append(f"  suspect labels ({self.suspect_method}): {len(self.suspects)}, "
                         f"{self.held} held for review")
        for s in self.suspects:
            lines.append(f"    {s.sha256[:12]} {s.split}: labelled {s.given}, champion says "
                         f"{s.predicted} ({s.confidence:.3f}){' [held]' if s.held else ''} "
                         f"{', '.join(s.source_keys)}")
        if self.hold_reason:
            lines.append(f"  HOLD: {self.hold_reason}")
        if self.run_id:
            lines.append(f"  MLflow run {self.run_id}")
        return "\n".join(lines)


# --- pure parts ------------------------------------------------------------------------------
def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, *, n_permutations: int = N_PERMUTATIONS,
    seed: int = PERMUTATION_SEED,
) -> tuple[float, float]:
    """(MMD^2, permutation p-value) of samples ``x`` (n, d) and ``y`` (m, d).

    The biased (V-statistic) MMD^2 with an RBF kernel whose bandwidth is the median pairwise
    distance of the pooled sample (the usual heuristic: no tuning on the data being tested).
    The p-value counts the label permutations whose MMD^2 reaches the observed one,
    ``(1 + #{perm >= observed}) / (1 + n_permutations)``: never 0, exact in level.
    """
    if len(x) == 0 or len(y) == 0:
        raise ValueError("both samples need at least one row")
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    pooled = np.concatenate([x, y])
    sq = np.sum(pooled**2, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * pooled @ pooled.T, 0.0)
    off = d2[np.triu_indices(len(pooled), k=1)]
    median = float(np.median(np.sqrt(off))) if off.size else 0.0
    bandwidth = median if median > 0 else 1.0  # identical points: any bandwidth gives MMD 0
    kernel = np.exp(-d2 / (2 * bandwidth**2))
    n = len(x)

    def mmd2(first: np.ndarray) -> float:
        second = ~first
        return float(kernel[np.ix_(first, first)].mean() + kernel[np.ix_(second, second)].mean()
                     - 2 * kernel[np.ix_(first, second)].mean())

    is_x = np.zeros(len(pooled), dtype=bool)
    is_x[:n] = True
    observed = mmd2(is_x)
    rng = np.random.default_rng(seed)
    reached = 0
    for _ in range(n_permutations):
        # A small tolerance: a permutation equal to the observed split must count as reaching it.
        if mmd2(rng.permutation(is_x)) >= observed - 1e-12:
            reached += 1
    return observed, (1 + reached) / (1 + n_permutations)


def image_statistics(data: bytes) -> dict[str, float]:
    """Brightness (mean luma), contrast (luma std), saturation (mean HSV S), all in [0, 1], and
    width, height, aspect (width / height) of one image file's bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.seek(0)
        width, height = img.size
        rgb = img.convert("RGB")
    rgb.thumbnail((_STATS_SIDE, _STATS_SIDE))
    luma = np.asarray(rgb.convert("L"), dtype=np.float64) / 255.0  # ITU-R 601 luma
    saturation = np.asarray(rgb.convert("HSV"), dtype=np.float64)[..., 1] / 255.0
    return {
        "brightness": float(luma.mean()),
        "contrast": float(luma.std()),
        "saturation": float(saturation.mean()),
        "width": float(width),
        "height": float(height),
        "aspect": width / height,
    }


def compare_statistics(
    new: Sequence[Mapping[str, float]], reference: Sequence[Mapping[str, float]]
) -> tuple[StatisticShift, ...]:
    """Per statistic, both means and the two-sample Kolmogorov-Smirnov p-value."""
    from scipy.stats import ks_2samp

    out = []
    for name in STATISTICS:
        a = np.array([s[name] for s in new])
        b = np.array([s[name] for s in reference])
        p = float(ks_2samp(a, b).pvalue)
        out.append(StatisticShift(name, float(a.mean()), float(b.mean()),
                                  p if math.isfinite(p) else 1.0))
    return tuple(out)


def find_suspects(
    given: np.ndarray, probs: np.ndarray, reference_given: np.ndarray,
    reference_probs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Which of the new photos (labels ``given``, champion probabilities ``probs`` (n, k)) have
    a label the champion confidently contradicts: (flags, label quality, method).

    cleanlab's confident learning (``find_label_issues(filter_by="confident_learning")``:
    the off-diagonal of the confident joint) needs per-class thresholds (the mean probability
    of each class over the photos labelled so), which a night of a few photos cannot estimate;
    so it runs on the reference photos and the new ones together, and only the new rows'
    flags are kept. A flag also needs the champion to predict another class (that is the
    contradiction). Should cleanlab fail (e.g. too few rows), the fallback is the documented
    threshold :data:`FALLBACK_QUALITY_THRESHOLD` on cleanlab's self-confidence label quality;
    the method says which was used. Label quality is the probability of the given label.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    given = np.asarray(given, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    if len(given) == 0:
        return np.zeros(0, dtype=bool), np.zeros(0), "none"
    probs = probs / probs.sum(axis=1, keepdims=True)
    quality = np.asarray(get_label_quality_scores(given, probs, method="self_confidence"))
    contradicted = probs.argmax(axis=1) != given
    labels = np.concatenate([np.asarray(reference_given, dtype=int), given])
    pooled = np.concatenate([np.asarray(reference_probs, dtype=np.float64).reshape(-1,
                             probs.shape[1]), probs])
    pooled = pooled / pooled.sum(axis=1, keepdims=True)
    try:
        import warnings

        with warnings.catch_warnings():  # "too few examples in class": expected on small nights
            warnings.simplefilter("ignore")
            issues = np.asarray(find_label_issues(labels, pooled,
                                                  filter_by="confident_learning"))
        flags = issues[len(labels) - len(given):] & contradicted
        method = "cleanlab confident learning"
    except Exception as exc:  # noqa: BLE001 - cleanlab refuses some inputs: the fallback says so
        log.warning("cleanlab find_label_issues failed (%s): label quality < %s instead",
                    exc, FALLBACK_QUALITY_THRESHOLD)
        flags = contradicted & (quality < FALLBACK_QUALITY_THRESHOLD)
        method = f"self-confidence < {FALLBACK_QUALITY_THRESHOLD} (cleanlab fallback)"
    return flags, quality, method


def drift_hold_reason(
    cfg: PipelineConfig, mmd_p: float | None, n_new: int, version: str
) -> str | None:
    """The one-line reason to hold the promotion, or None (off, not tested, or not drifted)."""
    threshold = cfg.drift_hold_p_value
    if threshold <= 0 or mmd_p is None or mmd_p >= threshold:
        return None
    return (f"drift: the {n_new} new photos of manifest {version} differ from the training "
            f"photos in the champion's embeddings (MMD permutation p {mmd_p:.3g} < "
            f"drift_hold_p_value {threshold:g}); promotion held for review; "
            "`weather promote <run id>` promotes anyway")


def class_mix(labels: Sequence[str], classes: Sequence[str]) -> dict[str, float]:
    """The fraction of each class among ``labels`` (0 for an absent one)."""
    counts = Counter(labels)
    total = max(len(labels), 1)
    return {c: counts.get(c, 0) / total for c in classes}


def reference_sample(m: Manifest, version: str, limit: int = REFERENCE_MAX) -> list[ImageRecord]:
    """Training photos of versions before ``version``: at most ``limit``, chosen by sha256 (a
    content hash: a fixed, class-blind pseudo-random sample). Photos held for review are not
    trained on, so they are not reference either."""
    before = [r for r in m.images.values()
              if r.split == "train" and r.sha256 not in m.review
              and manifest.version_number(r.first_version) < manifest.version_number(version)]
    return sorted(before, key=lambda r: r.sha256)[:limit]


def new_photos(m: Manifest, version: str) -> list[ImageRecord]:
    """The photos this version added, all splits, by sha256."""
    return sorted((r for r in m.images.values() if r.first_version == version),
                  key=lambda r: r.sha256)


# --- the stage -------------------------------------------------------------------------------
def screen_night(
    cfg: PipelineConfig,
    s3: S3Client | None = None,
    manifest_version: str | None = None,
    *,
    airflow_run_id: str | None = None,
) -> ScreenReport:
    """Screen the photos new in ``manifest_version`` (default: the latest); one MLflow run.

    Idempotent per Airflow run: a finished screening run of the same Airflow run and version
    is returned as it was (no second hold, no second run).
    """
    tracking.check_process(cfg)
    s3 = storage.make_client(cfg) if s3 is None else s3
    m = manifest.read_manifest(s3, cfg, manifest_version)
    if airflow_run_id:
        previous = _finished_report(cfg, airflow_run_id, m.version)
        if previous is not None:
            log.info("screening run %s already screened %s; reusing it", previous.run_id,
                     m.version)
            return previous
    new, reference = new_photos(m, m.version), reference_sample(m, m.version)
    report = ScreenReport(screened_version=m.version, manifest_version=m.version,
                          n_new=len(new), n_reference=len(reference),
                          note=NO_NEW if not new else NO_REFERENCE if not reference else None,
                          airflow_run_id=airflow_run_id)
    thumbs: dict[str, bytes] = {}
    stats_new: list[dict[str, float]] = []
    stats_ref: list[dict[str, float]] = []
    confidences: list[float] = []
    if new and reference:
        new_paths = [p for p, _ in manifest.fetch_images(s3, cfg, new)]
        ref_paths = [p for p, _ in manifest.fetch_images(s3, cfg, reference)]
        stats_new = [image_statistics(p.read_bytes()) for p in new_paths]
        stats_ref = [image_statistics(p.read_bytes()) for p in ref_paths]
        report = _replace(report, statistics=compare_statistics(stats_new, stats_ref))
        report, confidences = _champion_view(cfg, s3, m, report, new, new_paths, reference,
                                             ref_paths)
        path_of = {r.sha256: p for r, p in zip(new, new_paths, strict=True)}
        thumbs = {s.sha256: _thumbnail(path_of[s.sha256].read_bytes()) for s in report.suspects}
    report = _replace(report, hold_reason=drift_hold_reason(cfg, report.mmd_p, report.n_new,
                                                              m.version))
    report = _log_run(cfg, report, stats_new, stats_ref, confidences, thumbs)
    log.info("%s", report.summary())
    return report


def _champion_view(
    cfg: PipelineConfig, s3: S3Client, m: Manifest, report: ScreenReport,
    new: list[ImageRecord], new_paths: list[Path],
    reference: list[ImageRecord], ref_paths: list[Path],
) -> tuple[ScreenReport, list[float]]:
    """The champion's embeddings (MMD test), predictions (class mix, confidence) and suspects;
    the report unchanged (with a note) when there is no champion."""
    from weather_tasks import serving

    mv = tracking.alias_model_version(tracking.client(cfg), cfg.registered_model,
                                      tracking.CHAMPION)
    if mv is None:
        return _replace(report, note=NO_CHAMPION), []
    champion_version = str(mv.version)
    try:
        model = serving.load_model(
            tracking.version_uri(cfg.registered_model, champion_version), cfg
        )
        new_embedded, ref_embedded = embed(model, new_paths), embed(model, ref_paths)
    except Exception as exc:  # noqa: BLE001 - as evaluate: a broken champion is reported, and
        # the night goes on (training a new model is the cure); an unreachable server is not
        # the champion's fault and stays the transient error it is.
        if tracking.tracking_error(exc, cfg) is not None:
            raise
        problem = f"{type(exc).__name__}: {exc}"[:300]
        log.warning("CHAMPION %s v%s CANNOT BE USED for screening: %s", cfg.registered_model,
                    champion_version, problem)
        return _replace(report, note=f"champion v{champion_version} unusable: {problem}"), []
    mmd2, mmd_p = mmd_permutation_test(new_embedded, ref_embedded)
    new_frame = serving.predictions_frame(model, new_paths)
    ref_frame = serving.predictions_frame(model, ref_paths)
    classes = [c.removeprefix("prob_") for c in new_frame.columns if c.startswith("prob_")]
    new_ok = [i for i, e in enumerate(new_frame["error"]) if not e]
    ref_ok = [i for i, e in enumerate(ref_frame["error"]) if not e]
    new_probs = _probabilities(new_frame, classes, new_ok)
    ref_probs = _probabilities(ref_frame, classes, ref_ok)
    confidences = [float(p.max()) for p in new_probs]
    index = {c: k for k, c in enumerate(classes)}
    # A record whose label the champion does not know cannot be judged by it.
    judged = [i for i in new_ok if new[i].label in index]
    ref_judged = [j for j, i in enumerate(ref_ok) if reference[i].label in index]
    flags, quality, method = find_suspects(
        np.array([index[new[i].label] for i in judged], dtype=int),
        new_probs[[new_ok.index(i) for i in judged]] if judged else np.zeros((0, len(classes))),
        np.array([index[reference[ref_ok[j]].label] for j in ref_judged], dtype=int),
        ref_probs[ref_judged] if ref_judged else np.zeros((0, len(classes))),
    )
    suspects = []
    for k, i in enumerate(judged):
        if not flags[k]:
            continue
        rec, p = new[i], new_probs[new_ok.index(i)]
        suspects.append(Suspect(
            sha256=rec.sha256, given=rec.label, predicted=classes[int(p.argmax())],
            confidence=float(p.max()), label_quality=float(quality[k]), split=rec.split,
            source_keys=rec.source_keys,
            # Never the test split: filtering it by the champion's opinion biases the test.
            held=cfg.suspect_labels == "review" and rec.split != "test",
        ))
    version = m.version
    held = {s.sha256: s for s in suspects if s.held}
    if held:
        version = _hold_for_review(cfg, s3, m, held)
    conf = np.array(confidences) if confidences else None
    return _replace(
        report,
        manifest_version=version,
        champion_version=champion_version,
        mmd2=mmd2,
        mmd_p=mmd_p,
        class_mix_new=class_mix([str(new_frame["label"][i]) for i in new_ok], classes),
        class_mix_reference=class_mix([str(ref_frame["label"][i]) for i in ref_ok], classes),
        confidence=None if conf is None else {
            "mean": float(conf.mean()), "q25": float(np.quantile(conf, 0.25)),
            "median": float(np.median(conf)), "q75": float(np.quantile(conf, 0.75)),
        },
        suspects=tuple(suspects),
        suspect_method=method,
    ), confidences


def embed(model: Any, paths: Sequence[Path]) -> np.ndarray:
    """The champion's penultimate-layer embeddings of image files (n, d): the input of the
    Keras model's final Dense layer, after serving's own preprocessing (``_preprocess``)."""
    import keras

    classifier = model.unwrap_python_model()
    net = classifier._model
    dense = [layer for layer in net.layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise ScreenError("the champion's Keras model has no Dense layer to embed with")
    embedder = keras.Model(inputs=net.inputs, outputs=dense[-1].input)
    out = []
    for start in range(0, len(paths), _EMBED_BATCH):
        batch = np.stack([classifier._preprocess(Path(p).read_bytes())
                          for p in paths[start : start + _EMBED_BATCH]])
        out.append(np.asarray(keras.ops.convert_to_numpy(embedder.predict_on_batch(batch)),
                              dtype=np.float64).reshape(len(batch), -1))
    return np.concatenate(out) if out else np.zeros((0, 1))


def _hold_for_review(
    cfg: PipelineConfig, s3: S3Client, m: Manifest, held: Mapping[str, Suspect]
) -> str:
    """Hold the suspects out of training (``review.hold_for_review``); the version to train on."""
    from weather_tasks import review

    notes = {
        sha: manifest.ReviewNote(
            reason=f"suspect label: labelled {s.given}, the champion says {s.predicted} "
            f"({s.confidence:.3f})",
            predicted=s.predicted, confidence=s.confidence, flagged_in=m.version,
        )
        for sha, s in held.items()
    }
    return review.hold_for_review(s3, cfg, m, notes).version


def _probabilities(frame: Any, classes: Sequence[str], rows: Sequence[int]) -> np.ndarray:
    if not rows:
        return np.zeros((0, len(classes)))
    return np.array([[float(frame[f"prob_{c}"][i]) for c in classes] for i in rows])


def _log_run(
    cfg: PipelineConfig, report: ScreenReport, stats_new: list[dict[str, float]],
    stats_ref: list[dict[str, float]], confidences: list[float], thumbs: Mapping[str, bytes],
) -> ScreenReport:
    """One MLflow run in the screening experiment: metrics, the report, suspects, thumbnails
    and the drift figure; the report with its run id."""
    import mlflow

    from weather_tasks import plots

    mlflow.set_experiment(cfg.experiment_name + tracking.SCREENING_EXPERIMENT_SUFFIX)
    tags = {tracking.MANIFEST_VERSION_TAG: report.screened_version}
    if report.airflow_run_id:
        tags[tracking.AIRFLOW_RUN_ID_TAG] = report.airflow_run_id
    with mlflow.start_run(run_name=f"screen-{report.screened_version}", tags=tags) as run:
        report = _replace(report, run_id=run.info.run_id)
        metrics: dict[str, float] = {
            "n_new": report.n_new, "n_reference": report.n_reference,
            "n_suspects": len(report.suspects), "n_held": report.held,
        }
        metrics |= {f"ks_p_{s.name}": s.ks_p for s in report.statistics}
        if report.mmd_p is not None and report.mmd2 is not None:
            metrics |= {tracking.DRIFT_MMD_P_METRIC: report.mmd_p, "mmd2": report.mmd2}
        mlflow.log_metrics(metrics)
        mlflow.log_dict({"manifest_version": report.screened_version,
                         "suspects": [s.as_dict() for s in report.suspects]},
                        tracking.SUSPECT_LABELS_ARTIFACT)
        if stats_new and stats_ref:
            mlflow.log_figure(
                plots.drift_figure(stats_new, stats_ref, confidences=confidences,
                                   class_mix_new=report.class_mix_new,
                                   class_mix_reference=report.class_mix_reference,
                                   mmd_p=report.mmd_p,
                                   title=f"manifest {report.screened_version}"),
                tracking.DRIFT_PLOT,
            )
        if thumbs:
            with tempfile.TemporaryDirectory(prefix="weather-thumbs-") as tmp:
                for sha, jpeg in thumbs.items():
                    (Path(tmp) / f"{sha}.jpg").write_bytes(jpeg)
                mlflow.log_artifacts(tmp, tracking.SUSPECT_THUMBS_DIR)
        # Last thing in the run: a finished run with this file is a complete screening.
        mlflow.log_dict(report.full_dict(), tracking.SCREENING_ARTIFACT)
    return report



def _thumbnail(data: bytes) -> bytes:
    """A JPEG of at most ``THUMB_SIDE`` px on a side."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.seek(0)
        rgb = img.convert("RGB")
    rgb.thumbnail((THUMB_SIDE, THUMB_SIDE))
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=85)
    return out.getvalue()


def _finished_report(
    cfg: PipelineConfig, airflow_run_id: str, version: str
) -> ScreenReport | None:
    client = tracking.client(cfg)
    experiment = client.get_experiment_by_name(
        cfg.experiment_name + tracking.SCREENING_EXPERIMENT_SUFFIX)
    if experiment is None:
        return None
    runs = client.search_runs(
        experiment_ids=[experiment.experiment_id],
        filter_string=(f"{tracking.airflow_run_filter(airflow_run_id)} "
                       f"and tags.{tracking.MANIFEST_VERSION_TAG} = '{version}' "
                       "and attributes.status = 'FINISHED'"),
        order_by=["attributes.start_time DESC"],
    )
    for run in runs:
        try:
            saved = tracking.load_run_dict(client, run.info.run_id, tracking.SCREENING_ARTIFACT)
        except Exception:  # noqa: BLE001 - no report: not a complete screening, look further
            continue
        return ScreenReport.from_full_dict(saved)
    return None


def _replace(report: ScreenReport, **changes: Any) -> ScreenReport:
    return replace(report, **changes)


def _mix_text(mix: Mapping[str, float]) -> str:
    return ", ".join(f"{c} {v:.0%}" for c, v in mix.items())
