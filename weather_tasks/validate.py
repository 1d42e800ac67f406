"""Image validation by content (never by extension) and normalisation for training.

Accepted: JPEG, PNG, GIF (first frame), BMP, WebP. RGB JPEG and RGB PNG are stored as
they came; anything else (GIF, BMP, WebP, grayscale, palette, RGBA, CMYK, 16-bit) is
stored as an RGB PNG so the trainer decodes one of two formats, always with 3 channels.
Rejections carry a reason code (see ``REASONS``) and a human-readable detail.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from weather_tasks.config import PipelineConfig

ACCEPTED_FORMATS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp"}
REASONS = (
    "empty",
    "too_many_bytes",
    "not_an_image",
    "unsupported_format",
    "undecodable",
    "truncated",
    "too_small",
    "too_large",
    "no_class",
    "ambiguous_class",
    "conflicting_label",
)


class Rejected(Exception):
    """The object is not a usable image; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ValidImage:
    format: str  # what the content is (JPEG, PNG, GIF, BMP, WEBP)
    mode: str  # PIL mode of the source
    width: int
    height: int
    stored_ext: str  # jpg or png
    stored_bytes: bytes


def validate_image(data: bytes, cfg: PipelineConfig) -> ValidImage:
    """Decode ``data`` fully and return what to store, or raise :class:`Rejected`."""
    if not data:
        raise Rejected("empty", "the object has no bytes")
    if len(data) > cfg.max_object_bytes:
        raise Rejected("too_many_bytes", f"{len(data)} bytes > {cfg.max_object_bytes}")
    with warnings.catch_warnings():
        # Our own pixel limit decides; PIL's bomb check is a second line of defence.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise Rejected("too_large", str(exc)) from exc
        except UnidentifiedImageError as exc:
            raise Rejected("not_an_image", "content is not a recognised image format") from exc
        except Exception as exc:  # noqa: BLE001 - PIL raises many types on garbage
            raise Rejected("undecodable", f"{type(exc).__name__}: {exc}") from exc
        fmt = (img.format or "").upper()
        if fmt not in ACCEPTED_FORMATS:
            raise Rejected(
                "unsupported_format",
                f"{fmt or 'unknown'} is not one of {', '.join(ACCEPTED_FORMATS)}",
            )
        width, height = img.size
        if width * height > cfg.max_image_pixels:
            raise Rejected(
                "too_large", f"{width}x{height} = {width * height} pixels > {cfg.max_image_pixels}"
            )
        if min(width, height) < cfg.min_image_side:
            raise Rejected("too_small", f"{width}x{height} is below {cfg.min_image_side} px")
        try:
            img.seek(0)  # GIF/WebP: the first frame
            img.load()
        except OSError as exc:
            reason = "truncated" if "truncated" in str(exc).lower() else "undecodable"
            raise Rejected(reason, f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001
            raise Rejected("undecodable", f"{type(exc).__name__}: {exc}") from exc
        mode = img.mode
        if fmt in ("JPEG", "PNG") and mode == "RGB":
            return ValidImage(fmt, mode, width, height, ACCEPTED_FORMATS[fmt], data)
        rgb = _to_rgb(img)
        buf = io.BytesIO()
        rgb.save(buf, format="PNG", optimize=False)
        return ValidImage(fmt, mode, width, height, "png", buf.getvalue())


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB on a white background for transparency; 16-bit and CMYK converted by PIL."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return img.point(lambda v: v / 256).convert("L").convert("RGB")
    return img.convert("RGB")
