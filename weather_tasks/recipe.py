"""The seed's Keras training recipe, with no tracking: build, compile, fit, export.

All settings come from :class:`PipelineConfig`: Adam(``learning_rate``), categorical
cross-entropy, accuracy, ``batch_size`` 16, ``epochs`` 100,
``ReduceLROnPlateau(monitor="val_accuracy", factor, patience, min_lr, cooldown)``, seeded
with ``keras.utils.set_random_seed(seed)``. Unlike the seed, the weights of the best
val-accuracy epoch are kept (a ``ModelCheckpoint``) and restored when :func:`fit` returns.

Options around that centre (each a setting, off or at the seed's value by default, adopted
only when ``bench/quality.py`` measures a gain):

- ``label_smoothing``: ``CategoricalCrossentropy(label_smoothing=...)``;
- ``weight_decay`` > 0: AdamW, Adam with decoupled weight decay (Keras applies
  ``w -= weight_decay * learning_rate * w`` each step, apart from the gradient's moments, so
  the decay follows ReduceLROnPlateau's learning rate), on every weight;
- ``bn_momentum``: model 3's batch-normalization momentum;
- ``progressive_resize``: see :func:`training_batches`;
- ``tta_flip``: a serving option (:func:`predict_probabilities`), not a training one.

Precision (``cfg.precision``, see :func:`resolve_precision`):

- ``auto``: ``mixed_float16`` when a GPU is present (memory growth on), else ``float32``.
  bfloat16 is *not* chosen automatically on CPUs: on the AVX512-BF16 CPU (no AMX) this was
  developed on, ``bench/train.py`` measured Model 3 training at 0.66-0.69x the float32
  speed under ``mixed_bfloat16``; CPUs with AMX may differ, so it stays an explicit choice.
- ``float32``, ``mixed_bfloat16``, ``mixed_float16``: as asked.

The output layer stays float32 under every policy (see :mod:`weather_tasks.models`), and
:func:`float32_copy` gives the model handed to serving, so serving never depends on how it
was trained. Callers add their own callbacks (training adds its MLflow epoch logger; the
benchmark times epochs with :class:`EpochTimer`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from weather_tasks.config import PipelineConfig
from weather_tasks.models import build_model


@dataclass(frozen=True)
class FitResult:
    """What a fit did; the model itself now holds the best epoch's weights."""

    history: dict[str, list[float]]  # per epoch: loss, accuracy, val_*, learning_rate
    epochs_run: int
    best_epoch: int  # 1-based, as Keras prints it
    best_val_accuracy: float
    best_val_loss: float
    images_per_second: float  # training throughput, steady state (epochs after the first)
    train_seconds: float


def resolve_precision(requested: str, has_gpu: bool) -> str:
    """The Keras dtype policy for ``requested`` (see the module docstring for ``auto``)."""
    if requested == "auto":
        return "mixed_float16" if has_gpu else "float32"
    return requested


def configure_devices() -> str:
    """Turn on GPU memory growth (before TensorFlow claims the memory); name the device."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process: growth is fixed by then
            pass
    return f"GPU x{len(gpus)}" if gpus else "CPU"


@contextlib.contextmanager
def precision_policy(policy: str) -> Iterator[None]:
    """Build (and train) under the Keras dtype ``policy``; the previous policy afterwards.

    The policy is process-global; an Airflow worker runs other tasks after us.
    """
    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy(policy)
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def seed_process(cfg: PipelineConfig) -> None:
    """Seed Python, NumPy, TensorFlow and Keras with ``cfg.seed``.

    Call it before building the datasets: their shuffle and augmentation seeds combine with
    TensorFlow's global seed as it is then, so without this a second training in the same
    process would see the first one's seed state and shuffle differently.
    """
    keras.utils.set_random_seed(cfg.seed)


def build_and_compile(cfg: PipelineConfig) -> keras.Model:
    """``cfg.model`` at ``cfg.image_size``, seeded, compiled with the seed's optimizer and loss.

    Seeded here again (weights, dropout: the same initial weights whatever ran since
    :func:`seed_process`). Built under the current dtype policy (see :func:`precision_policy`).
    With ``progressive_resize`` the model is built for any input size (model 3's weights do not
    depend on it); :func:`float32_copy` then gives the model at ``cfg.image_size``.
    """
    seed_process(cfg)
    size = None if cfg.progressive_resize else cfg.image_size
    model = build_model(cfg.model, size, len(cfg.classes), bn_momentum=cfg.bn_momentum)
    optimizer = (
        keras.optimizers.AdamW(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)
        if cfg.weight_decay > 0
        else keras.optimizers.Adam(learning_rate=cfg.learning_rate)
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
    return model


def fit(
    model: keras.Model,
    cfg: PipelineConfig,
    train: Any,
    val: Any,
    *,
    n_train: int,
    checkpoint_dir: Path,
    timer: EpochTimer | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> FitResult:
    """``cfg.epochs`` epochs on ``train`` (a seeded, shuffling dataset), validated on ``val``.

    The learning rate follows the seed's ``ReduceLROnPlateau``; the best val-accuracy epoch's
    weights are restored at the end. ``timer``: pass one to read the per-epoch times and
    learning rates from your ``callbacks`` (they run after it, in order). With
    ``progressive_resize`` the epochs come from :func:`training_batches` (``n_train``
    images per epoch).
    """
    checkpoint = checkpoint_dir / "best.weights.h5"
    timer = timer or EpochTimer()
    all_callbacks = [
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_accuracy",
            factor=cfg.lr_factor,
            patience=cfg.lr_patience,
            min_lr=cfg.lr_min,
            cooldown=cfg.lr_cooldown,
        ),
        # Strictly-better only, so on ties the earliest best epoch is kept.
        keras.callbacks.ModelCheckpoint(
            str(checkpoint), monitor="val_accuracy", mode="max",
            save_best_only=True, save_weights_only=True,
        ),
        timer,
        *callbacks,
    ]
    steps_per_epoch = None  # one pass over ``train`` per epoch
    if cfg.progressive_resize:
        train = training_batches(train, cfg)
        steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    history = model.fit(
        train,
        steps_per_epoch=steps_per_epoch,
        validation_data=val,
        epochs=cfg.epochs,
        callbacks=all_callbacks,
        shuffle=False,  # the training dataset shuffles itself (seeded)
        verbose=2,
    ).history
    history["learning_rate"] = timer.learning_rates
    model.load_weights(str(checkpoint))
    val_acc = history["val_accuracy"]
    best = int(np.argmax(val_acc))  # first maximum, as the checkpoint keeps it
    return FitResult(
        history=history,
        epochs_run=len(val_acc),
        best_epoch=best + 1,
        best_val_accuracy=float(val_acc[best]),
        best_val_loss=float(history["val_loss"][best]),
        images_per_second=timer.images_per_second(n_train),
        train_seconds=timer.total_seconds,
    )


def training_batches(train: Any, cfg: PipelineConfig) -> Any:
    """Progressive resizing: every epoch's training batches in one dataset, the first
    ``epochs // 2`` passes over ``train`` shrunk to ``progressive_resize`` px, the rest at
    ``image_size``.

    Why this design: the small epochs are cheap (about (small/size)^2 of the arithmetic) and
    learn coarse shapes; finishing at the target size lets the convolutions and the batch
    normalization statistics settle on the resolution the served model sees (a model only
    ever trained small loses accuracy at a larger test size). The seed's model 3 is kept as
    it is: its global average pooling makes its weights independent of the input size, so one
    model trains at both sizes and its weights are copied into the image_size model for
    serving (:func:`float32_copy`). Images are augmented at ``image_size`` and then shrunk with
    the pipeline's resize (bilinear, antialiased), so both phases see the same augmentation.
    Validation is always at ``image_size``: ReduceLROnPlateau and the best checkpoint compare
    like with like across the switch. One dataset (not one ``fit`` per size) keeps the
    callbacks' state (plateau counter, best epoch, timer) across the switch.
    """
    import tensorflow as tf

    from weather_tasks.image_spec import RESIZE_ANTIALIAS, RESIZE_METHOD

    size = cfg.progressive_resize
    small_epochs = cfg.epochs // 2
    small = train.map(
        lambda x, y: (
            tf.image.resize(x, (size, size), method=RESIZE_METHOD, antialias=RESIZE_ANTIALIAS),
            y,
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return small.repeat(small_epochs).concatenate(train.repeat(cfg.epochs - small_epochs))


def float32_copy(model: keras.Model, cfg: PipelineConfig) -> keras.Model:
    """The same architecture at ``cfg.image_size`` under the float32 policy, trained weights."""
    with precision_policy("float32"):
        copy = build_model(cfg.model, cfg.image_size, len(cfg.classes),
                           bn_momentum=cfg.bn_momentum)
    copy.set_weights(model.get_weights())
    return copy


def predict_probabilities(model: keras.Model, dataset: Any, cfg: PipelineConfig) -> np.ndarray:
    """(n, classes) probabilities of ``dataset``'s (image, label) batches as the served model
    gives them: with ``tta_flip``, the mean over each image and its horizontal flip.

    The served pyfunc (``serving_model.py``, which may import nothing from this package) does
    the same on its batches; a test holds the two together.
    """
    import tensorflow as tf

    probs = np.asarray(model.predict(dataset, verbose=0), dtype=np.float64)
    if cfg.tta_flip:
        flipped = dataset.map(lambda x, y: (tf.reverse(x, axis=[2]), y))  # NHWC: width
        probs = (probs + np.asarray(model.predict(flipped, verbose=0), dtype=np.float64)) / 2
    return probs


class EpochTimer(keras.callbacks.Callback):
    """Time the training part of each epoch (validation excluded) and record the LR.

    Wall seconds and CPU seconds of this process (all threads, data loading included; the
    fairer measure when other jobs share the cores). One timer may follow several ``fit``
    calls (one epoch each, as the benchmark interleaves them).
    """

    def __init__(self) -> None:
        super().__init__()
        self.train_seconds: list[float] = []
        self.train_cpu_seconds: list[float] = []
        self.learning_rates: list[float] = []
        self.total_seconds = 0.0
        self._fit_start = 0.0
        self._epoch_start = 0.0
        self._epoch_cpu_start = 0.0

    def on_train_begin(self, logs: Any = None) -> None:
        self._fit_start = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._epoch_start, self._epoch_cpu_start = time.perf_counter(), time.process_time()
        self.learning_rates.append(
            float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        )

    def on_test_begin(self, logs: Any = None) -> None:
        # Inside fit, validation starts right after the epoch's last training step.
        if len(self.train_seconds) < len(self.learning_rates):
            self.train_seconds.append(time.perf_counter() - self._epoch_start)
            self.train_cpu_seconds.append(time.process_time() - self._epoch_cpu_start)

    def on_train_end(self, logs: Any = None) -> None:
        self.total_seconds = time.perf_counter() - self._fit_start

    def images_per_second(self, n_images: int) -> float:
        """Steady-state training throughput in wall seconds."""
        return _steady_rate(n_images, self.train_seconds)

    def images_per_cpu_second(self, n_images: int) -> float:
        """Steady-state training throughput in CPU seconds of this process."""
        return _steady_rate(n_images, self.train_cpu_seconds)


def _steady_rate(n_images: int, seconds: list[float]) -> float:
    # The first epoch traces the graph and fills the decode cache: leave it out when there
    # are others (steady state is what a 100-epoch run sees).
    times = seconds[1:] or seconds
    total = sum(times)
    return n_images * len(times) / total if total > 0 else 0.0
