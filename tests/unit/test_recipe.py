"""The Keras recipe without tracking: precision choice and policy, build, float32 export."""

from __future__ import annotations

import keras
import numpy as np
import pytest

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
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert model.loss == "categorical_crossentropy"
    for a, b in zip(model.get_weights(), again.get_weights(), strict=True):  # same seed
        np.testing.assert_array_equal(a, b)

    copy = recipe.float32_copy(model, cfg)
    assert copy.compute_dtype == "float32"
    for a, b in zip(model.get_weights(), copy.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
