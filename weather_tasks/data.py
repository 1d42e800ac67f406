"""The training input pipeline: manifest -> local image cache -> ``tf.data``.

Images of a manifest version are fetched from ``curated/`` into the local
content-addressed cache once (:func:`weather_tasks.manifest.fetch_images`); then each
split becomes a ``tf.data`` pipeline that

1. decodes and resizes every image **once** to ``cfg.image_size`` (the same setting builds
   the model; the seed resized to 256 and built the model for 250) with the resize of
   :mod:`weather_tasks.image_spec`, which the served model applies too,
2. caches the resized images in memory as uint8 (4x smaller than float32; the served
   model rounds the same way),
3. shuffles (train only, seeded) and batches by ``cfg.batch_size``,
4. augments the training batches in parallel with the seed's ``ImageDataGenerator``
   parameters (see :func:`augment_batch`), which also rescales by 1/255; val and test
   batches are only rescaled,
5. prefetches.

Labels are one-hot in ``cfg.classes`` order (the model's output order).

Images held for review (the manifest's ``review``, see :mod:`weather_tasks.review`) are left
out of the train and val splits until a person accepts them; never out of the test split (they
cannot be in it with three-way ratios; with two-way ratios, where val doubles as test, the test
split keeps them: it is not filtered by the champion's opinion). :meth:`TrainingData.counts`
and the log say how many were held.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from weather_tasks import manifest as manifest_mod
from weather_tasks.config import PipelineConfig, PipelineError
from weather_tasks.image_spec import RESIZE_ANTIALIAS, RESIZE_METHOD
from weather_tasks.manifest import ImageRecord, Manifest

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

# The seed's ImageDataGenerator settings (train only). ImageDataGenerator takes shear in
# *degrees* (shear_range=0.2 means up to 0.2 degrees), rotation in degrees, shifts and zoom
# as fractions, brightness as a multiplicative factor; we keep those meanings exactly.
ROTATION_DEGREES = 20.0
SHIFT_FRACTION = 0.2  # width_shift_range and height_shift_range
SHEAR_DEGREES = 0.2
ZOOM_RANGE = 0.2  # zoom factors in [0.8, 1.2], drawn independently per axis
BRIGHTNESS_RANGE = (0.5, 1.5)
HORIZONTAL_FLIP = True


class DataError(PipelineError):
    """The manifest cannot feed a training (empty split, unknown label)."""


@dataclass(frozen=True)
class SplitData:
    """One split: the batched dataset plus what went into it (for reports and plots)."""

    name: str
    dataset: tf.data.Dataset
    paths: tuple[str, ...]
    labels: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.paths)

    def label_indices(self, classes: Sequence[str]) -> list[int]:
        index = {c: i for i, c in enumerate(classes)}
        return [index[label] for label in self.labels]


@dataclass(frozen=True)
class TrainingData:
    manifest: Manifest
    train: SplitData
    val: SplitData
    test: SplitData
    held_for_review: int = 0  # train/val images of the manifest left out, pending review

    def counts(self) -> dict[str, int]:
        return {
            "train": self.train.size,
            "val": self.val.size,
            "test": self.test.size,
            "held_for_review": self.held_for_review,
        }


def split_records(manifest: Manifest) -> tuple[dict[str, list[ImageRecord]], int]:
    """The images each split trains or evaluates on, and how many train/val images were left
    out because they are held for review (the test split is never filtered)."""
    out: dict[str, list[ImageRecord]] = {}
    held = 0
    for name in ("train", "val", "test"):
        records = manifest.split(name)
        if name != "test":
            kept = [r for r in records if r.sha256 not in manifest.review]
            held += len(records) - len(kept)
            records = kept
        out[name] = records
    return out, held


def decode_and_resize(contents: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded image bytes -> float32 (image_size, image_size, 3) in [0, 255], not rounded.

    Pixel-for-pixel what the served model computes (Pillow decode, Keras bilinear resize).
    ``expand_animations=False`` takes a GIF's first frame; ``channels=3`` turns grayscale,
    palette and RGBA into RGB (as ingest validated).
    """
    image = tf.cond(
        tf.io.is_jpeg(contents),
        # TensorFlow's default JPEG IDCT is libjpeg's fast one; Pillow (the served model's
        # decoder) uses the accurate one. They differ by up to 15 grey levels on these
        # photos; with INTEGER_ACCURATE both decode bit-identically.
        lambda: tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(contents, channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return tf.image.resize(
        tf.cast(image, tf.float32),
        (image_size, image_size),
        method=RESIZE_METHOD,
        antialias=RESIZE_ANTIALIAS,
    )


def load_resized_uint8(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """A file path -> the resized image as uint8 (what the pipeline caches)."""
    resized = decode_and_resize(tf.io.read_file(path), image_size)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def make_dataset(
    pairs: Sequence[tuple[Path | str, str]],
    cfg: PipelineConfig,
    *,
    training: bool,
) -> tf.data.Dataset:
    """(path, label) pairs -> batched ``(images float32 [0,1], one-hot labels)`` dataset.

    ``training=True`` adds the seeded shuffle and the seed's augmentation; otherwise images
    are only decoded, resized and rescaled, in the given order.
    """
    if not pairs:
        raise DataError("cannot build a dataset from zero images")
    index = {c: i for i, c in enumerate(cfg.classes)}
    unknown = sorted({label for _, label in pairs} - set(index))
    if unknown:
        raise DataError(f"labels {unknown} are not in the configured classes {cfg.classes}")
    paths = [str(p) for p, _ in pairs]
    labels = [index[label] for _, label in pairs]
    n_classes = len(cfg.classes)
    size = cfg.image_size
    autotune = tf.data.AUTOTUNE

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.map(
        lambda p, y: (load_resized_uint8(p, size), tf.one_hot(y, n_classes)),
        num_parallel_calls=autotune,
    )
    ds = ds.cache()
    if training:
        # Shuffle the whole (cached, small) split each epoch; seeded, so runs repeat.
        ds = ds.shuffle(len(paths), seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.batch(cfg.batch_size)
    if training:
        # One random int64 per batch, re-drawn every epoch but from a fixed seed: the
        # stateless augmentation ops below are then reproducible even when batches are
        # augmented in parallel (stateful random ops would depend on thread timing).
        # Augmenting the uint8 batch (rescaled on the way out) moves 4x fewer bytes.
        seeds = tf.data.Dataset.random(seed=cfg.seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda batch, s: (augment_batch(batch[0], s), batch[1]),
            num_parallel_calls=autotune,
        )
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y), num_parallel_calls=autotune)
    return ds.prefetch(autotune)


def augment_batch(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """The seed's ImageDataGenerator augmentation on a batch; returns float32 in [0, 1].

    ``images``: uint8 in [0, 255] (the pipeline's cache) or float in [0, 1].
    As ImageDataGenerator does: one affine map per image composed of rotation (+-20 deg),
    width/height shift (+-20%), shear (+-0.2 deg) and zoom (0.8-1.2 per axis), about the
    image centre, bilinear, edges filled with the nearest pixel; then a horizontal flip
    with probability 1/2; then brightness times U(0.5, 1.5), clipped to [0, 1]. The flip
    is folded into the same matrix, so each image is resampled once, not five times.
    """
    seed = tf.cast(seed, tf.int64)
    shape = tf.shape(images)
    n, h, w = shape[0], shape[1], shape[2]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)

    def uniform(k: int, low: float, high: float, count: Any = None) -> tf.Tensor:
        return tf.random.stateless_uniform(
            [n] if count is None else [n, count],
            seed=tf.stack([seed, tf.constant(k, tf.int64)]),
            minval=low,
            maxval=high,
        )

    theta = uniform(1, -ROTATION_DEGREES, ROTATION_DEGREES) * (math.pi / 180.0)
    tx = uniform(2, -SHIFT_FRACTION, SHIFT_FRACTION) * wf
    ty = uniform(3, -SHIFT_FRACTION, SHIFT_FRACTION) * hf
    shear = uniform(4, -SHEAR_DEGREES, SHEAR_DEGREES) * (math.pi / 180.0)
    zoom = uniform(5, 1.0 - ZOOM_RANGE, 1.0 + ZOOM_RANGE, 2)
    flip = uniform(6, 0.0, 1.0) < 0.5 if HORIZONTAL_FLIP else tf.zeros([n], tf.bool)
    brightness = uniform(7, *BRIGHTNESS_RANGE)

    zero, one = tf.zeros([n]), tf.ones([n])

    def mat(rows: list[list[tf.Tensor]]) -> tf.Tensor:  # -> [n, 3, 3]
        return tf.stack([tf.stack(r, axis=-1) for r in rows], axis=-2)

    # Output pixel (x, y) -> input pixel, in (column, row) coordinates, like
    # ImageDataGenerator's rotation @ shift @ shear @ zoom about the centre.
    cx, cy = (wf - 1.0) / 2.0, (hf - 1.0) / 2.0
    to_centre = mat([[one, zero, -cx * one], [zero, one, -cy * one], [zero, zero, one]])
    from_centre = mat([[one, zero, cx * one], [zero, one, cy * one], [zero, zero, one]])
    rotation = mat(
        [[tf.cos(theta), -tf.sin(theta), zero], [tf.sin(theta), tf.cos(theta), zero],
         [zero, zero, one]]
    )
    shift = mat([[one, zero, tx], [zero, one, ty], [zero, zero, one]])
    shear_m = mat([[one, -tf.sin(shear), zero], [zero, tf.cos(shear), zero], [zero, zero, one]])
    zoom_m = mat([[zoom[:, 0], zero, zero], [zero, zoom[:, 1], zero], [zero, zero, one]])
    # The flip comes after the geometry in ImageDataGenerator: output x reads x' = w-1-x.
    sign = tf.where(flip, -one, one)
    flip_m = mat([[sign, zero, tf.where(flip, wf - 1.0, zero)], [zero, one, zero],
                  [zero, zero, one]])
    m = from_centre @ rotation @ shift @ shear_m @ zoom_m @ to_centre @ flip_m
    transforms = tf.reshape(m, [n, 9])[:, :8]

    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.stack([h, w]),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )
    scale = brightness / 255.0 if images.dtype == tf.uint8 else brightness
    out = tf.clip_by_value(tf.cast(out, tf.float32) * scale[:, None, None, None], 0.0, 1.0)
    return tf.ensure_shape(out, images.shape)


def load_training_data(
    cfg: PipelineConfig, s3: S3Client, version: str | None = None
) -> TrainingData:
    """Read a manifest version (default: the latest), fetch its images, build the three splits.

    The test split falls back to val for the seed's two-way ratio (``Manifest.split``).
    """
    manifest = manifest_mod.read_manifest(s3, cfg, version)
    if tuple(manifest.classes) != tuple(cfg.classes):
        # One-hot order is cfg.classes; a manifest with other classes would mislabel silently.
        missing = sorted(set(manifest.classes) - set(cfg.classes))
        if missing:
            raise DataError(
                f"manifest {manifest.version} has classes {missing} unknown to the config "
                f"({list(cfg.classes)})"
            )
    records, held = split_records(manifest)
    for name, recs in records.items():
        if not recs:
            raise DataError(
                f"manifest {manifest.version} has no {name} images"
                + (f" not held for review ({held} held)" if held else "")
                + f"; counts per split: {manifest.counts()}"
            )
    log.info(
        "manifest %s: %s train, %s val, %s test images; %d held for review (left out of "
        "train and val)", manifest.version, *(len(records[n]) for n in records), held,
    )
    splits: dict[str, SplitData] = {}
    for name, recs in records.items():
        pairs = manifest_mod.fetch_images(s3, cfg, recs)
        splits[name] = SplitData(
            name=name,
            dataset=make_dataset(pairs, cfg, training=name == "train"),
            paths=tuple(str(p) for p, _ in pairs),
            labels=tuple(label for _, label in pairs),
        )
    return TrainingData(manifest=manifest, **splits, held_for_review=held)
