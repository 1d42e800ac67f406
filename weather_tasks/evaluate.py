"""Challenger vs champion on the same test images, and the promotion decision.

Both models are the logged pyfunc models (the champion pinned by version number, so the
comparison says exactly which version it beat), and both predict the test split of the same
manifest version, so their accuracies are comparable and their predictions can be paired
(McNemar's exact test, reported for information). The decision rule is the pure function
:func:`decide`:

- no champion: promote when accuracy >= ``accuracy_floor`` (default 0.70);
- otherwise: promote when accuracy >= champion accuracy + ``min_delta`` (default 0.0, so a
  tie promotes the newer model, trained on more data) and no class's recall drops by more
  than ``max_class_recall_drop`` (default 0.05);
- a champion that cannot be loaded is reported loudly and treated as absent (the floor still
  applies), so a broken registry entry cannot block a valid challenger forever.

The decision, both models' metrics and the reasons go to the challenger's run (tags, metrics
and ``evaluation/evaluation.json``), where ``registry.promote_if_better`` reads them back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from weather_tasks import manifest, serving
from weather_tasks.config import PipelineConfig, PipelineError

log = logging.getLogger(__name__)

EVALUATION_ARTIFACT = "evaluation/evaluation.json"
_EPS = 1e-9  # float slack in comparisons: a tie must count as a tie
_LOG_LOSS_CLIP = 1e-15


@dataclass(frozen=True)
class ClassMetrics:
    precision: float
    recall: float
    f1: float
    support: int

    def as_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1,
                "support": self.support}


@dataclass(frozen=True)
class Metrics:
    """One model's metrics on one test set."""

    accuracy: float
    per_class: dict[str, ClassMetrics]
    log_loss: float = float("nan")
    confusion_matrix: tuple[tuple[int, ...], ...] = ()
    n: int = 0
    n_errors: int = 0  # images the model could not classify (counted as wrong)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "per_class": {c: m.as_dict() for c, m in self.per_class.items()},
            "log_loss": None if math.isnan(self.log_loss) else self.log_loss,
            "confusion_matrix": [list(r) for r in self.confusion_matrix],
            "n": self.n,
            "n_errors": self.n_errors,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Metrics:
        return cls(
            accuracy=float(d["accuracy"]),
            per_class={c: ClassMetrics(**m) for c, m in d["per_class"].items()},
            log_loss=float("nan") if d.get("log_loss") is None else float(d["log_loss"]),
            confusion_matrix=tuple(tuple(r) for r in d.get("confusion_matrix", ())),
            n=int(d.get("n", 0)),
            n_errors=int(d.get("n_errors", 0)),
        )


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reasons": list(self.reasons)}


def decide(
    challenger: Metrics,
    champion: Metrics | None,
    cfg: PipelineConfig,
    *,
    champion_error: str | None = None,
) -> Decision:
    """The promotion rule (pure). ``champion_error``: why the champion could not be evaluated."""
    reasons: list[str] = []
    if champion_error:
        reasons.append(f"champion could not be evaluated ({champion_error}); treated as absent")
        champion = None
    if champion is None:
        ok = challenger.accuracy >= cfg.accuracy_floor - _EPS
        if not champion_error:
            reasons.append("no champion yet")
        reasons.append(
            f"accuracy {challenger.accuracy:.4f} {'>=' if ok else '<'} "
            f"floor {cfg.accuracy_floor:.4f}"
        )
        return Decision(promote=ok, reasons=reasons)

    needed = champion.accuracy + cfg.min_delta
    acc_ok = challenger.accuracy >= needed - _EPS
    reasons.append(
        f"accuracy {challenger.accuracy:.4f} {'>=' if acc_ok else '<'} champion "
        f"{champion.accuracy:.4f} + min_delta {cfg.min_delta:.4f}"
    )
    recall_ok = True
    for cls, champ in champion.per_class.items():
        chal = challenger.per_class.get(cls)
        if chal is None:
            continue  # a class the challenger does not know cannot be compared
        drop = champ.recall - chal.recall
        if drop > cfg.max_class_recall_drop + _EPS:
            recall_ok = False
            reasons.append(
                f"recall of {cls!r} drops {drop:.4f} ({champ.recall:.4f} -> {chal.recall:.4f}) "
                f"> max_class_recall_drop {cfg.max_class_recall_drop:.4f}"
            )
    if recall_ok:
        reasons.append(
            f"no class recall drops more than {cfg.max_class_recall_drop:.4f}"
        )
    return Decision(promote=acc_ok and recall_ok, reasons=reasons)


def compute_metrics(
    y_true: Sequence[str], probabilities: Any, classes: Sequence[str]
) -> Metrics:
    """Accuracy, per-class P/R/F1, log loss and confusion matrix (pure).

    ``probabilities``: (n, len(classes)); a row of NaN means the model could not classify
    that image: it counts as wrong and as uniform probabilities in the log loss.
    """
    import numpy as np
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    probs = np.asarray(probabilities, dtype=np.float64).reshape(len(y_true), len(classes))
    index = {c: i for i, c in enumerate(classes)}
    truth = np.array([index[y] for y in y_true], dtype=np.int64)
    failed = np.isnan(probs).any(axis=1)
    probs = np.where(failed[:, None], 1.0 / len(classes), probs)
    # -1 marks "no prediction": it never equals a true class, so it counts as wrong.
    pred = np.where(failed, -1, probs.argmax(axis=1))
    n = len(truth)
    labels = list(range(len(classes)))
    p, r, f1, support = precision_recall_fscore_support(
        truth, pred, labels=labels, zero_division=0
    )
    p_true = probs[np.arange(n), truth] / probs.sum(axis=1)
    cm = confusion_matrix(truth, pred, labels=labels) if n else np.zeros((0, 0), dtype=int)
    return Metrics(
        accuracy=float((pred == truth).mean()) if n else 0.0,
        per_class={
            c: ClassMetrics(float(p[i]), float(r[i]), float(f1[i]), int(support[i]))
            for i, c in enumerate(classes)
        },
        log_loss=float(-np.log(np.clip(p_true, _LOG_LOSS_CLIP, 1.0)).mean()) if n else math.nan,
        confusion_matrix=tuple(tuple(int(x) for x in row) for row in cm),
        n=n,
        n_errors=int(failed.sum()),
    )


def mcnemar_exact_p(challenger_correct: Sequence[bool], champion_correct: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value on paired correctness (1.0 when they never disagree)."""
    from scipy.stats import binomtest

    b = sum(1 for a, c in zip(challenger_correct, champion_correct, strict=True) if a and not c)
    c = sum(1 for a, c in zip(challenger_correct, champion_correct, strict=True) if c and not a)
    if b + c == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5).pvalue)


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
        )

    def summary(self) -> str:
        broken = f" (broken: {self.champion_error})" if self.champion_error else ""
        champ = (
            f"champion v{self.champion_version}: accuracy {self.champion.accuracy:.4f}"
            if self.champion
            else f"champion: none{broken}"
        )
        lines = [
            f"run {self.run_id} on manifest {self.manifest_version} ({self.n_test} test images)",
            f"challenger: accuracy {self.challenger.accuracy:.4f}, "
            f"log loss {self.challenger.log_loss:.4f}",
            champ,
        ]
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
    s3: Any = None,
) -> EvalReport:
    """Evaluate run ``run_id``'s model and the champion on the same test split; log and decide."""
    from mlflow.tracking import MlflowClient

    from weather_tasks import storage

    serving.use_tracking(cfg)
    client = MlflowClient()
    run = client.get_run(run_id)
    version = manifest_version or run.data.tags.get("manifest_version")
    if not version:
        raise EvaluationError(
            f"run {run_id} has no 'manifest_version' tag; pass the manifest version explicitly"
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

    model_uri = serving.run_model_uri(run_id)
    chal_probs = _predict_probs(serving.load_model(model_uri), paths, classes)
    challenger = compute_metrics(y_true, chal_probs, classes)

    champion: Metrics | None = None
    champion_error: str | None = None
    mcnemar_p: float | None = None
    champ_version = _champion_version(client, cfg)
    champ_run_id = None
    if champ_version is not None:
        champ_run_id = champ_version.run_id
        try:
            champ_model = serving.load_model(
                f"models:/{cfg.registered_model}/{champ_version.version}"
            )
            champ_probs = _predict_probs(champ_model, paths, classes)
            champion = compute_metrics(y_true, champ_probs, classes)
            mcnemar_p = mcnemar_exact_p(
                _correct(chal_probs, y_true, classes), _correct(champ_probs, y_true, classes)
            )
        except Exception as exc:  # noqa: BLE001 - any failure means "champion unusable"
            champion_error = f"{type(exc).__name__}: {exc}"[:500]
            log.warning(
                "CHAMPION %s v%s CANNOT BE EVALUATED, treating it as absent: %s",
                cfg.registered_model, champ_version.version, champion_error,
            )

    decision = decide(challenger, champion, cfg, champion_error=champion_error)
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
    )
    _log_to_run(client, report)
    log.info("evaluation of run %s:\n%s", run_id, report.summary())
    return report


def read_evaluation(cfg: PipelineConfig, run_id: str) -> EvalReport:
    """The evaluation stored on a run by :func:`evaluate_challenger`."""
    import mlflow

    serving.use_tracking(cfg)
    try:
        data = mlflow.artifacts.load_dict(f"runs:/{run_id}/{EVALUATION_ARTIFACT}")
    except Exception as exc:  # noqa: BLE001 - MlflowException or OSError depending on store
        raise EvaluationError(
            f"run {run_id} has no {EVALUATION_ARTIFACT}; run `weather evaluate {run_id}` first"
        ) from exc
    return EvalReport.from_dict(data)


def _champion_version(client: Any, cfg: PipelineConfig) -> Any:
    """The model version holding the champion alias, or None (no model or no alias yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(cfg.registered_model, serving.CHAMPION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _predict_probs(model: Any, paths: Sequence[str], classes: Sequence[str]) -> Any:
    """(n, classes) probabilities in ``classes`` order; NaN rows for images the model failed on."""
    import numpy as np

    frame = serving.predictions_frame(model, paths)
    missing = [c for c in classes if f"prob_{c}" not in frame.columns]
    if missing:
        raise EvaluationError(
            f"model output lacks classes {missing} (columns {list(frame.columns)})"
        )
    return np.asarray(frame[[f"prob_{c}" for c in classes]], dtype=np.float64)


def _correct(probs: Any, y_true: Sequence[str], classes: Sequence[str]) -> list[bool]:
    import numpy as np

    out = []
    for row, y in zip(probs, y_true, strict=True):
        out.append(bool(not np.isnan(row).any() and classes[int(np.argmax(row))] == y))
    return out


def _log_to_run(client: Any, report: EvalReport) -> None:
    run_id = report.run_id
    metrics = {"test_accuracy": report.challenger.accuracy}
    if not math.isnan(report.challenger.log_loss):
        metrics["test_log_loss"] = report.challenger.log_loss
    for c, m in report.challenger.per_class.items():
        metrics[f"test_recall_{c}"] = m.recall
        metrics[f"test_precision_{c}"] = m.precision
        metrics[f"test_f1_{c}"] = m.f1
    if report.champion is not None:
        metrics["champion_test_accuracy"] = report.champion.accuracy
    if report.mcnemar_p is not None:
        metrics["mcnemar_p"] = report.mcnemar_p
    for k, v in metrics.items():
        client.log_metric(run_id, k, v, step=0)
    tags = {
        "evaluation.promote": str(report.promote).lower(),
        "evaluation.reasons": "; ".join(report.decision.reasons)[:5000],
        "evaluation.manifest_version": report.manifest_version,
        "evaluation.champion_version": report.champion_version or "none",
    }
    if report.champion_error:
        tags["evaluation.champion_error"] = report.champion_error
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    client.log_dict(run_id, report.as_dict(), EVALUATION_ARTIFACT)
