"""The model card of a run (and of its registered version): what the model is for, its data,
recipe, test metrics, calibration, comparison with the champion it replaced, the decision and
its known weaknesses, as one self-contained HTML page and as Markdown.

Two halves, so that rendering is testable without services:

- :func:`gather_card_data` reads MLflow (run params, metrics and their history, tags, the
  evaluation, test report, test predictions and calibration artifacts, the plots) and the
  manifest on S3 (counts per class and split, images new since the replaced champion's
  manifest, sources, the misclassified test photos) into one plain dict;
- :func:`render_html` and :func:`render_markdown` turn that dict into text (Jinja2 templates in
  ``templates/``, autoescaped: run names, reasons and source keys are shown as text).

The HTML makes no request of its own: CSS is inline and every figure and thumbnail is a
``data:`` URI, so it can be served under a ``default-src 'none'`` policy, mailed or archived.
A piece a run lacks (calibration, a champion, a plot; runs from before they were logged)
reads "not recorded". :func:`write_card` logs both files on the run (registry calls it at
promotion, when the decision exists); :func:`build_card` is what ``weather card`` calls.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weather_tasks import config, manifest, tracking
from weather_tasks.config import PipelineConfig, PipelineError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

# The promotion's outcome as promote decided it, next to the card: ``weather card`` rebuilds a
# card with the same decision (a held or refused challenger is not registered either, so the
# registry alone cannot tell them apart). Only this module writes and reads it.
DECISION_ARTIFACT = "card/decision.json"
THUMBNAILS = 6  # misclassified test photos shown
THUMBNAIL_PX = 160  # longest side
CONFUSED_PAIRS = 3
SOURCES_SHOWN = 8
ATTRIBUTION = (
    "Photos from the Multi-class Weather Dataset (G. Ajayi, 2018, Mendeley Data, "
    "doi:10.17632/4drtyfjtfy.1) are licensed CC BY 4.0."
)
# What each status means on the card (already_champion: a retry of a promotion).
STATUS_TEXT = {
    "promoted": "promoted to champion",
    "first_champion": "promoted: the first champion",
    "not_better": "not promoted: the champion stays",
    "held_for_review": "held for review: not promoted yet",
    "refused_champion_changed": "not promoted: the champion changed since the evaluation",
    "not_decided": "no promotion decision recorded",
}
_DATA_URI = re.compile(r"^data:image/(png|jpeg);base64,[A-Za-z0-9+/=]+$")


class CardError(PipelineError):
    """A model card cannot be built (no such run or version, no champion)."""


@dataclass(frozen=True)
class CardDecision:
    """The promotion's outcome the card states (``PromoteReport``'s fields it needs)."""

    status: str
    reason: str
    version: str | None = None
    previous_version: str | None = None
    champion_version: str | None = None  # the champion the evaluation compared with

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "version": self.version,
                "previous_version": self.previous_version,
                "champion_version": self.champion_version}


@dataclass(frozen=True)
class ModelCard:
    run_id: str
    version: str | None
    html: str
    markdown: str


@dataclass(frozen=True)
class CardFiles:
    """What ``weather card`` wrote."""

    run_id: str
    version: str | None
    html_path: str
    markdown_path: str

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "version": self.version, "html": self.html_path,
                "markdown": self.markdown_path}

    def summary(self) -> str:
        which = f"version {self.version} (run {self.run_id})" if self.version else \
            f"run {self.run_id}"
        return f"model card of {which}:\n  {self.html_path}\n  {self.markdown_path}"


# --- entry points ------------------------------------------------------------------------------
def build_card(
    cfg: PipelineConfig, version: str | None = None, *, run_id: str | None = None,
    s3: S3Client | None = None,
) -> ModelCard:
    """The card of ``run_id``, or of registered ``version`` (default: the ``@champion``)."""
    from weather_tasks import storage

    client = tracking.client(cfg)
    if run_id is None:
        run_id, version = _resolve_version(client, cfg.registered_model, version)
    s3 = s3 if s3 is not None else storage.make_client(cfg)
    decision = _stored_decision(client, cfg, run_id)
    data = gather_card_data(cfg, run_id, client=client, s3=s3, decision=decision)
    return ModelCard(run_id, data["version"], render_html(data), render_markdown(data))


def write_card(
    cfg: PipelineConfig, run_id: str, *, client: MlflowClient, s3: S3Client,
    decision: CardDecision,
) -> str:
    """Build the card with ``decision`` and log it on the run (HTML, Markdown and the
    decision); the HTML's ``runs:/`` URI (what the version tag holds)."""
    data = gather_card_data(cfg, run_id, client=client, s3=s3, decision=decision)
    client.log_dict(run_id, decision.as_dict(), DECISION_ARTIFACT)
    client.log_text(run_id, render_markdown(data), tracking.CARD_MARKDOWN_ARTIFACT)
    client.log_text(run_id, render_html(data), tracking.CARD_HTML_ARTIFACT)
    return card_uri(run_id)


def save_card(card: ModelCard, out_dir: str | Path) -> CardFiles:
    """Write ``model_card.html`` and ``model_card.md`` into ``out_dir`` (made if missing)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html = out / Path(tracking.CARD_HTML_ARTIFACT).name
    md = out / Path(tracking.CARD_MARKDOWN_ARTIFACT).name
    html.write_text(card.html, encoding="utf-8")
    md.write_text(card.markdown, encoding="utf-8")
    return CardFiles(card.run_id, card.version, str(html), str(md))


def card_uri(run_id: str) -> str:
    return f"runs:/{run_id}/{tracking.CARD_HTML_ARTIFACT}"


def has_card(client: MlflowClient, name: str, run_id: str, version: str | None) -> bool:
    """Is the card on the run (and, for a version, its tag on the version)?"""
    folder = tracking.CARD_HTML_ARTIFACT.rpartition("/")[0]
    logged = {a.path for a in client.list_artifacts(run_id, folder)}
    if tracking.CARD_HTML_ARTIFACT not in logged:
        return False
    if version is None:
        return True
    return tracking.VERSION_CARD_TAG in (client.get_model_version(name, version).tags or {})


# --- gathering (MLflow and S3) -----------------------------------------------------------------
def gather_card_data(
    cfg: PipelineConfig, run_id: str, *, client: MlflowClient, s3: S3Client,
    decision: CardDecision | None = None,
) -> dict[str, Any]:
    """Everything the card shows, as a plain dict (figures as ``data:`` URIs).

    A missing artifact, metric or manifest is None ("not recorded"); MLflow or S3 being
    unreachable raises (the caller maps it to the transient error it is).
    """
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if tracking.tracking_error(exc, cfg) is not None:
            raise
        raise CardError(f"MLflow has no run {run_id!r}") from exc
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    classes = list(cfg.classes)

    evaluation = _artifact_json(cfg, client, run_id, tracking.EVALUATION_ARTIFACT)
    test_report = _artifact_json(cfg, client, run_id, tracking.TEST_REPORT_ARTIFACT)
    predictions = _artifact_json(cfg, client, run_id, tracking.TEST_PREDICTIONS_ARTIFACT)
    calibration = _artifact_json(cfg, client, run_id, tracking.CALIBRATION_ARTIFACT)
    if test_report and test_report.get("classes"):
        classes = list(test_report["classes"])

    version = decision.version if decision else None
    if version is None:
        version = _version_of_run(client, cfg.registered_model, run_id)
    champion_version = (decision.champion_version if decision and decision.champion_version
                        else (evaluation or {}).get("champion_version"))
    manifest_version = (tags.get(tracking.MANIFEST_VERSION_TAG)
                        or (evaluation or {}).get("manifest_version"))
    replaced_manifest = _version_manifest(client, cfg.registered_model, champion_version)
    m = _read_manifest(s3, cfg, manifest_version)

    return {
        "model_name": cfg.registered_model,
        "run_id": run_id,
        "run_name": run.info.run_name or run_id,
        "version": version,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "classes": classes,
        "data": _data_section(cfg, m, manifest_version, replaced_manifest, champion_version),
        "recipe": _recipe_section(cfg, client, run_id, params, metrics, tags),
        "learning_curve": _plot(cfg, client, run_id, tracking.LEARNING_CURVE_PLOT),
        "test": _test_section(cfg, client, run_id, test_report, classes),
        "calibration": _calibration_section(cfg, client, run_id, calibration, metrics,
                                            test_report),
        "comparison": _comparison_section(evaluation),
        "decision": _decision_section(decision, evaluation),
        "weaknesses": _weaknesses_section(cfg, s3, m, test_report, predictions, classes),
    }


def _resolve_version(
    client: MlflowClient, name: str, version: str | None
) -> tuple[str, str]:
    from mlflow.exceptions import MlflowException

    if version is None:
        mv = tracking.alias_model_version(client, name, tracking.CHAMPION)
        if mv is None:
            raise CardError(f"{name} has no @champion yet; pass a VERSION or --run RUN_ID")
    else:
        try:
            mv = client.get_model_version(name, str(version))
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND",
                                  "INVALID_PARAMETER_VALUE"):
                raise CardError(f"{name} has no version {version!r}") from exc
            raise
    run_id = mv.run_id or (mv.tags or {}).get(tracking.VERSION_RUN_ID_TAG)
    if not run_id:
        raise CardError(f"{name} v{mv.version} names no run")
    return run_id, str(mv.version)


def _stored_decision(
    client: MlflowClient, cfg: PipelineConfig, run_id: str
) -> CardDecision | None:
    data = _artifact_json(cfg, client, run_id, DECISION_ARTIFACT)
    if not data:
        return None
    return CardDecision(str(data.get("status", "not_decided")), str(data.get("reason", "")),
                        data.get("version"), data.get("previous_version"),
                        data.get("champion_version"))


def _artifact_bytes(
    cfg: PipelineConfig, client: MlflowClient, run_id: str, path: str
) -> bytes | None:
    """An artifact's bytes, None if the run lacks it; an unreachable server raises."""
    try:
        with tempfile.TemporaryDirectory(prefix="weather-card-") as tmp:
            return Path(client.download_artifacts(run_id, path, tmp)).read_bytes()
    except Exception as exc:  # MlflowException or OSError depending on the artifact store
        if tracking.tracking_error(exc, cfg) is not None or _is_boto_outage(exc):
            raise
        return None


def _is_boto_outage(exc: BaseException) -> bool:
    """A botocore error that is not "no such object" (the artifact store is S3 or MinIO)."""
    from botocore import exceptions as bex

    if isinstance(exc, bex.ClientError):
        return not manifest.is_missing(exc)
    return isinstance(exc, bex.BotoCoreError)


def _artifact_json(
    cfg: PipelineConfig, client: MlflowClient, run_id: str, path: str
) -> dict[str, Any] | None:
    body = _artifact_bytes(cfg, client, run_id, path)
    if body is None:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        log.warning("artifact %s of run %s is not JSON: left out of the card", path, run_id)
        return None
    return data if isinstance(data, dict) else None


def _plot(cfg: PipelineConfig, client: MlflowClient, run_id: str, path: str) -> str | None:
    body = _artifact_bytes(cfg, client, run_id, path)
    return None if body is None else data_uri(body, "png")


def data_uri(body: bytes, kind: str) -> str:
    return f"data:image/{kind};base64,{base64.b64encode(body).decode('ascii')}"


def _figure_uri(figure: Any) -> str:
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=80)
    return data_uri(buf.getvalue(), "png")


def _version_of_run(client: MlflowClient, name: str, run_id: str) -> str | None:
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return str(min(int(v.version) for v in found)) if found else None


def _version_manifest(client: MlflowClient, name: str, version: str | None) -> str | None:
    """The manifest version the registered ``version`` was trained on."""
    from mlflow.exceptions import MlflowException

    if not version:
        return None
    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return None
        raise
    return (mv.tags or {}).get(tracking.VERSION_MANIFEST_VERSION_TAG)


def _read_manifest(
    s3: S3Client, cfg: PipelineConfig, version: str | None
) -> manifest.Manifest | None:
    if not version:
        return None
    try:
        return manifest.read_manifest(s3, cfg, version)
    except manifest.ManifestError as exc:
        log.warning("model card without data section: %s", exc)
        return None


def _data_section(
    cfg: PipelineConfig, m: manifest.Manifest | None, manifest_version: str | None,
    replaced_manifest: str | None, champion_version: str | None,
) -> dict[str, Any] | None:
    if m is None:
        return None if not manifest_version else {"manifest_version": manifest_version,
                                                  "counts": None}
    counts = m.counts()
    splits = [s for s in manifest.SPLITS if any(counts[s].values())]
    rows = [{"label": c, **{s: counts[s].get(c, 0) for s in splits},
             "total": sum(counts[s].get(c, 0) for s in splits)} for c in m.classes]
    totals = {s: sum(counts[s].values()) for s in splits}
    new = new_since(m, replaced_manifest) if replaced_manifest else None
    return {
        "manifest_version": m.version,
        "manifest_uri": manifest.manifest_uri(cfg, m.version),
        "created_at": m.created_at,
        "splits": splits,
        "counts": rows,
        "totals": totals | {"total": sum(totals.values())},
        "replaced_version": champion_version,
        "replaced_manifest": replaced_manifest,
        "new_images": new,
        "sources": sources(m, cfg.incoming_prefix),
    }


def new_since(m: manifest.Manifest, previous_manifest: str) -> dict[str, int]:
    """Images per split first seen in a manifest version after ``previous_manifest``."""
    before = _version_number(previous_manifest)
    out = dict.fromkeys(manifest.SPLITS, 0)
    for r in m.images.values():
        if _version_number(r.first_version) > before:
            out[r.split] += 1
    return out | {"total": sum(out.values())}


def sources(m: manifest.Manifest, incoming_prefix: str) -> list[dict[str, Any]]:
    """Images per source folder (the source key's directory below ``incoming/``), most first;
    an image that arrived under several keys counts once per folder."""
    counter: Counter[str] = Counter()
    for r in m.images.values():
        folders = set()
        for key in r.source_keys:
            rest = key.removeprefix(incoming_prefix)
            folder = rest.rpartition("/")[0]
            folders.add(f"{incoming_prefix}{folder}/" if folder else incoming_prefix)
        counter.update(folders)
    ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))  # ties by name
    out: list[dict[str, Any]] = [{"prefix": p, "images": n} for p, n in ranked[:SOURCES_SHOWN]]
    if len(ranked) > SOURCES_SHOWN:
        others = sum(n for _, n in ranked[SOURCES_SHOWN:])
        out.append({"prefix": f"{len(ranked) - SOURCES_SHOWN} more folders", "images": others})
    return out


def _version_number(version: str | None) -> int:
    """A version's number; -1 for none or a name that is not a version (an MLflow tag)."""
    try:
        return manifest.version_number(str(version))
    except manifest.ManifestError:
        return -1


def _recipe_section(
    cfg: PipelineConfig, client: MlflowClient, run_id: str, params: Mapping[str, str],
    metrics: Mapping[str, float], tags: Mapping[str, str],
) -> dict[str, Any]:
    history = _lr_history(client, run_id)
    epochs_run = len(client.get_metric_history(run_id, "val_accuracy")) or None
    best = metrics.get("best_epoch")
    return {
        "model": params.get("model"),
        "image_size": params.get("image_size"),
        "epochs_configured": params.get("epochs"),
        "epochs_run": epochs_run,
        "best_epoch": int(best) if best is not None else None,
        "lr_initial": params.get("learning_rate"),
        "lr_drops": lr_drops(history),
        "batch_size": params.get("batch_size"),
        "differs_from_seed": differs_from_seed(params),
        "precision": tags.get("precision") or params.get("precision_resolved"),
        "device": tags.get("device"),
        "train_seconds": metrics.get("train_seconds"),
        "code_version": tags.get("code_version"),
    }


def _lr_history(client: MlflowClient, run_id: str) -> list[float]:
    """The learning rate at each epoch's start (train logs it as ``lr``, step = epoch)."""
    for name in ("lr", "learning_rate"):
        points = client.get_metric_history(run_id, name)
        if points:
            return [p.value for p in sorted(points, key=lambda p: p.step)]
    return []


def lr_drops(rates: Sequence[float]) -> list[dict[str, Any]]:
    """Each epoch (1-based) that started with a lower learning rate than the one before."""
    return [{"epoch": i + 1, "lr": rates[i], "from": rates[i - 1]}
            for i in range(1, len(rates)) if rates[i] < rates[i - 1]]


def differs_from_seed(params: Mapping[str, str]) -> list[dict[str, str]]:
    """The recipe settings (``config.SEED_RECIPE``) whose logged value is not the seed's."""
    out = []
    for name, seed in config.SEED_RECIPE.items():
        logged = params.get(name)
        if logged is None or _same(logged, seed):
            continue
        out.append({"name": name, "value": logged, "seed": str(seed)})
    return out


def _same(logged: str, seed: Any) -> bool:
    if isinstance(seed, bool):
        return logged.lower() == str(seed).lower()
    if isinstance(seed, int | float):
        try:
            return float(logged) == float(seed)
        except ValueError:
            return False
    return logged == str(seed)


def _test_section(
    cfg: PipelineConfig, client: MlflowClient, run_id: str, report: Mapping[str, Any] | None,
    classes: Sequence[str],
) -> dict[str, Any] | None:
    if not report:
        return None
    ci = report.get("accuracy_ci")
    per_class = report.get("per_class") or {}
    return {
        "n": report.get("n"),
        "n_errors": report.get("n_errors", 0),
        "accuracy": report.get("accuracy"),
        "accuracy_ci": list(ci) if ci else None,
        "log_loss": report.get("log_loss"),
        "per_class": [{"label": c, **per_class[c]} for c in classes if c in per_class],
        "confusion_matrix": report.get("confusion_matrix") or [],
        "confusion_plot": _plot(cfg, client, run_id, tracking.CONFUSION_MATRIX_TEST_PLOT),
    }


def _calibration_section(
    cfg: PipelineConfig, client: MlflowClient, run_id: str,
    calibration: Mapping[str, Any] | None, metrics: Mapping[str, float],
    test_report: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    cal = dict(calibration or {})
    temperature = cal.get("temperature", metrics.get(tracking.TEMPERATURE_METRIC))
    before = cal.get("ece_uncalibrated", metrics.get(tracking.VAL_ECE_UNCALIBRATED_METRIC))
    after = cal.get("ece_calibrated", metrics.get(tracking.VAL_ECE_METRIC))
    test_ece = (test_report or {}).get("ece", metrics.get(tracking.TEST_ECE_METRIC))
    if temperature is None and before is None and after is None and test_ece is None:
        return None
    diagram = _plot(cfg, client, run_id, tracking.RELIABILITY_VAL_PLOT)
    test_bins = (test_report or {}).get("reliability")
    test_diagram = None
    if test_bins:
        from weather_tasks import plots

        label = "served model" + (f" (ECE {test_ece:.3f})" if test_ece is not None else "")
        test_diagram = _figure_uri(plots.reliability_figure({label: test_bins},
                                                            title="reliability (test)"))
    return {"temperature": temperature, "val_ece_before": before, "val_ece_after": after,
            "val_n": cal.get("n"), "test_ece": test_ece, "val_diagram": diagram,
            "test_diagram": test_diagram}


def _comparison_section(evaluation: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not evaluation:
        return None
    champion = evaluation.get("champion")
    challenger = evaluation.get("challenger") or {}
    return {
        "champion_version": evaluation.get("champion_version"),
        "champion_error": evaluation.get("champion_error"),
        "n_test": evaluation.get("n_test"),
        "challenger_accuracy": challenger.get("accuracy"),
        "challenger_ci": challenger.get("accuracy_ci"),
        "champion_accuracy": champion.get("accuracy") if champion else None,
        "champion_ci": champion.get("accuracy_ci") if champion else None,
        "difference": evaluation.get("accuracy_difference"),
        "mcnemar_p": evaluation.get("mcnemar_p"),
    }


def _decision_section(
    decision: CardDecision | None, evaluation: Mapping[str, Any] | None
) -> dict[str, Any]:
    reasons = list((evaluation or {}).get("reasons") or [])
    if decision is None:
        status, reason = "not_decided", ""
    else:
        status, reason = decision.status, decision.reason
        if status == "already_champion":
            status = "promoted"
        if status == "promoted" and not decision.champion_version and evaluation is not None \
                and not evaluation.get("champion_version"):
            status = "first_champion"
    return {"status": status, "text": STATUS_TEXT.get(status, status), "reason": reason,
            "evaluation_says": None if evaluation is None else bool(evaluation.get("promote")),
            "reasons": reasons,
            "version": decision.version if decision else None,
            "previous_version": decision.previous_version if decision else None}


def confused_pairs(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], top: int = CONFUSED_PAIRS
) -> list[dict[str, Any]]:
    """The off-diagonal cells with most images: (true, predicted, count, share of true)."""
    cells: list[dict[str, Any]] = []
    for i, row in enumerate(matrix):
        total = sum(row)
        for j, n in enumerate(row):
            if i != j and n:
                cells.append({"true": classes[i], "predicted": classes[j], "count": int(n),
                              "share": n / total if total else None})
    return sorted(cells, key=lambda c: (-c["count"], c["true"], c["predicted"]))[:top]


def _weaknesses_section(
    cfg: PipelineConfig, s3: S3Client, m: manifest.Manifest | None,
    test_report: Mapping[str, Any] | None, predictions: Mapping[str, Any] | None,
    classes: Sequence[str],
) -> dict[str, Any]:
    pairs = confused_pairs((test_report or {}).get("confusion_matrix") or [], classes)
    wrong = misclassified(predictions)
    shown = []
    for item in wrong[:THUMBNAILS]:
        rec = m.images.get(item["sha256"]) if m is not None else None
        thumb = _thumbnail(s3, cfg, rec) if rec is not None else None
        shown.append(item | {"thumbnail": thumb})
    return {"confused_pairs": pairs, "misclassified_total": len(wrong) if predictions else None,
            "misclassified": shown}


def misclassified(predictions: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The challenger's wrong test answers, most confident first (the worst surprises)."""
    out = []
    for p in (predictions or {}).get("images", []):
        answer = p.get("challenger") or {}
        if answer.get("predicted") != p.get("label"):
            out.append({"sha256": p.get("sha256"), "label": p.get("label"),
                        "predicted": answer.get("predicted"),
                        "confidence": answer.get("confidence"),
                        "source_key": (p.get("source_keys") or [None])[0]})
    return sorted(out, key=lambda p: -(p["confidence"] or 0.0))


def _thumbnail(s3: S3Client, cfg: PipelineConfig, rec: manifest.ImageRecord) -> str | None:
    """A JPEG data URI of the curated image, at most ``THUMBNAIL_PX`` on its longest side."""
    from botocore.exceptions import ClientError
    from PIL import Image, UnidentifiedImageError

    try:
        body = s3.get_object(Bucket=cfg.bucket,
                             Key=manifest.curated_key(cfg, rec.sha256, rec.ext))["Body"].read()
    except ClientError as exc:
        if manifest.is_missing(exc):
            return None
        raise
    try:
        with Image.open(io.BytesIO(body)) as opened:
            small = opened.convert("RGB")
        small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=80)
    except (UnidentifiedImageError, OSError):
        return None
    return data_uri(buf.getvalue(), "jpeg")


# --- rendering (pure) --------------------------------------------------------------------------
def render_html(data: Mapping[str, Any]) -> str:
    """The card as one self-contained HTML page (inline CSS, figures as ``data:`` URIs)."""
    return _environment().get_template("card.html.j2").render(card=data)


def render_markdown(data: Mapping[str, Any]) -> str:
    """The card as Markdown (tables and text; the figures are in the HTML card)."""
    return _environment().get_template("card.md.j2").render(card=data)


def _environment() -> Any:
    import jinja2

    # Autoescaped, also the Markdown (which renders inline HTML): run names, reasons and
    # source keys come from MLflow and the bucket and must stay text.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(pct=_pct, signed_pts=_signed_pts, num=_num, seconds=_seconds,
                       image_src=_image_src, cell=_cell)
    env.globals.update(status_text=STATUS_TEXT, attribution=ATTRIBUTION)
    return env


def _pct(value: float | None) -> str:
    return "not recorded" if value is None else f"{100 * value:.1f}%"


def _signed_pts(value: float | None) -> str:
    return "not recorded" if value is None else f"{100 * value:+.1f} pts"


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "not recorded"
    if isinstance(value, float):  # small rates (1e-05) keep their digits, 0.0 is 0.000
        return f"{value:.{digits}g}" if 0 < abs(value) < 1e-3 else f"{value:.{digits}f}"
    return str(value)


def _seconds(value: float | None) -> str:
    if value is None:
        return "not recorded"
    minutes, seconds = divmod(int(round(value)), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def _image_src(value: str | None) -> str:
    """Only our own embedded images: anything else (an http URL) is dropped."""
    return value if value and _DATA_URI.match(value) else ""


def _cell(value: Any) -> str:
    """Markdown table cell text: no pipe or line break can break the table."""
    return str(value).replace("|", "\\|").replace("\n", " ")
