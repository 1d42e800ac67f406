"""Generated test images: good ones in every accepted format/mode and bad ones of every kind."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def image_bytes(
    fmt: str, size: tuple[int, int] = (64, 48), mode: str = "RGB", seed: int = 0, **save: object
) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def fill_incoming(cfg, s3, count: int, side: int = 64) -> None:
    """Put ``count`` small distinct JPEGs, named by class in turn, under ``incoming/`` (benches)."""
    from concurrent.futures import ThreadPoolExecutor

    def put(i: int) -> None:
        key = f"{cfg.incoming_prefix}{cfg.classes[i % len(cfg.classes)]}_{i:06d}.jpg"
        s3.put_object(Bucket=cfg.bucket, Key=key, Body=image_bytes("JPEG", (side, side), seed=i))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))


def animated_gif(seed: int = 0) -> bytes:
    frames = [Image.fromarray(np.full((40, 40, 3), v, np.uint8)) for v in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    raw = zlib.compress(b"\x00" * (width // 8 + 1) * 16)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


# name -> (content, expected format, expected stored extension)
GOOD: dict[str, tuple[bytes, str, str]] = {
    "rgb_jpeg": (image_bytes("JPEG", seed=1), "JPEG", "jpg"),
    "rgb_png": (image_bytes("PNG", seed=2), "PNG", "png"),
    "gray_jpeg": (image_bytes("JPEG", mode="L", seed=3), "JPEG", "png"),
    "palette_png": (image_bytes("PNG", mode="P", seed=4), "PNG", "png"),
    "rgba_png": (image_bytes("PNG", mode="RGBA", seed=5), "PNG", "png"),
    "gif": (animated_gif(), "GIF", "png"),
    "bmp": (image_bytes("BMP", seed=6), "BMP", "png"),
    "webp": (image_bytes("WEBP", seed=7), "WEBP", "png"),
    "cmyk_jpeg": (image_bytes("JPEG", mode="CMYK", seed=8), "JPEG", "png"),
}


def _corrupt(data: bytes) -> bytes:
    """Garbage in the middle of the compressed data, length kept."""
    mid = len(data) // 2
    return data[:mid] + bytes(range(256))[:200] + data[mid + 200 :]


_jpeg = image_bytes("JPEG", size=(200, 200), seed=9)

# name -> (content, reason)
BAD: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "empty"),
    "text_named_jpg": (b"this is not an image, just text\n" * 10, "not_an_image"),
    "html_named_jpg": (b"<html><body>404</body></html>", "not_an_image"),
    "truncated_jpeg": (_jpeg[: len(_jpeg) // 2], "truncated"),
    "corrupt_png": (_corrupt(image_bytes("PNG", seed=10)), "undecodable"),
    "tiff": (image_bytes("TIFF", seed=11), "unsupported_format"),
    "ico": (image_bytes("ICO", size=(32, 32), seed=12), "unsupported_format"),
    "tiny": (image_bytes("PNG", size=(8, 8), seed=13), "too_small"),
    "bomb": (png_bomb(), "too_large"),
}
