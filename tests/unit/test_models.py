"""The seed's three architectures: parameter counts, output shape and dtype, unknown names."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from weather_tasks import config, models


@pytest.mark.parametrize(
    ("name", "total", "non_trainable"),
    [
        # The seed notebook's model.summary() at 250x250x3.
        ("model_1", 14_803_780, 0),
        ("model_2", 10_648_772, 0),
        ("model_3", 1_375_396, 1_920),
    ],
)
def test_parameter_counts_match_the_seed_at_250px(
    name: str, total: int, non_trainable: int
) -> None:
    model = models.build_model(name, 250, 4)
    assert model.count_params() == total
    assert sum(int(np.prod(w.shape)) for w in model.non_trainable_weights) == non_trainable


@pytest.mark.parametrize("name", sorted(models.BUILDERS))
def test_output_is_a_float32_distribution_over_the_classes(name: str) -> None:
    size = config.MIN_IMAGE_SIZE[name]
    model = models.build_model(name, size, 3)
    probs = keras.ops.convert_to_numpy(model(np.random.rand(2, size, size, 3).astype("float32")))
    assert probs.shape == (2, 3)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_output_layer_stays_float32_under_mixed_precision() -> None:
    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy("mixed_bfloat16")
        model = models.build_model("model_3", 32, 4)
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.layers[0].compute_dtype == "bfloat16"
    assert model.layers[-1].compute_dtype == "float32"
    assert keras.ops.convert_to_numpy(model(np.ones((1, 32, 32, 3)))).dtype == np.float32


def test_unknown_model_name_is_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match="model_1, model_2, model_3"):
        models.build_model("model_9", 64)


@pytest.mark.parametrize("name", sorted(models.BUILDERS))
def test_too_small_image_size_is_rejected_by_name(name: str) -> None:
    with pytest.raises(ValueError, match=f"image_size .* too small for {name}"):
        models.build_model(name, config.MIN_IMAGE_SIZE[name] - 1)


@pytest.mark.parametrize("momentum", [0.99, 0.9])
def test_model_3_batch_normalization_takes_the_momentum(momentum: float) -> None:
    model = models.build_model("model_3", 32, 4, bn_momentum=momentum)
    norms = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert len(norms) == 8  # every batch normalization of the seed's model 3
    assert {la.momentum for la in norms} == {momentum}


def test_model_3_any_size_has_the_same_weights_as_at_250px() -> None:
    """What progressive resizing relies on: one set of weights serves every input size."""
    any_size = models.build_model("model_3", None, 4)
    assert any_size.input_shape == (None, None, None, 3)
    assert any_size.count_params() == 1_375_396
    fixed = models.build_model("model_3", 250, 4)
    fixed.set_weights(any_size.get_weights())  # raises on any shape mismatch
    image = np.random.default_rng(0).random((1, 64, 64, 3), dtype=np.float32)
    assert keras.ops.convert_to_numpy(any_size(image)).shape == (1, 4)


@pytest.mark.parametrize("name", ["model_1", "model_2"])
def test_flattening_models_need_a_size(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} flattens a fixed-size map"):
        models.build_model(name, None)
