"""Screening a night against a real S3 server and a real MLflow server, with a real champion.

The champion is one tiny training (model_1, 32 px) on synthetic scenes
(``devtools.scenes``: their classes are learnable in a few epochs, so the champion is
confident where it should be), registered and given ``@champion``. Each test then builds its
own bucket: the same base scenes ingested as v000001 (the reference), and one night ingested
as v000002:

- a night of the same scene generator (new images): no drift, no hold;
- the same kind of night made grayscale and dark: a small MMD p-value and a hold;
- scenes filed under wrong class names: listed as suspects, held with
  ``suspect_labels=review`` except in the test split, and the report names the held version.
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from devtools import local_services
from devtools.scenes import generate_scenes
from tests.support import REPO, mwd_images
from weather_tasks import cli, config, ingest, manifest, screen, storage, tracking
from weather_tasks.config import PipelineConfig

pytestmark = pytest.mark.integration

BASE_PER_CLASS = 30
NIGHT_PER_CLASS = 4
# The suspects' night is bigger: incremental splits fill a class's test share only after a few
# new images (split.incremental_split), and the test must see a test-split suspect.
SUSPECT_NIGHT_PER_CLASS = 8
SIZE = 64


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Base scenes (the champion's training data) and two nights' worth of new ones."""
    root = tmp_path_factory.mktemp("scenes")
    base = generate_scenes(root / "base", per_class=BASE_PER_CLASS, size=SIZE, seed=11)
    night = generate_scenes(root / "night", per_class=NIGHT_PER_CLASS, size=SIZE, seed=11,
                            start_index=BASE_PER_CLASS + 1)
    more = generate_scenes(root / "more", per_class=SUSPECT_NIGHT_PER_CLASS, size=SIZE, seed=11,
                           start_index=BASE_PER_CLASS + NIGHT_PER_CLASS + 1)
    return {"base": base, "night": night, "more": more}


@pytest.fixture(scope="module")
def champion(
    s3_server: local_services.Service,
    mlflow_server: local_services.Service,
    mlflow_process: None,
    scenes: dict[str, list[Path]],
    tmp_path_factory: pytest.TempPathFactory,
) -> PipelineConfig:
    """A config whose registered model has a ``@champion`` trained on the base scenes."""
    import mlflow

    from weather_tasks import train

    cfg = config.from_env(
        environ={},
        bucket=f"t-{uuid.uuid4().hex[:12]}",
        s3_endpoint_url=s3_server.url,
        work_dir=tmp_path_factory.mktemp("screen-work"),
        mlflow_tracking_uri=mlflow_server.url,
        experiment_name=f"test-screen-{uuid.uuid4().hex[:6]}",
        registered_model=f"wc-screen-{uuid.uuid4().hex[:8]}",
        model="model_1",
        image_size=32,
        epochs=8,
        batch_size=16,
        precision="float32",
        parallelism=4,
    )
    s3 = storage.make_client(cfg)
    local_services.ensure_bucket(s3, cfg.bucket)
    _upload(cfg, s3, scenes["base"])
    version = ingest.ingest(cfg, s3).manifest_version
    trained = train.train_model(cfg, version, s3=s3)
    mv = mlflow.register_model(tracking.run_model_uri(trained.run_id), cfg.registered_model)
    tracking.client(cfg).set_registered_model_alias(cfg.registered_model, tracking.CHAMPION,
                                                    mv.version)
    return cfg


def _upload(cfg: PipelineConfig, s3: Any, paths: list[Path],
            names: list[str] | None = None, transform: Any = None) -> None:
    for k, path in enumerate(paths):
        body = path.read_bytes()
        if transform is not None:
            out = io.BytesIO()
            transform(Image.open(path)).save(out, format="JPEG", quality=90)
            body = out.getvalue()
        name = names[k] if names else path.name
        s3.put_object(Bucket=cfg.bucket, Key=cfg.incoming_prefix + name, Body=body)


def _night_bucket(champion: PipelineConfig, scenes: dict[str, list[Path]],
                  **settings: Any) -> tuple[PipelineConfig, Any]:
    """A fresh bucket with the base scenes ingested as v000001 (the champion's own data)."""
    cfg = config.override(champion, bucket=f"t-{uuid.uuid4().hex[:12]}", **settings)
    s3 = storage.make_client(cfg)
    local_services.ensure_bucket(s3, cfg.bucket)
    _upload(cfg, s3, scenes["base"])
    assert ingest.ingest(cfg, s3).manifest_version == "v000001"
    return cfg, s3


def _screening_module() -> Any:
    """The plugin's ``weather_ui.screening``, imported as Airflow imports plugins (by folder)."""
    import sys

    sys.path.insert(0, str(REPO / "plugins"))
    try:
        from weather_ui import screening
    finally:
        sys.path.remove(str(REPO / "plugins"))
    return screening


def _dark_gray(img: Image.Image) -> Image.Image:
    return img.convert("L").point(lambda v: int(v * 0.3)).convert("RGB")


def test_a_night_like_the_training_photos_does_not_hold(
    champion: PipelineConfig, scenes: dict[str, list[Path]]
) -> None:
    cfg, s3 = _night_bucket(champion, scenes, drift_hold_p_value=0.01)
    _upload(cfg, s3, scenes["night"])
    assert ingest.ingest(cfg, s3).manifest_version == "v000002"

    report = screen.screen_night(cfg, s3, "v000002", airflow_run_id="scheduled__normal")

    print(f"normal night: MMD p {report.mmd_p}, KS p "
          f"{ {s.name: round(s.ks_p, 4) for s in report.statistics} }, "
          f"suspects {len(report.suspects)}")
    assert report.n_new == 4 * NIGHT_PER_CLASS
    assert report.n_reference > 0 and report.champion_version is not None
    assert report.mmd_p is not None and report.mmd_p > 0.05
    assert report.hold_reason is None
    assert report.manifest_version == "v000002"  # suspect_labels=train: nothing held
    # Logged: the run with its metric, report, figure; a retry reuses it.
    client = tracking.client(cfg)
    run = client.get_run(report.run_id)
    assert run.data.metrics[tracking.DRIFT_MMD_P_METRIC] == pytest.approx(report.mmd_p)
    assert run.data.tags[tracking.AIRFLOW_RUN_ID_TAG] == "scheduled__normal"
    logged = tracking.load_run_dict(client, report.run_id, tracking.SCREENING_ARTIFACT)
    assert screen.ScreenReport.from_full_dict(logged) == report
    assert [a.path for a in client.list_artifacts(report.run_id, "plots")] == [
        tracking.DRIFT_PLOT]
    again = screen.screen_night(cfg, s3, "v000002", airflow_run_id="scheduled__normal")
    assert again == report
    views = _screening_module().read_screenings(cfg.mlflow_tracking_uri,
                                      cfg.experiment_name + tracking.SCREENING_EXPERIMENT_SUFFIX)
    mine = [v for v in views if v.run_id == report.run_id]
    assert len(mine) == 1
    assert mine[0].mmd_p == pytest.approx(report.mmd_p)
    assert mine[0].plot_artifact == tracking.DRIFT_PLOT


def test_a_dark_grayscale_night_drifts_and_holds(
    champion: PipelineConfig, scenes: dict[str, list[Path]]
) -> None:
    cfg, s3 = _night_bucket(champion, scenes, drift_hold_p_value=0.01)
    _upload(cfg, s3, scenes["night"], transform=_dark_gray)
    assert ingest.ingest(cfg, s3).manifest_version == "v000002"

    report = screen.screen_night(cfg, s3, "v000002")

    shifts = {s.name: s for s in report.statistics}
    print(f"dark grayscale night: MMD p {report.mmd_p}, KS p "
          f"{ {s.name: round(s.ks_p, 6) for s in report.statistics} }")
    assert report.mmd_p is not None and report.mmd_p < 0.01
    assert report.hold_reason is not None and "promotion held for review" in report.hold_reason
    assert shifts["brightness"].new_mean < shifts["brightness"].reference_mean
    assert shifts["saturation"].ks_p < 0.01
    assert report.as_dict()["hold_reason"] == report.hold_reason


def test_wrong_class_names_are_suspects_and_test_photos_are_never_held(
    champion: PipelineConfig, scenes: dict[str, list[Path]]
) -> None:
    cfg, s3 = _night_bucket(champion, scenes, suspect_labels="review")
    night = scenes["more"]
    classes = list(cfg.classes)
    names, planted = [], set()
    for k, path in enumerate(night):
        true = path.name.split("_")[0]
        if k % 2 == 0:  # every other photo filed under the "opposite" class
            wrong = classes[(classes.index(true) + 2) % len(classes)]
            names.append(f"{wrong}_wrong_{k:03d}.jpg")
            planted.add(names[-1])
        else:
            names.append(path.name)
    _upload(cfg, s3, night, names=names)
    assert ingest.ingest(cfg, s3).manifest_version == "v000002"

    report = screen.screen_night(cfg, s3, "v000002", airflow_run_id="scheduled__suspects")

    flagged = {key.removeprefix(cfg.incoming_prefix) for s in report.suspects
               for key in s.source_keys}
    found, false_alarms = flagged & planted, flagged - planted
    print(f"suspects: {len(found)} found of {len(planted)} planted, {len(false_alarms)} false "
          f"alarms; splits {[s.split for s in report.suspects]}; method {report.suspect_method}")
    assert len(found) >= len(planted) // 2
    assert len(false_alarms) <= 1
    assert all(s.held == (s.split != "test") for s in report.suspects)
    assert any(s.split == "test" for s in report.suspects)  # the never-held path was taken
    held = {s.sha256 for s in report.suspects if s.held}
    if held:
        assert report.manifest_version == "v000003"
        m = manifest.read_manifest(s3, cfg, report.manifest_version)
        assert set(m.review) == held
        assert all(m.images[sha].split != "test" for sha in m.review)
    else:
        assert report.manifest_version == "v000002"
    client = tracking.client(cfg)
    listed = tracking.load_run_dict(client, report.run_id, tracking.SUSPECT_LABELS_ARTIFACT)
    assert {s["sha256"] for s in listed["suspects"]} == {s.sha256 for s in report.suspects}
    thumbs = {a.path for a in client.list_artifacts(report.run_id, tracking.SUSPECT_THUMBS_DIR)}
    assert thumbs == {f"{tracking.SUSPECT_THUMBS_DIR}/{s.sha256}.jpg" for s in report.suspects}
    # A retry of the same Airflow run holds nothing twice: the same version comes back.
    again = screen.screen_night(cfg, s3, "v000002", airflow_run_id="scheduled__suspects")
    assert again.manifest_version == report.manifest_version
    assert manifest.latest_version(s3, cfg) == report.manifest_version


@pytest.mark.parametrize("darkened", [False, True], ids=["real-normal", "real-dark-gray"])
def test_real_photos_drift_only_when_darkened(
    champion: PipelineConfig, darkened: bool, tmp_path: Path
) -> None:
    """The same on real photos (Multi-class Weather Dataset): 12 per class as the reference,
    the next 4 per class as the night, as they are or grayscale and dark."""
    images = mwd_images()
    cfg = config.override(champion, bucket=f"t-{uuid.uuid4().hex[:12]}",
                          drift_hold_p_value=0.01)
    s3 = storage.make_client(cfg)
    local_services.ensure_bucket(s3, cfg.bucket)
    per_class = {c: sorted(images.glob(f"{c}*.jpg"))[:16] for c in cfg.classes}
    _upload(cfg, s3, [p for paths in per_class.values() for p in paths[:12]])
    assert ingest.ingest(cfg, s3).manifest_version == "v000001"
    _upload(cfg, s3, [p for paths in per_class.values() for p in paths[12:]],
            transform=_dark_gray if darkened else None)
    assert ingest.ingest(cfg, s3).manifest_version == "v000002"

    report = screen.screen_night(cfg, s3, "v000002")

    print(f"real photos, darkened={darkened}: MMD p {report.mmd_p}, KS p "
          f"{ {s.name: round(s.ks_p, 6) for s in report.statistics} }")
    assert report.mmd_p is not None
    if darkened:
        assert report.mmd_p < 0.01 and report.hold_reason is not None
    else:
        assert report.mmd_p > 0.05 and report.hold_reason is None


def test_first_version_has_no_reference(
    champion: PipelineConfig, scenes: dict[str, list[Path]]
) -> None:
    cfg, s3 = _night_bucket(champion, scenes)
    report = screen.screen_night(cfg, s3, "v000001")
    assert report.n_reference == 0 and report.mmd_p is None
    assert report.note == screen.NO_REFERENCE
    assert report.manifest_version == "v000001" and report.hold_reason is None


def test_cli_screen_prints_the_summary_and_fails_in_one_line(
    champion: PipelineConfig, scenes: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg, s3 = _night_bucket(champion, scenes)
    _upload(cfg, s3, scenes["night"])
    assert ingest.ingest(cfg, s3).manifest_version == "v000002"
    env = {"WEATHER_BUCKET": cfg.bucket, "WEATHER_S3_ENDPOINT_URL": str(cfg.s3_endpoint_url),
           "WEATHER_MLFLOW_TRACKING_URI": cfg.mlflow_tracking_uri,
           "WEATHER_REGISTERED_MODEL": cfg.registered_model,
           "WEATHER_EXPERIMENT_NAME": cfg.experiment_name, "WEATHER_WORK_DIR": str(cfg.work_dir)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    assert cli.main(["screen"]) == 0  # the latest version
    out = capsys.readouterr().out
    assert f"screened manifest v000002: {4 * NIGHT_PER_CLASS} new photos" in out
    assert "permutation p" in out

    assert cli.main(["screen", "v000009"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("weather screen: error: manifest ") and "does not exist" in err
    assert "\n" not in err

    unreachable = f"http://127.0.0.1:{local_services.free_port()}"
    monkeypatch.setenv("WEATHER_MLFLOW_TRACKING_URI", unreachable)
    assert cli.main(["screen", "v000002"]) == 1
    err = capsys.readouterr().err.strip()
    assert f"{unreachable}: cannot connect" in err and "\n" not in err
