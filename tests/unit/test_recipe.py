"""The Keras recipe without tracking: precision choice and policy, build, float32 export, and
the recipe options (label smoothing, AdamW, batch-norm momentum, progressive resizing, TTA)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.support.keras_models import flip_sensitive_model
from weather_tasks import config, recipe


@pytest.mark.parametrize(
    ("requested", "has_gpu", "expected"),
    [
        ("auto", True, "mixed_float16"),
        ("auto", False, "float32"),
        ("float32", True, "float32"),
        ("mixed_bfloat16", False, "mixed_bfloat16"),
        ("mixed_float16", True, "mixed_float16"),
    ],
)
def test_resolve_precision(requested: str, has_gpu: bool, expected: str) -> None:
    assert recipe.resolve_precision(requested, has_gpu) == expected


def test_precision_policy_is_restored_even_after_an_error() -> None:
    before = keras.config.dtype_policy().name
    with pytest.raises(RuntimeError), recipe.precision_policy("mixed_bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        raise RuntimeError("training failed")
    assert keras.config.dtype_policy().name == before


def test_build_is_seeded_compiled_and_exports_a_float32_copy() -> None:
    cfg = config.from_env(environ={}, model="model_3", image_size=16, seed=5)
    with recipe.precision_policy("mixed_bfloat16"):
        model = recipe.build_and_compile(cfg)
        again = recipe.build_and_compile(cfg)
    assert model.compute_dtype == "bfloat16"
    # The seed's recipe: plain Adam (AdamW is a subclass), cross-entropy without smoothing.
    assert type(model.optimizer) is keras.optimizers.Adam
    assert model.optimizer.weight_decay is None
    assert isinstance(model.loss, keras.losses.CategoricalCrossentropy)
    assert model.loss.get_config()["label_smoothing"] == 0.0
    for a, b in zip(model.get_weights(), again.get_weights(), strict=True):  # same seed
        np.testing.assert_array_equal(a, b)

    copy = recipe.float32_copy(model, cfg)
    assert copy.compute_dtype == "float32"
    for a, b in zip(model.get_weights(), copy.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_recipe_options_reach_the_compiled_model() -> None:
    cfg = config.from_env(environ={}, image_size=16, label_smoothing=0.1, weight_decay=0.004,
                          bn_momentum=0.9)
    model = recipe.build_and_compile(cfg)
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    assert model.optimizer.weight_decay == pytest.approx(0.004)
    assert float(model.optimizer.learning_rate) == pytest.approx(cfg.learning_rate)
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.1)
    norms = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert norms and {la.momentum for la in norms} == {0.9}
    copy = recipe.float32_copy(model, cfg)
    assert {la.momentum for la in copy.layers
            if isinstance(la, keras.layers.BatchNormalization)} == {0.9}


def _batches(n: int, size: int, batch: int) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    images = rng.random((n, size, size, 3), dtype=np.float32)
    labels = np.eye(4, dtype=np.float32)[np.arange(n) % 4]
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)


def test_progressive_resizing_trains_the_first_half_small_and_ends_at_image_size() -> None:
    cfg = config.from_env(environ={}, image_size=32, progressive_resize=16, epochs=5,
                          batch_size=4)
    sizes = [int(x.shape[1]) for x, _ in recipe.training_batches(_batches(6, 32, 4), cfg)]
    # Two batches an epoch: epochs 1-2 (5 // 2) at 16 px, epochs 3-5 at 32 px.
    assert sizes == [16] * 4 + [32] * 6


def test_progressive_fit_switches_size_and_serves_at_image_size(tmp_path: Path) -> None:
    cfg = config.from_env(environ={}, image_size=32, progressive_resize=16, epochs=2,
                          batch_size=4, precision="float32")
    model = recipe.build_and_compile(cfg)
    assert model.input_shape == (None, None, None, 3)  # trains at both sizes
    train, val = _batches(6, 32, 4), _batches(4, 32, 4)
    fit = recipe.fit(model, cfg, train, val, n_train=6, checkpoint_dir=tmp_path)
    assert fit.epochs_run == 2 and len(fit.history["loss"]) == 2
    served = recipe.float32_copy(model, cfg)
    assert served.input_shape == (None, 32, 32, 3)
    for a, b in zip(model.get_weights(), served.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("tta_flip", [False, True])
def test_test_time_flip_averages_the_image_and_its_mirror(tta_flip: bool) -> None:
    cfg = config.from_env(environ={}, tta_flip=tta_flip)
    model = flip_sensitive_model(8)
    images = np.random.default_rng(1).random((3, 8, 8, 3), dtype=np.float32)
    labels = np.zeros((3, 4), dtype=np.float32)

    def predict(x: np.ndarray) -> np.ndarray:
        return recipe.predict_probabilities(
            model, tf.data.Dataset.from_tensor_slices((x, labels)).batch(2), cfg)

    plain = np.asarray(model.predict(images, verbose=0), dtype=np.float64)
    mirrored = np.asarray(model.predict(images[:, :, ::-1], verbose=0), dtype=np.float64)
    assert not np.allclose(plain, mirrored)  # the model does see the flip
    expected = (plain + mirrored) / 2 if tta_flip else plain
    np.testing.assert_allclose(predict(images), expected, rtol=1e-6)
    # With TTA an image and its mirror get one answer.
    assert np.allclose(predict(images), predict(images[:, :, ::-1])) is tta_flip
