"""Content validation, table-driven over generated good and bad files."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from devtools.corpus import BAD, GOOD, image_bytes
from weather_tasks import config
from weather_tasks.validate import Rejected, validate_image

CFG = config.from_env(environ={})


@pytest.mark.parametrize("name", sorted(GOOD))
def test_accepted_formats_become_rgb(name: str) -> None:
    data, fmt, ext = GOOD[name]
    valid = validate_image(data, CFG)
    assert (valid.format, valid.stored_ext) == (fmt, ext)
    stored = Image.open(io.BytesIO(valid.stored_bytes))
    assert stored.mode == "RGB"
    assert stored.size == (valid.width, valid.height)
    if ext == "jpg":
        assert valid.stored_bytes == data  # RGB JPEG is kept byte for byte


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_content_is_rejected_with_its_reason(name: str) -> None:
    data, reason = BAD[name]
    with pytest.raises(Rejected) as exc:
        validate_image(data, CFG)
    assert exc.value.reason == reason
    assert exc.value.detail


def test_limits_come_from_config() -> None:
    data = image_bytes("PNG", size=(100, 100))
    with pytest.raises(Rejected, match="too_small"):
        validate_image(data, config.from_env(environ={}, min_image_side=101))
    with pytest.raises(Rejected, match="too_large"):
        validate_image(data, config.from_env(environ={}, max_image_pixels=9_999))
    with pytest.raises(Rejected, match="too_many_bytes"):
        validate_image(data, config.from_env(environ={}, max_object_bytes=100))
    assert validate_image(data, config.from_env(environ={}, max_image_pixels=10_000)).width == 100


def test_gif_keeps_the_first_frame() -> None:
    valid = validate_image(GOOD["gif"][0], CFG)
    pixel = Image.open(io.BytesIO(valid.stored_bytes)).getpixel((5, 5))
    assert max(pixel) < 50  # the dark first frame, not the bright second one
