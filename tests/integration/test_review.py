"""Suspect labels held for review, then accepted or rejected through ``weather review``, against
a real S3 server process (no MLflow: the screening that flags photos is played by calling
``hold_for_review`` as it does)."""

from __future__ import annotations

import json

import pytest

from devtools.corpus import image_bytes
from weather_tasks import cli, data, ingest, manifest, review, storage, verify
from weather_tasks.manifest import ReviewNote

pytestmark = pytest.mark.integration


def _put(s3, cfg, name: str, body: bytes) -> str:
    key = cfg.incoming_prefix + name
    s3.put_object(Bucket=cfg.bucket, Key=key, Body=body)
    return key


def _batch(s3, cfg, start: int, per_class: int) -> None:
    for i, cls in enumerate(cfg.classes):
        for j in range(start, start + per_class):
            body = image_bytes("JPEG", size=(48, 40), seed=100 * i + j)
            _put(s3, cfg, f"{cls}_{j:03d}.jpg", body)


@pytest.fixture
def weather(cfg, monkeypatch, capsys):
    """``weather ...`` in this process against the test's bucket: (exit status, out, err)."""
    monkeypatch.setenv("WEATHER_BUCKET", cfg.bucket)
    monkeypatch.setenv("WEATHER_S3_ENDPOINT_URL", cfg.s3_endpoint_url)
    monkeypatch.setenv("WEATHER_WORK_DIR", str(cfg.work_dir))

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = cli.main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def _note(predicted: str) -> ReviewNote:
    return ReviewNote("label_issue", predicted, 0.96, "v000001")


def test_hold_list_train_accept_reject_and_reject_again_on_arrival(cfg, s3, weather) -> None:
    _batch(s3, cfg, 0, 10)
    ingest.ingest(cfg, s3)
    m1 = manifest.read_manifest(s3, cfg)
    a, c = (r.sha256 for r in m1.split("train")[:2])
    b = m1.split("val")[0].sha256
    t = m1.split("test")[0].sha256
    notes = {a: _note("cloudy"), b: _note("rain"), c: _note("shine")}

    # The test split is never held, and a refused hold writes nothing.
    with pytest.raises(ValueError, match="test split"):
        review.hold_for_review(s3, cfg, m1, {**notes, t: _note("rain")})
    assert manifest.list_versions(s3, cfg) == ["v000001"]

    held = review.hold_for_review(s3, cfg, m1, notes)
    assert (held.version, held.parent, set(held.review)) == ("v000002", "v000001", {a, b, c})
    assert held.images == m1.images  # held images stay in the dataset, with their splits
    # A retried task gets the same version back, and writes no other.
    again = review.hold_for_review(s3, cfg, m1, notes)
    assert again == held == manifest.read_manifest(s3, cfg, "v000002")
    assert manifest.list_versions(s3, cfg) == ["v000001", "v000002"]

    rc, out, err = weather("review", "--json")
    assert rc == 0, err
    listed = {p["sha256"]: p for p in json.loads(out)["pending"]}
    assert set(listed) == {a, b, c}
    assert listed[a]["label"] == m1.images[a].label and listed[a]["predicted"] == "cloudy"
    assert listed[b]["split"] == "val"
    assert listed[a]["source_keys"] == list(m1.images[a].source_keys)
    rc, out, _ = weather("review")
    assert "3 photos held for review" in out and a[:12] in out

    # Training leaves the held images out of train and val, and says how many.
    training = data.load_training_data(cfg, s3)
    trained = {p for s in (training.train, training.val) for p in s.paths}
    assert not any(sha in p for p in trained for sha in (a, b, c))
    assert len(trained) == len(m1.split("train")) + len(m1.split("val")) - 3
    assert training.counts()["held_for_review"] == 3
    assert training.test.size == len(m1.split("test"))

    # The next night: holds carry over; C's content arrives under another label, so it leaves
    # the dataset as a label conflict, and review with it.
    _batch(s3, cfg, 10, 1)
    c_key = m1.images[c].source_keys[0]
    c_body = s3.get_object(Bucket=cfg.bucket, Key=c_key)["Body"].read()
    other = next(x for x in cfg.classes if x != m1.images[c].label)
    _put(s3, cfg, f"late/{other}_c.jpg", c_body)
    night = ingest.ingest(cfg, s3)
    assert night.manifest_version == "v000003" and night.quarantined == {"conflicting_label": 1}
    m3 = manifest.read_manifest(s3, cfg)
    assert set(m3.review) == {a, b} and m3.review[a] == notes[a]

    # A hold for an older manifest loses the race to that ingest: transient, nothing written.
    with pytest.raises(review.ReviewError, match="the latest version is v000003") as lost:
        review.hold_for_review(s3, cfg, m1, {**notes, a: _note("rain")})
    assert lost.value.transient and manifest.latest_version(s3, cfg) == "v000003"

    # accept by prefix: one new version, A trains from now on.
    rc, out, err = weather("review", "accept", a[:10])
    assert rc == 0, err
    assert out.startswith(f"accepted 1 ({a[:12]}) in new manifest v000004")
    m4 = manifest.read_manifest(s3, cfg)
    assert (m4.parent, set(m4.review), a in m4.images) == ("v000003", {b}, True)
    assert a in {r.sha256 for r in data.split_records(m4)[0][m4.images[a].split]}

    # Errors are one line, name the sha256 and change nothing.
    for argv, problem in [
        (("review", "reject", a), f"{a} is not pending review"),
        (("review", "accept", "deadbeef00"), "deadbeef00 is not an image of manifest v000004"),
        (("review", "accept"), "no sha256 given"),
    ]:
        rc, out, err = weather(*argv)
        lines = err.strip().splitlines()
        assert rc == 1 and len(lines) == 1 and lines[0].startswith("weather review: error: ")
        assert problem in lines[0]
    assert manifest.latest_version(s3, cfg) == "v000004"

    # reject: B leaves the dataset and review; its key is quarantined with a record; the
    # source stays in incoming/.
    b_keys = m1.images[b].source_keys
    rc, out, err = weather("review", "reject", b, "--reason", "a snowy road,\nnot rain")
    assert rc == 0, err
    assert out.startswith(f"rejected 1 ({b[:12]}) in new manifest v000005")
    assert "no photos held for review" in out
    m5 = manifest.read_manifest(s3, cfg)
    assert b not in m5.images and m5.review == {}
    assert m5.rejected == {b: "a snowy road, not rain"}
    for key in b_keys:
        assert m5.objects[key].status == "quarantined"
        assert m5.objects[key].reason == review.REJECTED
        rec = storage.get_json(s3, cfg.bucket, manifest.quarantine_key(cfg, "v000005", key))
        assert (rec["reason"], rec["detail"], rec["sha256"]) == (
            review.REJECTED, "a snowy road, not rain", b)
        s3.head_object(Bucket=cfg.bucket, Key=key)  # never deleted

    # The same bytes again, under a new key and another label: quarantined as rejected.
    b_body = s3.get_object(Bucket=cfg.bucket, Key=b_keys[0])["Body"].read()
    new_key = _put(s3, cfg, f"again/{other}_b.jpg", b_body)
    back = ingest.ingest(cfg, s3)
    assert (back.accepted, back.quarantined) == (0, {review.REJECTED: 1})
    m6 = manifest.read_manifest(s3, cfg)
    assert b not in m6.images and m6.rejected == m5.rejected
    assert m6.objects[new_key].reason == review.REJECTED
    rec = storage.get_json(s3, cfg.bucket, manifest.quarantine_key(cfg, "v000006", new_key))
    assert rec["reason"] == review.REJECTED and "rejected in review" in rec["detail"]

    # verify: every version reads, no stray quarantine record, nothing failed.
    report = verify.verify(cfg, s3)
    assert not report.failed and not report.damaged and not report.stray_records
    assert report.versions == 6


def test_nothing_to_review(cfg, s3, weather) -> None:
    _batch(s3, cfg, 0, 3)
    ingest.ingest(cfg, s3)
    m1 = manifest.read_manifest(s3, cfg)
    assert review.hold_for_review(s3, cfg, m1, {}) is m1
    rc, out, _ = weather("review")
    assert (rc, out.strip()) == (0, "manifest v000001: no photos held for review")
    rc, _, err = weather("review", "reject", m1.split("train")[0].sha256)
    assert rc == 1 and "is not pending review" in err
    assert manifest.list_versions(s3, cfg) == ["v000001"]


def test_a_held_image_that_is_lost_leaves_review_too(cfg, s3) -> None:
    """``weather verify --repair`` drops a lost image; if it was held, the new version must not
    hold it any more (review lists images only), or that version would not read."""
    _batch(s3, cfg, 0, 3)
    ingest.ingest(cfg, s3)
    m1 = manifest.read_manifest(s3, cfg)
    lost, kept = (r.sha256 for r in m1.split("train")[:2])
    held = review.hold_for_review(s3, cfg, m1, {lost: _note("rain"), kept: _note("shine")})
    rec = held.images[lost]
    s3.delete_object(Bucket=cfg.bucket, Key=manifest.curated_key(cfg, rec.sha256, rec.ext))
    for key in rec.source_keys:  # no copy left to restore it from
        s3.delete_object(Bucket=cfg.bucket, Key=key)

    report = verify.verify(cfg, s3, repair=True)

    assert report.repaired_version == "v000003"
    m3 = manifest.read_manifest(s3, cfg)
    assert lost not in m3.images and set(m3.review) == {kept}
