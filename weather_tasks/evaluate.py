"""Challenger vs champion on the same test images: the evaluation stage's I/O.

Both models are the logged pyfunc models (the champion pinned by version number, so the
comparison says exactly which version it beat), and both predict the test split of the same
manifest version, so their accuracies are comparable and their predictions can be paired
(McNemar's exact test, reported for information). The metrics are
:func:`weather_tasks.metrics.compute_metrics`; the decision is the pure rule
:func:`weather_tasks.policy.decide`. A champion that cannot be loaded is reported loudly and
treated as absent (the rule says what that means).

The decision, both models' metrics and the reasons go to the challenger's run (tags, metrics
and ``evaluation/evaluation.json``), where ``registry.promote_if_better`` reads them back;
so do the challenger's test report and test confusion-matrix plot (:func:`log_evaluation`),
which the model page shows. The challenger's test calibration (ECE and reliability bins of the
served, calibrated model) goes into the test report and metric ``TEST_ECE_METRIC``; both models'
prediction per test image into ``TEST_PREDICTIONS_ARTIFACT`` (the model card's weaknesses read
it). Per-image lists stay out of :class:`EvalReport`: its ``as_dict()`` travels through XCom.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from weather_tasks import calibration, manifest, serving, tracking
from weather_tasks.config import PipelineConfig, PipelineError
from weather_tasks.metrics import Interval, Metrics, compute_metrics, paired_difference_interval
from weather_tasks.policy import Decision, decide, mcnemar_exact_p

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalReport:
    run_id: str
    model_uri: str
    manifest_version: str
    n_test: int
    challenger: Metrics
    champion: Metrics | None
    champion_version: str | None  # what the decision compared against (promote's race guard)
    champion_run_id: str | None
    champion_error: str | None
    mcnemar_p: float | None
    decision: Decision
    # Challenger minus champion accuracy on the same test images, with its 95 % interval.
    difference: Interval | None = None
    # The challenger's expected calibration error on the test split (None: no usable row).
    test_ece: float | None = None

    @property
    def promote(self) -> bool:
        return self.decision.promote

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "model_uri": self.model_uri,
            "manifest_version": self.manifest_version,
            "n_test": self.n_test,
            "challenger": self.challenger.as_dict(),
            "champion": self.champion.as_dict() if self.champion else None,
            "champion_version": self.champion_version,
            "champion_run_id": self.champion_run_id,
            "champion_error": self.champion_error,
            "mcnemar_p": self.mcnemar_p,
            "accuracy_difference": self.difference.as_dict() if self.difference else None,
            "test_ece": self.test_ece,
            "promote": self.decision.promote,
            "reasons": list(self.decision.reasons),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalReport:
        return cls(
            run_id=d["run_id"],
            model_uri=d["model_uri"],
            manifest_version=d["manifest_version"],
            n_test=int(d["n_test"]),
            challenger=Metrics.from_dict(d["challenger"]),
            champion=Metrics.from_dict(d["champion"]) if d.get("champion") else None,
            champion_version=d.get("champion_version"),
            champion_run_id=d.get("champion_run_id"),
            champion_error=d.get("champion_error"),
            mcnemar_p=d.get("mcnemar_p"),
            decision=Decision(bool(d["promote"]), list(d.get("reasons", []))),
            difference=(Interval(**d["accuracy_difference"])
                        if d.get("accuracy_difference") else None),
            test_ece=d.get("test_ece"),
        )

    def summary(self) -> str:
        broken = f" (broken: {self.champion_error})" if self.champion_error else ""
        champ = (
            f"champion v{self.champion_version}: accuracy {_accuracy(self.champion)}"
            if self.champion
            else f"champion: none{broken}"
        )
        lines = [
            f"run {self.run_id} on manifest {self.manifest_version} ({self.n_test} test images)",
            f"challenger: accuracy {_accuracy(self.challenger)}, "
            f"log loss {self.challenger.log_loss:.4f}"
            + (f", test ECE {self.test_ece:.4f}" if self.test_ece is not None else ""),
            champ,
        ]
        if self.difference is not None:
            lines.append(f"challenger - champion: {self.difference}")
        if self.mcnemar_p is not None:
            lines.append(f"McNemar exact p = {self.mcnemar_p:.4g}")
        lines.append(f"decision: {'PROMOTE' if self.promote else 'keep champion'}")
        lines += [f"  - {r}" for r in self.decision.reasons]
        return "\n".join(lines)


class EvaluationError(PipelineError):
    """The challenger cannot be evaluated (no test images, no model, no manifest)."""


def evaluate_challenger(
    cfg: PipelineConfig,
    run_id: str,
    manifest_version: str | None = None,
    *,
    s3: S3Client | None = None,
) -> EvalReport:
    """Evaluate run ``run_id``'s model and the champion on the same test split; log and decide."""
    from weather_tasks import storage

    client = tracking.client(cfg)
    run = client.get_run(run_id)
    version = manifest_version or run.data.tags.get(tracking.MANIFEST_VERSION_TAG)
    if not version:
        raise EvaluationError(
            f"run {run_id} has no {tracking.MANIFEST_VERSION_TAG!r} tag; "
            "pass the manifest version explicitly"
        )
    s3 = s3 if s3 is not None else storage.make_client(cfg)
    m = manifest.read_manifest(s3, cfg, version)
    records = m.split("test")
    if not records:
        raise EvaluationError(f"manifest {version} has no test images to evaluate on")
    pairs = manifest.fetch_images(s3, cfg, records)
    paths = [str(p) for p, _ in pairs]
    y_true = [label for _, label in pairs]
    classes = list(cfg.classes)

    model_uri = tracking.run_model_uri(run_id)
    chal_probs = _predict_probs(serving.load_model(model_uri, cfg), paths, classes)
    challenger = compute_metrics(y_true, chal_probs, classes)

    champion: Metrics | None = None
    champion_error: str | None = None
    mcnemar_p: float | None = None
    difference: Interval | None = None
    champ_version = tracking.alias_model_version(client, cfg.registered_model, tracking.CHAMPION)
    champ_run_id = None
    champ_probs: Any = None
    if champ_version is not None:
        champ_run_id = champ_version.run_id
        try:
            champ_model = serving.load_model(
                tracking.version_uri(cfg.registered_model, champ_version.version), cfg
            )
            champ_probs = _predict_probs(champ_model, paths, classes)
            champion = compute_metrics(y_true, champ_probs, classes)
            chal_ok = _correct(chal_probs, y_true, classes)
            champ_ok = _correct(champ_probs, y_true, classes)
            mcnemar_p = mcnemar_exact_p(chal_ok, champ_ok)
            difference = paired_difference_interval(chal_ok, champ_ok)
        except Exception as exc:  # noqa: BLE001 - any failure means "champion unusable"
            champion, mcnemar_p, difference, champ_probs = None, None, None, None
            champion_error = f"{type(exc).__name__}: {exc}"[:500]
            log.warning(
                "CHAMPION %s v%s CANNOT BE EVALUATED, treating it as absent: %s",
                cfg.registered_model, champ_version.version, champion_error,
            )

    decision = decide(challenger, champion, cfg, champion_error=champion_error,
                      difference=difference)
    test_calibration = calibration_of(chal_probs, y_true, classes)
    report = EvalReport(
        run_id=run_id,
        model_uri=model_uri,
        manifest_version=version,
        n_test=len(paths),
        challenger=challenger,
        champion=champion,
        champion_version=champ_version.version if champ_version else None,
        champion_run_id=champ_run_id,
        champion_error=champion_error,
        mcnemar_p=mcnemar_p,
        decision=decision,
        difference=difference,
        test_ece=test_calibration["ece"],
    )
    predictions = per_image_predictions(records, chal_probs, champ_probs, classes)
    log_evaluation(client, report, classes, test_calibration=test_calibration,
                   predictions=predictions)
    log.info("evaluation of run %s:\n%s", run_id, report.summary())
    return report


def read_evaluation(cfg: PipelineConfig, run_id: str) -> EvalReport:
    """The evaluation stored on a run by :func:`evaluate_challenger`."""
    artifact = tracking.EVALUATION_ARTIFACT
    try:
        data = tracking.load_run_dict(tracking.client(cfg), run_id, artifact)
    except Exception as exc:  # noqa: BLE001 - MlflowException or OSError depending on store
        if tracking.tracking_error(exc, cfg) is not None:
            raise  # the server is unreachable or failing: the entry point says so (transient)
        raise EvaluationError(
            f"run {run_id} has no {artifact}; run `weather evaluate {run_id}` first"
        ) from exc
    return EvalReport.from_dict(data)


def _predict_probs(model: Any, paths: Sequence[str], classes: Sequence[str]) -> Any:
    """(n, classes) probabilities in ``classes`` order; NaN rows for images the model failed on.

    A failed row comes back with None probabilities (``serving.predictions_frame`` reads the
    files, the model takes bytes); as NaN, :func:`weather_tasks.metrics.compute_metrics` counts
    it as wrong.
    """
    import numpy as np

    frame = serving.predictions_frame(model, paths)
    missing = [c for c in classes if f"prob_{c}" not in frame.columns]
    if missing:
        raise EvaluationError(
            f"model output lacks classes {missing} (columns {list(frame.columns)})"
        )
    return frame[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64, na_value=np.nan)


def _correct(probs: Any, y_true: Sequence[str], classes: Sequence[str]) -> list[bool]:
    import numpy as np

    out = []
    for row, y in zip(probs, y_true, strict=True):
        out.append(bool(not np.isnan(row).any() and classes[int(np.argmax(row))] == y))
    return out


def calibration_of(probs: Any, y_true: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """ECE and reliability bins of ``probs`` (the served model's, so calibrated if it is) on
    labels ``y_true``: ``{"ece", "reliability", "n"}``; ``ece`` None without a usable row
    (a model that failed on every image)."""
    labels = calibration.label_indices(y_true, classes)
    bins = calibration.reliability_bins(probs, labels)
    ece = calibration.expected_calibration_error(probs, labels)
    return {"ece": None if math.isnan(ece) else ece, "reliability": bins,
            "n": sum(b["count"] for b in bins)}


def per_image_predictions(
    records: Sequence[manifest.ImageRecord], challenger_probs: Any, champion_probs: Any,
    classes: Sequence[str],
) -> list[dict[str, Any]]:
    """One entry per test image (``TEST_PREDICTIONS_ARTIFACT``), in ``records`` order: sha256,
    label, source keys, and each model's predicted class and confidence (top probability);
    ``champion`` None without a usable champion, ``predicted`` None for an image a model
    failed on."""
    def answer(row: Any) -> dict[str, Any]:
        import numpy as np

        if np.isnan(row).any():
            return {"predicted": None, "confidence": None}
        return {"predicted": classes[int(np.argmax(row))], "confidence": float(np.max(row))}

    out = []
    for i, rec in enumerate(records):
        out.append({
            "sha256": rec.sha256,
            "label": rec.label,
            "source_keys": list(rec.source_keys),
            "challenger": answer(challenger_probs[i]),
            "champion": None if champion_probs is None else answer(champion_probs[i]),
        })
    return out


def challenger_test_report(
    report: EvalReport, classes: Sequence[str], test_calibration: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The challenger's metrics on the test split (``TEST_REPORT_ARTIFACT``), shaped like
    training's val report: the confusion matrix's rows and columns are ``classes``. With
    ``test_calibration`` (:func:`calibration_of`): ``ece`` and ``reliability`` (the bins)."""
    out = (
        {"classes": list(classes)}
        | report.challenger.as_dict()
        | {"split": "test", "manifest_version": report.manifest_version}
    )
    if test_calibration is not None:
        out |= {"ece": test_calibration["ece"],
                "reliability": list(test_calibration["reliability"])}
    return out


def log_evaluation(
    client: MlflowClient, report: EvalReport, classes: Sequence[str], *,
    test_calibration: Mapping[str, Any] | None = None,
    predictions: Sequence[Mapping[str, Any]] | None = None,
) -> None:
    """Write the evaluation on the challenger's run: test metrics, tags, the test report
    (with ``test_calibration``, :func:`calibration_of`), the per-image ``predictions``
    (:func:`per_image_predictions`) and the confusion-matrix plot, and last ``EVALUATION_ARTIFACT``
    (what promotion reads)."""
    import numpy as np

    from weather_tasks import plots

    run_id = report.run_id
    metrics = {tracking.TEST_ACCURACY_METRIC: report.challenger.accuracy}
    metrics |= _interval_metrics(tracking.TEST_ACCURACY_CI_METRIC, report.challenger.accuracy_ci)
    if not math.isnan(report.challenger.log_loss):
        metrics["test_log_loss"] = report.challenger.log_loss
    for c, m in report.challenger.per_class.items():
        metrics[f"test_recall_{c}"] = m.recall
        metrics[f"test_precision_{c}"] = m.precision
        metrics[f"test_f1_{c}"] = m.f1
    if report.champion is not None:
        metrics[tracking.CHAMPION_TEST_ACCURACY_METRIC] = report.champion.accuracy
        metrics |= _interval_metrics(tracking.CHAMPION_TEST_ACCURACY_CI_METRIC,
                                     report.champion.accuracy_ci)
    if report.difference is not None:
        metrics[tracking.ACCURACY_DIFFERENCE_METRIC] = report.difference.estimate
        metrics |= _interval_metrics(tracking.ACCURACY_DIFFERENCE_CI_METRIC, report.difference)
    if report.mcnemar_p is not None:
        metrics[tracking.MCNEMAR_P_METRIC] = report.mcnemar_p
    if report.test_ece is not None:
        metrics[tracking.TEST_ECE_METRIC] = report.test_ece
    for name, value in metrics.items():
        client.log_metric(run_id, name, value, step=0)
    reasons = tracking.EVAL_REASONS_SEPARATOR.join(report.decision.reasons)
    tags = {
        tracking.EVAL_PROMOTE_TAG: str(report.promote).lower(),
        tracking.EVAL_REASONS_TAG: reasons[:5000],
        tracking.EVAL_MANIFEST_VERSION_TAG: report.manifest_version,
        tracking.EVAL_CHAMPION_VERSION_TAG: report.champion_version or "none",
    }
    if report.champion_error:
        tags[tracking.EVAL_CHAMPION_ERROR_TAG] = report.champion_error
    for tag, text in tags.items():
        client.set_tag(run_id, tag, text)
    numbers = challenger_test_report(report, classes, test_calibration)
    client.log_dict(run_id, numbers, tracking.TEST_REPORT_ARTIFACT)
    if predictions is not None:
        client.log_dict(run_id, {"classes": list(classes), "manifest_version":
                                 report.manifest_version, "images": list(predictions)},
                        tracking.TEST_PREDICTIONS_ARTIFACT)
    figure = plots.confusion_matrix_figure(np.asarray(numbers["confusion_matrix"]), classes, "test")
    client.log_figure(run_id, figure, tracking.CONFUSION_MATRIX_TEST_PLOT)
    client.log_dict(run_id, report.as_dict(), tracking.EVALUATION_ARTIFACT)


def _accuracy(m: Metrics) -> str:
    """The accuracy with its 95 % interval (just the number without test images)."""
    return str(m.accuracy_ci) if m.accuracy_ci is not None else f"{m.accuracy:.4f}"


def _interval_metrics(prefix: str, interval: Interval | None) -> dict[str, float]:
    """``<prefix>_low`` and ``<prefix>_high`` run metrics (none without an interval)."""
    if interval is None:
        return {}
    return {f"{prefix}_low": interval.low, f"{prefix}_high": interval.high}
