"""Synthetic weather scenes, one small generator per class, for the demo and the tests.

Each class gets the visual cue a person (and a CNN) would use on the real photos:
``shine`` a blue sky with a bright sun disc and glow, ``sunrise`` an orange/red horizon with a
low sun and a dark foreground, ``cloudy`` grey cloud masses over a pale sky, ``rain`` a dark
sky with streaks. Positions, colours, sizes and noise are random, so images differ, but the
cues make the classes learnable. Every image has its own generator seeded by
``(seed, class, index)``: asking for more images later (a second demo night) never changes
the ones generated before, and the same arguments always give the same files.

File names follow the label rule of the seed: the class name is the leading token
(``cloudy_0001.jpg``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from weather_tasks.config import DEFAULT_CLASSES

Array = np.ndarray
Painter = Callable[[np.random.Generator, int], Array]


def generate_scenes(
    out_dir: Path | str,
    per_class: int,
    size: int = 64,
    seed: int = 0,
    classes: Sequence[str] = DEFAULT_CLASSES,
    start_index: int = 1,
) -> list[Path]:
    """Write ``per_class`` JPEG scenes per class into ``out_dir``; return their paths.

    Files are numbered from ``start_index`` (``rain_0001.jpg`` ...), so a later call with
    ``start_index=per_class + 1`` adds new, different images next to the old ones.
    """
    if per_class < 0:
        raise ValueError(f"per_class must be >= 0, got {per_class}")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    unknown = [c for c in classes if c not in PAINTERS]
    if unknown:
        raise ValueError(f"no scene generator for class(es) {unknown}; known: {sorted(PAINTERS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for class_index, name in enumerate(DEFAULT_CLASSES):
        if name not in classes:
            continue
        for i in range(start_index, start_index + per_class):
            rng = np.random.default_rng([seed, class_index, i])
            pixels = render_scene(name, rng, size)
            path = out / f"{name}_{i:04d}.jpg"
            Image.fromarray(pixels).save(path, format="JPEG", quality=90)
            paths.append(path)
    return paths


def render_scene(name: str, rng: np.random.Generator, size: int) -> Array:
    """One scene of class ``name`` as a uint8 array of shape (size, size, 3)."""
    img = PAINTERS[name](rng, size)
    img = img + rng.normal(0.0, rng.uniform(2.0, 7.0), img.shape)  # sensor noise
    return np.clip(img, 0, 255).astype(np.uint8)


# --- building blocks (float arrays in 0..255, shape (size, size, 3)) -----------------------


def _jitter(rng: np.random.Generator, rgb: Sequence[float], amount: float) -> Array:
    return np.clip(np.asarray(rgb, dtype=float) + rng.uniform(-amount, amount, 3), 0, 255)


def _vertical_gradient(size: int, top: Array, bottom: Array, gamma: float = 1.0) -> Array:
    t = np.linspace(0.0, 1.0, size)[:, None, None] ** gamma
    column = top[None, None, :] * (1 - t) + bottom[None, None, :] * t
    return np.repeat(column, size, axis=1)


def _ground(rng: np.random.Generator, img: Array, horizon: int, colour: Array) -> Array:
    """Paint the ground below a slightly wavy horizon line."""
    size = img.shape[0]
    xs = np.arange(size)
    wave = horizon + (size * 0.03) * np.sin(xs / size * rng.uniform(2, 9) + rng.uniform(0, 6.3))
    rows = np.arange(size)[:, None]
    mask = rows >= wave[None, :]
    shade = np.linspace(1.0, 0.7, size)[:, None, None]
    ground = np.broadcast_to(colour, img.shape) * shade
    return np.where(mask[..., None], ground, img)


def _disc(size: int, cx: float, cy: float, radius: float, soft: float) -> Array:
    """A disc of ``radius`` with a soft edge, as weights in 0..1."""
    ys, xs = np.mgrid[0:size, 0:size]
    d = np.hypot(xs - cx, ys - cy)
    return np.clip((radius + soft - d) / max(soft, 1e-6), 0.0, 1.0)


def _glow(size: int, cx: float, cy: float, reach: float) -> Array:
    ys, xs = np.mgrid[0:size, 0:size]
    d2 = (xs - cx) ** 2 + (ys - cy) ** 2
    return np.exp(-d2 / (2 * reach**2))


def _blend(img: Array, colour: Array, weight: Array) -> Array:
    w = weight[..., None]
    return img * (1 - w) + colour[None, None, :] * w


def _cloud_mass(rng: np.random.Generator, size: int, count: int, scale: float) -> Array:
    """Soft cloud coverage (0..1) from blurred clusters of ellipses."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(count):
        cx, cy = rng.uniform(-0.1, 1.1) * size, rng.uniform(0.0, 0.7) * size
        for _ in range(int(rng.integers(3, 7))):
            rx = rng.uniform(0.08, 0.22) * size * scale
            ry = rx * rng.uniform(0.45, 0.8)
            ox, oy = rng.normal(0, 0.08 * size * scale, 2)
            draw.ellipse(
                (cx + ox - rx, cy + oy - ry, cx + ox + rx, cy + oy + ry),
                fill=int(rng.integers(170, 256)),
            )
    canvas = canvas.filter(ImageFilter.GaussianBlur(radius=max(1.0, size * 0.03)))
    return np.asarray(canvas, dtype=float) / 255.0


# --- one painter per class ------------------------------------------------------------------


def _shine(rng: np.random.Generator, size: int) -> Array:
    top = _jitter(rng, (40, 110, 225), 25)
    bottom = _jitter(rng, (150, 200, 250), 20)
    img = _vertical_gradient(size, top, bottom, gamma=rng.uniform(0.6, 1.4))
    horizon = int(size * rng.uniform(0.65, 0.85))
    cx, cy = rng.uniform(0.15, 0.85) * size, rng.uniform(0.1, 0.4) * size
    radius = size * rng.uniform(0.06, 0.11)
    img = _blend(img, np.array([255.0, 250, 225]), 0.75 * _glow(size, cx, cy, radius * 3.0))
    img = _blend(img, _jitter(rng, (255, 252, 215), 4), _disc(size, cx, cy, radius, size * 0.01))
    if rng.random() < 0.5:  # a few fair-weather clouds
        img = _blend(img, np.array([250.0, 250, 250]), 0.6 * _cloud_mass(rng, size, 1, 0.5))
    return _ground(rng, img, horizon, _jitter(rng, (70, 130, 60), 30))


def _sunrise(rng: np.random.Generator, size: int) -> Array:
    top = _jitter(rng, (50, 45, 110), 25)
    bottom = _jitter(rng, (250, 130, 40), 20)
    img = _vertical_gradient(size, top, bottom, gamma=rng.uniform(0.7, 1.6))
    horizon = int(size * rng.uniform(0.62, 0.8))
    cx, cy = rng.uniform(0.2, 0.8) * size, horizon - rng.uniform(-0.02, 0.08) * size
    radius = size * rng.uniform(0.08, 0.15)
    img = _blend(img, _jitter(rng, (255, 120, 40), 15), 0.7 * _glow(size, cx, cy, radius * 2.5))
    img = _blend(img, _jitter(rng, (255, 210, 90), 15), _disc(size, cx, cy, radius, size * 0.015))
    if rng.random() < 0.6:  # thin lit clouds
        clouds = 0.45 * _cloud_mass(rng, size, int(rng.integers(1, 3)), 0.5)
        img = _blend(img, _jitter(rng, (200, 80, 90), 25), clouds)
    return _ground(rng, img, horizon, _jitter(rng, (25, 18, 20), 12))


def _cloudy(rng: np.random.Generator, size: int) -> Array:
    grey = rng.uniform(150, 200)
    top = _jitter(rng, (grey, grey, grey + 12), 12)
    bottom = _jitter(rng, (grey + 25, grey + 25, grey + 30), 10)
    img = _vertical_gradient(size, top, bottom)
    for _ in range(int(rng.integers(2, 4))):  # layered masses, lighter and darker
        shade = rng.uniform(90, 235)
        mass = _cloud_mass(rng, size, int(rng.integers(2, 5)), rng.uniform(0.9, 1.6))
        img = _blend(img, _jitter(rng, (shade, shade, shade + 5), 6), 0.85 * mass)
    horizon = int(size * rng.uniform(0.75, 0.92))
    return _ground(rng, img, horizon, _jitter(rng, (85, 95, 80), 20))


def _rain(rng: np.random.Generator, size: int) -> Array:
    dark = rng.uniform(45, 90)
    top = _jitter(rng, (dark, dark, dark + 8), 10)
    bottom = _jitter(rng, (dark + 35, dark + 35, dark + 45), 10)
    img = _vertical_gradient(size, top, bottom)
    mass = _cloud_mass(rng, size, int(rng.integers(2, 5)), 1.5)
    img = _blend(img, _jitter(rng, (dark - 20, dark - 20, dark - 15), 8), 0.8 * mass)
    horizon = int(size * rng.uniform(0.72, 0.9))
    img = _ground(rng, img, horizon, _jitter(rng, (40, 45, 45), 10))
    # Rain streaks: many short light lines at one slant, drawn on a separate layer.
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    slant = rng.uniform(-0.35, 0.35)
    length = size * rng.uniform(0.06, 0.14)
    for _ in range(int(size * size * rng.uniform(0.03, 0.06) / 10)):
        x, y = rng.uniform(-0.2, 1.2) * size, rng.uniform(0, 1) * size
        draw.line((x, y, x + slant * length, y + length), fill=int(rng.integers(120, 230)))
    streaks = np.asarray(layer, dtype=float) / 255.0
    return _blend(img, _jitter(rng, (200, 205, 215), 10), 0.7 * streaks)


PAINTERS: dict[str, Painter] = {
    "shine": _shine,
    "sunrise": _sunrise,
    "cloudy": _cloudy,
    "rain": _rain,
}
