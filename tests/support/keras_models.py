"""Tiny Keras models with known behaviour, for tests of what wraps a model."""

from __future__ import annotations

import keras
import numpy as np


def flip_sensitive_model(size: int) -> keras.Model:
    """Class 0's logit is the left half's brightness minus the right half's: a horizontal flip
    changes the answer (a vertical one does not)."""
    model = keras.Sequential([keras.Input((size, size, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="softmax")])
    side = np.where(np.arange(size) < size // 2, 1.0, -1.0)
    kernel = np.zeros((size * size * 3, 2), dtype=np.float32)
    kernel[:, 0] = np.broadcast_to(side[None, :, None], (size, size, 3)).reshape(-1)
    model.set_weights([kernel, np.zeros(2, dtype=np.float32)])
    return model
