"""The serving client: load a logged pyfunc model from MLflow and classify image files.

The model (logged by :mod:`weather_tasks.model_package`) decodes and preprocesses inside, so
this side only reads files and frames: no TensorFlow import here, nothing of training. The model
takes image bytes only (it reads no files, so a REST client cannot make the server read one):
files are read here, and a file that cannot be read gets its own per-row error.

:func:`predict_files` checks every file first, as ingest checks an object (``validate``: its
reason codes), before MLflow or the model is touched: a missing file, a folder or a text file is
reported in seconds, not after the model's import and download, and when no file is usable the
model is never loaded. The model URI is pinned before loading (``@champion`` ->
``models:/<name>/<version>``), so a report says which version answered.

Models are loaded through an explicit tracking server (``cfg``), never the process's global
MLflow state: MLflow resolves ``models:/`` and ``runs:/`` model URIs against the *process's*
tracking and registry URIs even when ``download_artifacts`` is given a ``tracking_uri`` (its
``ModelsArtifactRepository`` builds its own ``MlflowClient`` from the global registry URI), so
the URI is first resolved to the model's storage location with ``tracking.client(cfg)``, then
downloaded with that tracking URI and loaded from the local copy.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weather_tasks import tracking, validate
from weather_tasks.config import PipelineConfig, PipelineError

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

# The per-row error code of a file this side could not read; the model's codes
# (``serving_model.ERROR_CODES``) cover everything after the bytes reach it.
UNREADABLE = "unreadable"
# Files read and sent per ``model.predict`` call: bounds the bytes held in memory at once.
_FILES_PER_CALL = 256


class ServingError(PipelineError):
    """The model to serve cannot be found (no such alias or version in the registry)."""


@dataclass(frozen=True)
class ImagePrediction:
    path: str
    label: str | None
    probabilities: dict[str, float] | None
    error: str | None = None
    error_code: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "label": self.label,
            "probabilities": self.probabilities,
            "error": self.error,
            "error_code": self.error_code,
        }


@dataclass(frozen=True)
class PredictReport:
    requested_model_uri: str
    model_uri: str | None  # pinned (models:/<name>/<version>); None: no usable file, not loaded
    predictions: tuple[ImagePrediction, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> bool:
        """True when any image could not be classified (the CLI then exits 1)."""
        return any(p.error for p in self.predictions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requested_model_uri": self.requested_model_uri,
            "model_uri": self.model_uri,
            "predictions": [p.as_dict() for p in self.predictions],
            "n_ok": sum(1 for p in self.predictions if not p.error),
            "n_error": sum(1 for p in self.predictions if p.error),
        }

    def summary(self) -> str:
        if self.model_uri is None:
            lines = [f"model: not loaded ({self.requested_model_uri}): no usable image"]
        elif self.model_uri == self.requested_model_uri:
            lines = [f"model: {self.model_uri}"]
        else:
            lines = [f"model: {self.model_uri} ({self.requested_model_uri})"]
        for p in self.predictions:
            if p.error:
                lines.append(f"{p.path}: {p.error_code}: {p.error}")
            else:
                probs = "  ".join(f"{c}={v:.3f}" for c, v in (p.probabilities or {}).items())
                lines.append(f"{p.path}: {p.label}  ({probs})")
        return "\n".join(lines)


def check_file(path: str | Path, cfg: PipelineConfig) -> validate.Rejected | None:
    """Why ``path`` cannot be classified, or None: ingest's checks (:func:`validate.validate_image`,
    its reason codes) after ``unreadable`` for a missing, special or unreadable file. The size is
    checked before the file is read."""
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            return validate.Rejected(UNREADABLE, "is a directory")
        if not stat.S_ISREG(info.st_mode):
            return validate.Rejected(UNREADABLE, "not a regular file")
        if info.st_size > cfg.max_object_bytes:
            return validate.Rejected("too_many_bytes",
                                     f"{info.st_size} bytes > {cfg.max_object_bytes}")
        data = Path(path).read_bytes()
    except OSError as exc:
        return validate.Rejected(UNREADABLE, (exc.strerror or str(exc)).lower())
    try:
        validate.validate_image(data, cfg)
    except validate.Rejected as exc:
        return exc
    return None


def resolve_model_uri(model_uri: str, cfg: PipelineConfig) -> str:
    """``models:/<name>@<alias>`` pinned to ``models:/<name>/<version>`` on ``cfg``'s server;
    other URIs as they are."""
    return _pinned(tracking.client(cfg), model_uri)


def load_model(model_uri: str, cfg: PipelineConfig) -> Any:
    """The pyfunc model at ``model_uri`` (``runs:/``, ``models:/name/version|@alias``) on
    ``cfg``'s tracking server."""
    import mlflow

    source = _model_source(tracking.client(cfg), model_uri)
    with tempfile.TemporaryDirectory(prefix="weather-load-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=tmp, tracking_uri=cfg.mlflow_tracking_uri
        )
        # Loading reads everything into memory (the Keras model too): the copy can go.
        return mlflow.pyfunc.load_model(local)


def predictions_frame(model: Any, paths: Sequence[str | Path]) -> Any:
    """The model's output DataFrame for image files, one row per path in order.

    The files are read here and sent as bytes. A file that cannot be read gets a row like any
    failed image: label and probabilities None, ``error`` saying why, ``error_code``
    ``unreadable``; the other files are still classified.
    """
    import pandas as pd

    frames = []
    for start in range(0, len(paths), _FILES_PER_CALL):
        frames.append(_predict_chunk(model, paths[start : start + _FILES_PER_CALL]))
    if not frames:
        return _predict_chunk(model, [])
    return pd.concat(frames, ignore_index=True)


def _predict_chunk(model: Any, paths: Sequence[str | Path]) -> Any:
    import pandas as pd

    blobs: list[bytes] = []
    read: list[int] = []
    unreadable: dict[int, str] = {}
    for i, path in enumerate(paths):
        try:
            blobs.append(Path(path).read_bytes())
            read.append(i)
        except OSError as exc:
            unreadable[i] = f"cannot read {path}: {exc.strerror or exc}"
    out = model.predict(pd.DataFrame({"image": pd.Series(blobs, dtype=object)}))
    columns = list(out.columns)
    if "error_code" not in columns:  # a model logged before error codes existed
        columns.append("error_code")
    # object columns of None: a failed row reads as None whatever the model's dtypes.
    frame = pd.DataFrame({c: pd.Series([None] * len(paths), dtype=object) for c in columns})
    for c in out.columns:
        frame.loc[read, c] = out[c].astype(object).where(out[c].notna(), None).to_numpy()
    for i, message in unreadable.items():
        frame.at[i, "error"] = message
        frame.at[i, "error_code"] = UNREADABLE
    return frame


def predict_files(
    model_uri: str, paths: Sequence[str | Path], cfg: PipelineConfig
) -> PredictReport:
    """Classify image files; a file that fails ingest's checks gets its reason, not a crash.

    Every file is checked before anything is loaded; with no usable file the model URI is not
    even resolved. The report names the pinned version that answered.
    """
    rejected = {i: r for i, path in enumerate(paths) if (r := check_file(path, cfg)) is not None}
    usable = [path for i, path in enumerate(paths) if i not in rejected]
    pinned = resolve_model_uri(model_uri, cfg) if usable else None
    answered = iter(_classify(load_model(pinned, cfg), usable) if pinned else [])
    preds = tuple(
        ImagePrediction(str(path), None, None, rejected[i].detail, rejected[i].reason)
        if i in rejected else next(answered)
        for i, path in enumerate(paths)
    )
    return PredictReport(requested_model_uri=model_uri, model_uri=pinned, predictions=preds)


def _classify(model: Any, paths: Sequence[str | Path]) -> list[ImagePrediction]:
    frame = predictions_frame(model, paths)
    classes = [c.removeprefix("prob_") for c in frame.columns if c.startswith("prob_")]
    preds = []
    for path, row in zip(paths, frame.to_dict("records"), strict=True):
        if isinstance(row.get("error"), str) and row["error"]:  # None: no error
            code = row.get("error_code")
            preds.append(ImagePrediction(str(path), None, None, str(row["error"]),
                                         str(code) if code else None))
        else:
            probs = {c: float(row[f"prob_{c}"]) for c in classes}
            preds.append(ImagePrediction(str(path), str(row["label"]), probs))
    return preds


def _model_source(mlflow_client: MlflowClient, model_uri: str) -> str:
    """Where the model's files are stored (an artifact URI), resolved with ``mlflow_client``.

    ``models:/<name>/<version>`` and ``models:/<name>@<alias>``: the version's download URI;
    ``runs:/<run_id>/<name>``: the logged model of that name from that run (MLflow 3 keeps it
    outside the run's artifacts), else the run's artifact of that path (older runs); anything
    else (a storage URI, a local path) is returned as is.
    """
    model_uri = _pinned(mlflow_client, model_uri)
    parsed = urllib.parse.urlparse(model_uri)
    if parsed.scheme == "models" and not parsed.path.lstrip("/").startswith("m-"):
        name, version = parsed.path.lstrip("/").rsplit("/", 1)
        return mlflow_client.get_model_version_download_uri(name, version)
    if parsed.scheme == "models":  # a logged model id: models:/m-...
        return mlflow_client.get_logged_model(parsed.path.lstrip("/")).artifact_location
    if parsed.scheme == "runs":
        run_id, _, name = parsed.path.lstrip("/").partition("/")
        run = mlflow_client.get_run(run_id)
        logged = mlflow_client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"name = '{name}' AND source_run_id = '{run_id}'",
        )
        if logged:
            return logged[0].artifact_location
        return f"{run.info.artifact_uri}/{name}"
    return model_uri


def _pinned(mlflow_client: MlflowClient, model_uri: str) -> str:
    """``models:/<name>@<alias>`` -> ``models:/<name>/<version>``; other URIs unchanged."""
    parsed = urllib.parse.urlparse(model_uri)
    if parsed.scheme != "models" or "@" not in parsed.path:
        return model_uri
    name, alias = parsed.path.lstrip("/").split("@", 1)
    version = tracking.alias_version(mlflow_client, name, alias)
    if version is None:
        raise ServingError(
            f"{model_uri}: no version of {name!r} has alias {alias!r} on "
            f"{mlflow_client.tracking_uri} (nothing promoted yet? see weather status)"
        )
    return tracking.version_uri(name, version)
