"""How an image is resized to the model's input: one spec for training and serving.

``weather_tasks.data`` resizes the training images with it; ``weather_tasks.model_package``
logs it in the model config, and ``serving_model.py`` resizes with what it finds there (then
rounds to uint8 like the training cache), so production pixels are training pixels;
tests/unit/test_data.py checks it. No TensorFlow here: the packaging side imports this
without the training input pipeline.
"""

from __future__ import annotations

# Antialiasing, because most photos are downscaled several times and plain bilinear would
# alias.
RESIZE_METHOD = "bilinear"
RESIZE_ANTIALIAS = True
