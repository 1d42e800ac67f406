"""Evaluate, promote, roll back: the real code path against a real MLflow server and S3 server.

One tiny training (32 px, 2 epochs, 48 real photos ingested through ``weather_tasks.ingest``)
is shared by the module; further challengers are copies of its model logged to new runs
(same accuracy: a tie) or a diverged copy (NaN weights: every prediction fails, accuracy 0),
so each outcome is certain rather than dependent on how well a 2-epoch model trains.
``accuracy_floor`` is 0 so the first promotion does not depend on that either; the floor
itself is covered by the decision table in tests/unit/test_policy.py.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devtools import local_services
from tests.support import mwd_images
from weather_tasks import (
    card,
    cli,
    config,
    evaluate,
    ingest,
    manifest,
    model_package,
    registry,
    serving,
    storage,
    tracking,
)
from weather_tasks.config import PipelineConfig

pytestmark = pytest.mark.integration

PER_CLASS = 12


@pytest.fixture(scope="module")
def world(
    s3_server: local_services.Service,
    mlflow_server: local_services.Service,
    mlflow_process: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """A bucket with 48 ingested real photos and one tiny trained run."""
    from weather_tasks import train

    images = mwd_images()
    cfg = config.from_env(
        environ={},
        bucket=f"t-{uuid.uuid4().hex[:12]}",
        s3_endpoint_url=s3_server.url,
        work_dir=tmp_path_factory.mktemp("registry-work"),
        mlflow_tracking_uri=mlflow_server.url,
        experiment_name="test-registry",
        image_size=32,
        epochs=2,
        batch_size=8,
        precision="float32",
        accuracy_floor=0.0,
        parallelism=4,
    )
    s3 = storage.make_client(cfg)
    local_services.ensure_bucket(s3, cfg.bucket)
    for cls in cfg.classes:
        for path in sorted(images.glob(f"{cls}*.jpg"))[:PER_CLASS]:
            s3.put_object(Bucket=cfg.bucket, Key=cfg.incoming_prefix + path.name,
                          Body=path.read_bytes())
    report = ingest.ingest(cfg, s3)
    assert report.manifest_version == "v000001"
    trained = train.train_model(cfg, report.manifest_version, s3=s3, airflow_run_id="manual__t1")
    return {"cfg": cfg, "s3": s3, "train": trained, "manifest_version": report.manifest_version}


@pytest.fixture
def rcfg(world: dict[str, Any]) -> PipelineConfig:
    """The module's config with a registered model name of this test's own."""
    return config.override(world["cfg"], registered_model=f"wc-{uuid.uuid4().hex[:8]}")


def _keras_model(cfg: PipelineConfig, run_id: str) -> Any:
    return serving.load_model(tracking.run_model_uri(run_id), cfg).unwrap_python_model()._model


def _log_copy(cfg: PipelineConfig, keras_model: Any, manifest_version: str,
              diverged: bool = False) -> str:
    """Log ``keras_model`` (or a NaN-weight copy of it) to a new run; returns the run id."""
    import keras
    import mlflow

    model = keras_model
    if diverged:
        model = keras.models.clone_model(keras_model)
        model.set_weights([np.full_like(w, np.nan) for w in keras_model.get_weights()])
    mlflow.set_experiment(cfg.experiment_name)
    with mlflow.start_run(tags={"manifest_version": manifest_version}) as run:
        model_package.log_model(model, cfg)
    return run.info.run_id


def _versions(cfg: PipelineConfig) -> list[str]:
    found = tracking.client(cfg).search_model_versions(f"name = '{cfg.registered_model}'")
    return sorted((v.version for v in found), key=int)


def _aliases(cfg: PipelineConfig) -> dict[str, str]:
    return {k: str(v) for k, v in tracking.client(cfg).get_registered_model(
        cfg.registered_model).aliases.items()}


def test_tiny_end_to_end(
    world: dict[str, Any], rcfg: PipelineConfig, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = tracking.client(rcfg)
    run1 = world["train"].run_id
    version = world["manifest_version"]

    # The training run is logged: params, per-epoch metrics, plots, model.
    run = client.get_run(run1)
    assert run.data.tags["manifest_version"] == version
    assert run.data.params["image_size"] == "32"
    assert len(client.get_metric_history(run1, "val_accuracy")) == 2
    artifacts = _all_artifacts(client, run1)
    assert len([a for a in artifacts if a.endswith(".png")]) >= 2, artifacts

    # First run: no champion, floor 0 -> promoted; version tags written.
    ev1 = evaluate.evaluate_challenger(rcfg, run1, s3=world["s3"])
    assert ev1.champion is None and ev1.champion_version is None and ev1.promote
    assert ev1.manifest_version == version and ev1.n_test > 0
    assert 0.0 <= ev1.challenger.accuracy <= 1.0
    assert sum(map(sum, ev1.challenger.confusion_matrix)) == ev1.n_test
    tags = client.get_run(run1).data.tags
    assert tags["evaluation.promote"] == "true"
    assert "evaluation/evaluation.json" in _all_artifacts(client, run1)

    p1 = registry.promote_if_better(rcfg, ev1, airflow_run_id="manual__t1")
    assert (p1.status, p1.version, p1.previous_version) == ("promoted", "1", None)
    assert _aliases(rcfg) == {"champion": "1"}
    mv = client.get_model_version(rcfg.registered_model, "1")
    assert mv.tags["run_id"] == run1 and mv.tags["manifest_version"] == version
    assert mv.tags["airflow_run_id"] == "manual__t1"
    assert float(mv.tags["accuracy"]) == pytest.approx(ev1.challenger.accuracy)

    # Evaluate logged both models' answer per test image and the test calibration.
    preds = tracking.load_run_dict(client, run1, tracking.TEST_PREDICTIONS_ARTIFACT)
    test_records = manifest.read_manifest(world["s3"], rcfg, version).split("test")
    assert [p["sha256"] for p in preds["images"]] == [r.sha256 for r in test_records]
    assert [p["label"] for p in preds["images"]] == [r.label for r in test_records]
    assert all(p["source_keys"][0].startswith("incoming/") for p in preds["images"])
    assert all(p["champion"] is None for p in preds["images"])  # no champion yet
    right = sum(p["challenger"]["predicted"] == p["label"] for p in preds["images"])
    assert right == round(ev1.challenger.accuracy * ev1.n_test)
    assert all(0.0 < p["challenger"]["confidence"] <= 1.0 for p in preds["images"])
    test_report = tracking.load_run_dict(client, run1, tracking.TEST_REPORT_ARTIFACT)
    assert sum(b["count"] for b in test_report["reliability"]) == ev1.n_test
    assert client.get_run(run1).data.metrics[tracking.TEST_ECE_METRIC] == pytest.approx(
        test_report["ece"])

    # Promotion wrote the card on the run and tagged the version with its URI.
    assert mv.tags[tracking.VERSION_CARD_TAG] == f"runs:/{run1}/{tracking.CARD_HTML_ARTIFACT}"
    html = _artifact_text(client, run1, tracking.CARD_HTML_ARTIFACT)
    assert "promoted: the first champion" in html and "No champion to compare with" in html
    assert f"Manifest <b>{version}</b>" in html and ">12</td>" in html  # 12 shine photos
    assert not re.findall(r'(?:src|href)="(?!data:)', html)  # self-contained
    if right < ev1.n_test:  # a 2-epoch model gets some wrong: their thumbnails are shown
        assert 'src="data:image/jpeg;base64,' in html and card.ATTRIBUTION in html
    md = _artifact_text(client, run1, tracking.CARD_MARKDOWN_ARTIFACT)
    assert "## Known weaknesses" in md and f"MLflow run `{run1}`" in md

    # Idempotent: promoting the same run again (by run id, as `weather promote RUN_ID`)
    # creates no second version.
    again = registry.promote_if_better(rcfg, run1)
    assert (again.status, again.version) == ("already_champion", "1")
    assert _versions(rcfg) == ["1"]

    # A worse (diverged) challenger is compared on the same test images and not promoted.
    keras_model = _keras_model(rcfg, run1)
    run2 = _log_copy(rcfg, keras_model, version, diverged=True)
    ev2 = evaluate.evaluate_challenger(rcfg, run2, s3=world["s3"])
    assert ev2.champion_version == "1" and ev2.champion is not None
    assert ev2.champion.accuracy == pytest.approx(ev1.challenger.accuracy)
    assert ev2.challenger.accuracy == 0.0 and ev2.challenger.n_errors == ev2.n_test
    assert ev1.challenger.accuracy > 0.0, "the tiny model must get something right"
    assert not ev2.promote and ev2.mcnemar_p is not None
    p2 = registry.promote_if_better(rcfg, run2)
    assert (p2.status, p2.promoted) == ("not_better", False)
    assert _versions(rcfg) == ["1"] and _aliases(rcfg) == {"champion": "1"}
    # The loser's per-image answers sit next to the champion's, and its card says it lost.
    preds2 = tracking.load_run_dict(client, run2, tracking.TEST_PREDICTIONS_ARTIFACT)
    assert all(p["challenger"]["predicted"] is None for p in preds2["images"])  # NaN model
    assert [p["champion"] for p in preds2["images"]] == [p["challenger"]
                                                         for p in preds["images"]]
    html2 = _artifact_text(client, run2, tracking.CARD_HTML_ARTIFACT)
    assert "not promoted: the champion stays" in html2 and "Champion v1</th>" in html2

    # An equally good challenger (a tie, min_delta 0) wins: v2 champion, v1 previous.
    run3 = _log_copy(rcfg, keras_model, version)
    ev3 = evaluate.evaluate_challenger(rcfg, run3, s3=world["s3"])
    assert ev3.challenger.accuracy == pytest.approx(ev1.challenger.accuracy)
    assert ev3.promote and ev3.mcnemar_p == 1.0  # identical predictions never disagree
    p3 = registry.promote_if_better(rcfg, ev3.as_dict())  # as the DAG passes it via XCom
    assert (p3.status, p3.version, p3.previous_version) == ("promoted", "2", "1")
    assert _aliases(rcfg) == {"champion": "2", "previous": "1"}
    html3 = _artifact_text(client, run3, tracking.CARD_HTML_ARTIFACT)
    assert "promoted to champion" in html3 and "+0.0 pts" in html3 and "1.00" in html3
    if keep := os.environ.get("WEATHER_TEST_ARTIFACTS"):  # opt-in: keep a card to look at
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / "model_card.html").write_text(html3)

    # Every promotion released the promotion lease it held.
    locks = world["s3"].list_objects_v2(Bucket=rcfg.bucket, Prefix=rcfg.locks_prefix)
    assert locks.get("KeyCount") == 0, locks.get("Contents")

    # Rollback through the CLI: champion back to previous; previous now the rolled-back one.
    # The CLI takes the promotion lease on the same bucket as the promotions above.
    monkeypatch.setenv("WEATHER_MLFLOW_TRACKING_URI", rcfg.mlflow_tracking_uri)
    monkeypatch.setenv("WEATHER_REGISTERED_MODEL", rcfg.registered_model)
    monkeypatch.setenv("WEATHER_BUCKET", rcfg.bucket)
    monkeypatch.setenv("WEATHER_S3_ENDPOINT_URL", rcfg.s3_endpoint_url or "")
    capsys.readouterr()
    assert cli.main(["rollback", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["from_version"], out["to_version"], out["changed"]) == ("2", "1", True)
    assert _aliases(rcfg) == {"champion": "1", "previous": "2"}
    assert registry.rollback(rcfg, to_version=1).changed is False

    # `weather card` (default: the champion, now v1 again) writes both files, one line each.
    out_dir = world["cfg"].work_dir / "cards"
    assert cli.main(["card", "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert str(out_dir / "model_card.html") in printed and f"run {run1}" in printed
    saved = (out_dir / "model_card.html").read_text()
    assert "version 1" in saved and "promoted: the first champion" in saved
    assert (out_dir / "model_card.md").read_text().startswith("# Model card: ")
    assert cli.main(["card", "99"]) == 1
    assert "has no version '99'" in capsys.readouterr().err
    with pytest.raises(registry.RegistryError):
        registry.rollback(rcfg, to_version=99)

    # The champion alias now serves run 1's model again.
    assert client.get_model_version_by_alias(rcfg.registered_model, "champion").run_id == run1
    test_image = manifest.fetch_images(
        world["s3"], rcfg, manifest.read_manifest(world["s3"], rcfg).split("test")[:1]
    )[0][0]
    served = serving.predict_files(tracking.champion_uri(rcfg.registered_model), [test_image],
                                   rcfg)
    assert served.predictions[0].label in rcfg.classes


def test_promote_refuses_when_champion_changed_since_evaluation(
    world: dict[str, Any], rcfg: PipelineConfig
) -> None:
    keras_model = _keras_model(rcfg, world["train"].run_id)
    version = world["manifest_version"]
    first = _log_copy(rcfg, keras_model, version)
    assert registry.promote_if_better(
        rcfg, evaluate.evaluate_challenger(rcfg, first, s3=world["s3"])
    ).version == "1"

    late = _log_copy(rcfg, keras_model, version)
    late_eval = evaluate.evaluate_challenger(rcfg, late, s3=world["s3"])  # against v1
    # Meanwhile another run becomes champion.
    other = _log_copy(rcfg, keras_model, version)
    assert registry.promote_if_better(
        rcfg, evaluate.evaluate_challenger(rcfg, other, s3=world["s3"])
    ).version == "2"

    refused = registry.promote_if_better(rcfg, late_eval)
    assert refused.status == "refused_champion_changed" and refused.failed
    assert "evaluated against v1, now v2" in refused.reason
    assert _versions(rcfg) == ["1", "2"] and _aliases(rcfg)["champion"] == "2"


def test_broken_champion_does_not_block_a_valid_challenger(
    world: dict[str, Any], rcfg: PipelineConfig, s3_server: local_services.Service
) -> None:
    keras_model = _keras_model(rcfg, world["train"].run_id)
    version = world["manifest_version"]
    first = _log_copy(rcfg, keras_model, version)
    registry.promote_if_better(rcfg, evaluate.evaluate_challenger(rcfg, first, s3=world["s3"]))
    deleted = _delete_model_artifacts(rcfg, s3_server, tracking.client(rcfg), "1")
    assert deleted > 0

    challenger = _log_copy(rcfg, keras_model, version)
    ev = evaluate.evaluate_challenger(rcfg, challenger, s3=world["s3"])
    assert ev.champion_version == "1" and ev.champion is None and ev.champion_error
    assert ev.promote and any("could not be evaluated" in r for r in ev.decision.reasons)
    tags = tracking.client(rcfg).get_run(challenger).data.tags
    assert tags["evaluation.champion_error"] == ev.champion_error
    promoted = registry.promote_if_better(rcfg, challenger)
    assert (promoted.status, promoted.version, promoted.previous_version) == ("promoted", "2", "1")


def test_a_hold_keeps_the_champion_and_registers_nothing(
    world: dict[str, Any], rcfg: PipelineConfig
) -> None:
    """A winner held for review (the night's drift screening): no version, champion unchanged,
    status held_for_review (not a failure), the reason says how to promote anyway; its card
    says it is held. The CLI's promote path never holds."""
    keras_model = _keras_model(rcfg, world["train"].run_id)
    version = world["manifest_version"]
    first = _log_copy(rcfg, keras_model, version)
    registry.promote_if_better(rcfg, evaluate.evaluate_challenger(rcfg, first, s3=world["s3"]))

    challenger = _log_copy(rcfg, keras_model, version)
    ev = evaluate.evaluate_challenger(rcfg, challenger, s3=world["s3"])
    assert ev.promote
    held = registry.promote_if_better(rcfg, ev, hold_reason="drift in the new photos (p=0.001)")
    assert (held.status, held.promoted, held.failed, held.version) == (
        "held_for_review", False, False, None)
    assert held.reason.startswith("held for review: drift in the new photos (p=0.001)")
    assert f"`weather promote {challenger}`" in held.reason
    assert _versions(rcfg) == ["1"] and _aliases(rcfg) == {"champion": "1"}
    client = tracking.client(rcfg)
    html = _artifact_text(client, challenger, tracking.CARD_HTML_ARTIFACT)
    assert "held for review: not promoted yet" in html and "drift in the new photos" in html

    # After review, `weather promote RUN_ID` (no hold) promotes it.
    promoted = registry.promote_if_better(rcfg, challenger)
    assert (promoted.status, promoted.version) == ("promoted", "2")
    assert _aliases(rcfg) == {"champion": "2", "previous": "1"}


def _artifact_text(client: Any, run_id: str, path: str) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_text()


def _all_artifacts(client: Any, run_id: str, path: str | None = None) -> list[str]:
    out: list[str] = []
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            out += _all_artifacts(client, run_id, info.path)
        else:
            out.append(info.path)
    return out


def _delete_model_artifacts(
    cfg: PipelineConfig, s3_server: local_services.Service, client: Any, version: str
) -> int:
    """Delete a model version's stored files from the artifact bucket (a broken champion)."""
    mv = client.get_model_version(cfg.registered_model, version)
    model_id = getattr(mv, "model_id", None) or Path(mv.source).name
    s3 = storage.make_client(config.from_env(environ={}, s3_endpoint_url=s3_server.url))
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow-artifacts")
        for o in page.get("Contents", [])
        if f"/{model_id}/" in o["Key"]
    ]
    for key in keys:
        s3.delete_object(Bucket="mlflow-artifacts", Key=key)
    return len(keys)
