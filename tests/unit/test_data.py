"""The tf.data input pipeline: val/test unaugmented, train augmented, labels, seeding."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from weather_tasks import config, data

CLASSES = ("shine", "sunrise", "cloudy", "rain")


@pytest.fixture
def pairs(tmp_path: Path) -> list[tuple[Path, str]]:
    """Eight small textured images of varied sizes and modes, two per class."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(8):
        h, w = 40 + 7 * i, 60 - 3 * i
        yy, xx = np.mgrid[0:h, 0:w]
        # A gradient plus noise: flips, shifts and rotations all change it visibly.
        base = (xx * 255 / w * 0.6 + yy * 255 / h * 0.3)[..., None] + rng.integers(0, 40, (h, w, 3))
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        if i == 3:
            img = img.convert("L")  # grayscale must come out as RGB
        if i == 5:
            img = img.convert("RGBA")
        path = tmp_path / f"img{i}.png"
        if i == 6:  # a large JPEG: decoded by TensorFlow here, by Pillow when served
            img = img.resize((240, 180))
            path = path.with_suffix(".jpg")
        img.save(path)
        out.append((path, CLASSES[i % 4]))
    return out


def _cfg(**kw: object) -> config.PipelineConfig:
    return config.from_env(environ={}, **{"image_size": 32, "batch_size": 4, "seed": 7, **kw})


def _plain(path: Path, size: int) -> np.ndarray:
    """The reference: decode, resize, rescale, nothing else, as the served model does it
    (serving_model.py: Pillow to RGB, keras.ops.image.resize bilinear with antialiasing,
    rounded to whole grey levels, / 255)."""
    image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    resized = keras.ops.image.resize(
        image, (size, size), interpolation="bilinear", antialias=True
    )
    return np.clip(np.round(keras.ops.convert_to_numpy(resized)), 0, 255) / 255.0


def _all(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def test_eval_images_pass_through_unaugmented_in_order(pairs: list[tuple[Path, str]]) -> None:
    cfg = _cfg()
    x, y = _all(data.make_dataset(pairs, cfg, training=False))
    assert x.shape == (8, 32, 32, 3) and x.dtype == np.float32
    for i, (path, label) in enumerate(pairs):
        np.testing.assert_allclose(x[i], _plain(path, 32), atol=1e-6)
        assert CLASSES[int(np.argmax(y[i]))] == label
    # Every epoch gives the same images: nothing random in the eval pipeline.
    x2, _ = _all(data.make_dataset(pairs, cfg, training=False))
    np.testing.assert_array_equal(x, x2)


def test_train_images_are_augmented_and_stay_in_range(pairs: list[tuple[Path, str]]) -> None:
    cfg = _cfg()
    x, y = _all(data.make_dataset(pairs, cfg, training=True))
    assert x.shape == (8, 32, 32, 3)
    assert x.min() >= 0.0 and x.max() <= 1.0
    references = {label_i: [] for label_i in range(4)}
    for path, label in pairs:
        references[CLASSES.index(label)].append(_plain(path, 32))
    for img, onehot in zip(x, y, strict=True):
        # Shuffled, so compare each image with the plain versions of its class: none match.
        diffs = [np.abs(img - ref).mean() for ref in references[int(np.argmax(onehot))]]
        assert min(diffs) > 0.01
    # Labels survive shuffling: the class counts are those of the input.
    assert sorted(np.argmax(y, axis=1).tolist()) == sorted(CLASSES.index(lbl) for _, lbl in pairs)


def test_train_pipeline_is_seeded_and_re_augments_each_epoch(
    pairs: list[tuple[Path, str]],
) -> None:
    ds_a = data.make_dataset(pairs, _cfg(), training=True)
    ds_b = data.make_dataset(pairs, _cfg(), training=True)
    first_a, first_b = _all(ds_a)[0], _all(ds_b)[0]
    np.testing.assert_array_equal(first_a, first_b)  # same seed, same images
    second_a = _all(ds_a)[0]
    assert np.abs(second_a - first_a).mean() > 0.01  # a new epoch, new augmentation
    other_seed = _all(data.make_dataset(pairs, _cfg(seed=8), training=True))[0]
    assert np.abs(other_seed - first_a).mean() > 0.01


def test_brightness_is_multiplicative_within_the_seed_range() -> None:
    # A flat grey image is unchanged by geometry and flips; only brightness moves it.
    flat = tf.fill([64, 16, 16, 3], 0.5)
    out = data.augment_batch(flat, tf.constant(3, tf.int64)).numpy()
    per_image = out.reshape(64, -1)
    np.testing.assert_allclose(per_image.min(axis=1), per_image.max(axis=1), atol=1e-5)
    factors = per_image[:, 0] / 0.5
    assert factors.min() >= 0.5 - 1e-5 and factors.max() <= 1.5 + 1e-5
    assert factors.max() - factors.min() > 0.5  # actually random over the range


def test_horizontal_flip_happens_about_half_the_time() -> None:
    # Left half black, right half white: a flip puts the white on the left.
    img = np.zeros((16, 16, 3), np.float32)
    img[:, 8:] = 1.0
    out = data.augment_batch(tf.constant(np.stack([img] * 200)), tf.constant(11, tf.int64))
    left = out.numpy()[:, 4:12, 1:4].mean(axis=(1, 2, 3))
    right = out.numpy()[:, 4:12, 12:15].mean(axis=(1, 2, 3))
    flipped = np.mean(left > right)
    assert 0.35 < flipped < 0.65


@pytest.mark.parametrize(
    ("pairs_", "message"),
    [([], "zero images"), ([("x.png", "snow")], "not in the configured classes")],
)
def test_bad_input_is_rejected(pairs_: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(data.DataError, match=message):
        data.make_dataset(pairs_, _cfg(), training=False)


def test_real_photos_decode_as_the_served_model_decodes_them() -> None:
    """JPEG, PNG and GIF photos named .jpg: the training pixels equal the serving pixels."""
    from tests.support import mwd_images

    folder = mwd_images()
    names = ["cloudy1.jpg", "shine10.jpg", "sunrise1.jpg", "rain1.jpg",  # JPEG
             "cloudy131.jpg", "sunrise184.jpg",  # PNG
             "rain141.jpg"]  # GIF
    pairs = [(folder / n, re.match(r"[a-z]+", n).group()) for n in names]
    x, _ = _all(data.make_dataset(pairs, _cfg(image_size=64), training=False))
    for i, (path, _) in enumerate(pairs):
        np.testing.assert_allclose(x[i], _plain(path, 64), atol=1e-6, err_msg=path.name)


@pytest.mark.parametrize(
    ("ratios", "test_split"),
    [((0.7, 0.15, 0.15), "test"), ((0.8, 0.2), "val")],  # two-way: val doubles as test
)
def test_images_held_for_review_leave_train_and_val_never_test(
    ratios: tuple[float, ...], test_split: str
) -> None:
    from weather_tasks.manifest import ImageRecord, Manifest, ReviewNote

    def image(i: int, split: str) -> ImageRecord:
        sha = f"{i:064x}"
        return ImageRecord(sha, sha, CLASSES[i % 4], split, "jpg", "JPEG", 40, 40,
                           (f"incoming/{CLASSES[i % 4]}_{i}.jpg",), "", "v000001")

    splits = ["train"] * 6 + ["val"] * 3 + (["test"] * 3 if len(ratios) == 3 else [])
    images = {r.sha256: r for r in (image(i, s) for i, s in enumerate(splits))}
    held = [f"{i:064x}" for i in (0, 1, 6)]  # two train, one val
    note = ReviewNote("label_issue", "rain", 0.9, "v000002")
    m = Manifest("v000002", "v000001", "", CLASSES, ratios, 1, images,
                 review=dict.fromkeys(held, note))
    records, n_held = data.split_records(m)
    assert n_held == 3
    assert [r.sha256 for r in records["train"]] == [f"{i:064x}" for i in range(2, 6)]
    assert [r.sha256 for r in records["val"]] == [f"{i:064x}" for i in (7, 8)]
    # The test split is the manifest's, unfiltered (with two-way ratios: all of val).
    assert records["test"] == m.split(test_split) == m.split("test")
    assert (held[2] in {r.sha256 for r in records["test"]}) == (len(ratios) == 2)
    # Nothing held: every image trains.
    assert data.split_records(replace(m, review={}))[1] == 0
