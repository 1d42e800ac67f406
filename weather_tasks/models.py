"""The seed notebook's three CNNs, layer for layer, in plain Keras 3.

``build_model_1`` (simple CNN), ``build_model_2`` (deeper CNN) and ``build_model_3``
(batch-normalized, GlobalAveragePooling, dropout 0.5; the production model) keep the
seed's layers exactly, including its quirks (model 3's second convolution applies ReLU
*before* batch normalization and has no separate activation; later blocks apply ReLU
twice). At 250x250x3 the parameter counts are the seed's: 14,803,780; 10,648,772;
1,375,396. Only the Keras API is used, so the code runs on any Keras backend.

Model 3's batch normalization takes its ``momentum`` from the argument (the Keras default
0.99, as the seed; ``bn_momentum`` in the config). Its weights do not depend on the input size
(global average pooling), so ``image_size=None`` builds it for any size: progressive resizing
trains that model, and serving gets a copy built at the target size with the same weights.
Models 1 and 2 flatten a fixed-size map and have no batch normalization.

The output softmax is always float32 (``dtype="float32"``): under a mixed precision policy
(float16 on GPU, bfloat16 on CPU) the probabilities and the loss stay numerically stable.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

# The smallest image each model accepts is a config rule (checked when the config is built);
# build_model checks it too, for callers that pass a size directly.
from weather_tasks.config import MIN_IMAGE_SIZE

Builder = Callable[[int, int], keras.Model]
KERAS_BN_MOMENTUM = 0.99  # keras.layers.BatchNormalization's default, the seed's


def _output(n_classes: int) -> layers.Layer:
    return layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")


def build_model_1(image_size: int, n_classes: int = 4) -> keras.Model:
    """Model 1: conv-pool-conv-pool-conv, flatten, dense 64 (14,803,780 params at 250 px)."""
    return keras.Sequential(
        [
            keras.Input(shape=(image_size, image_size, 3), name="image"),
            layers.Conv2D(32, (5, 5), strides=(1, 1), padding="same", activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2), strides=(2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu", padding="same"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            _output(n_classes),
        ],
        name="model_1",
    )


def build_model_2(image_size: int, n_classes: int = 4) -> keras.Model:
    """Model 2: six conv/pool blocks up to 512 filters, three dense layers (10,648,772 params)."""
    return keras.Sequential(
        [
            keras.Input(shape=(image_size, image_size, 3), name="image"),
            layers.Conv2D(32, (5, 5), strides=(1, 1), padding="same", activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2), strides=(2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu", padding="same"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(128, (3, 3), activation="relu", padding="same"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(256, (3, 3), activation="relu", padding="same"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(512, (3, 3), activation="relu", padding="same"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(512, (3, 3), activation="relu"),
            layers.Flatten(),
            layers.Dense(512, activation="relu"),
            layers.Dense(256, activation="relu"),
            layers.Dense(128, activation="relu"),
            _output(n_classes),
        ],
        name="model_2",
    )


def build_model_3(
    image_size: int | None, n_classes: int = 4, bn_momentum: float = KERAS_BN_MOMENTUM
) -> keras.Model:
    """Model 3: batch-normalized conv blocks, GAP, dense 512/128 with dropout 0.5 (1,375,396).

    ``image_size`` None: any square or rectangular size (same weights).
    """

    def bn() -> layers.Layer:
        return layers.BatchNormalization(momentum=bn_momentum)

    def conv_bn_relu(filters: int, kernel: tuple[int, int]) -> list[layers.Layer]:
        # The seed's pattern: Conv2D(activation="relu") -> BatchNormalization -> Activation("relu").
        return [
            layers.Conv2D(filters, kernel, activation="relu", padding="same"),
            bn(),
            layers.Activation("relu"),
        ]

    return keras.Sequential(
        [
            keras.Input(shape=(image_size, image_size, 3), name="image"),
            layers.Conv2D(32, (5, 5), strides=(1, 1), padding="same"),
            bn(),
            layers.Activation("relu"),
            layers.Conv2D(32, (3, 3), activation="relu", padding="same"),
            bn(),
            layers.MaxPooling2D(pool_size=(2, 2)),
            *conv_bn_relu(64, (3, 3)),
            *conv_bn_relu(64, (3, 3)),
            layers.MaxPooling2D((2, 2)),
            *conv_bn_relu(128, (3, 3)),
            *conv_bn_relu(128, (3, 3)),
            layers.MaxPooling2D((2, 2)),
            *conv_bn_relu(256, (3, 3)),
            *conv_bn_relu(256, (3, 3)),
            layers.MaxPooling2D((2, 2)),
            layers.GlobalAveragePooling2D(),
            layers.Dense(512, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.5),
            _output(n_classes),
        ],
        name="model_3",
    )


BUILDERS: dict[str, Builder] = {
    "model_1": build_model_1,
    "model_2": build_model_2,
    "model_3": build_model_3,
}


def build_model(
    name: str,
    image_size: int | None,
    n_classes: int = 4,
    *,
    bn_momentum: float = KERAS_BN_MOMENTUM,
) -> keras.Model:
    """Build one of the seed's models by name (``model_1``, ``model_2``, ``model_3``).

    ``image_size`` None: any input size, for model 3 only (``config.SIZE_FREE_MODELS``).
    ``bn_momentum``: model 3's batch normalization (the others have none).
    """
    try:
        builder = BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(BUILDERS)}") from None
    if image_size is not None and image_size < MIN_IMAGE_SIZE[name]:
        raise ValueError(
            f"image_size {image_size} is too small for {name}: it needs at least "
            f"{MIN_IMAGE_SIZE[name]} px"
        )
    if name == "model_3":  # the one model with batch normalization and size-free weights
        return build_model_3(image_size, n_classes, bn_momentum)
    if image_size is None:
        raise ValueError(f"{name} flattens a fixed-size map: it needs an image_size")
    return builder(image_size, n_classes)
