"""The synthetic scene generator: files, labels by name, variety, determinism, learnability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from devtools.scenes import generate_scenes
from weather_tasks.config import DEFAULT_CLASSES


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=float)


def _label(path: Path) -> str:
    """The seed's rule: the class name is the leading token of the file name."""
    return path.name.split("_")[0]


def test_files_exist_with_labels_in_names(tmp_path: Path) -> None:
    paths = generate_scenes(tmp_path, per_class=3, size=48, seed=1)
    assert len(paths) == 3 * len(DEFAULT_CLASSES)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    for p in paths:
        assert p.suffix == ".jpg"
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.size == (48, 48) and im.mode == "RGB"
    assert {_label(p) for p in paths} == set(DEFAULT_CLASSES)
    assert (tmp_path / "cloudy_0001.jpg").exists() and (tmp_path / "rain_0003.jpg").exists()


@pytest.mark.parametrize("classes", [("rain",), ("shine", "cloudy")])
def test_only_requested_classes(tmp_path: Path, classes: tuple[str, ...]) -> None:
    paths = generate_scenes(tmp_path, per_class=2, size=32, seed=0, classes=classes)
    assert {_label(p) for p in paths} == set(classes)


def test_images_differ_within_a_class(tmp_path: Path) -> None:
    paths = generate_scenes(tmp_path, per_class=6, size=48, seed=2, classes=("cloudy",))
    images = [_pixels(p) for p in paths]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i] - images[j]).mean() > 3.0, (paths[i], paths[j])


def test_deterministic_and_extendable(tmp_path: Path) -> None:
    a = generate_scenes(tmp_path / "a", per_class=2, size=32, seed=5)
    b = generate_scenes(tmp_path / "b", per_class=3, size=32, seed=5)
    more = generate_scenes(tmp_path / "a", per_class=1, size=32, seed=5, start_index=3)
    # Same seed, same index -> same bytes, however many were asked for.
    for p in a:
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes()
    # A later batch continues the numbering and matches what one call would have made.
    assert sorted(p.name for p in more) == sorted(p.name for p in b if p.name.endswith("3.jpg"))
    for p in more:
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes()
    other = generate_scenes(tmp_path / "c", per_class=1, size=32, seed=6, classes=("rain",))
    assert other[0].read_bytes() != (tmp_path / "b" / "rain_0001.jpg").read_bytes()


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fog"):
        generate_scenes(tmp_path, per_class=1, classes=("fog",))
    with pytest.raises(ValueError, match="size"):
        generate_scenes(tmp_path, per_class=1, size=8)


def test_learnable_by_a_trivial_classifier(tmp_path: Path) -> None:
    """Nearest centroid on a coarse colour layout separates the classes far above chance."""
    train = generate_scenes(tmp_path / "train", per_class=20, size=48, seed=10)
    test = generate_scenes(tmp_path / "test", per_class=20, size=48, seed=11)

    def features(p: Path) -> np.ndarray:
        # Mean colour of the top, middle and bottom thirds: sky, horizon, ground.
        img = _pixels(p)
        return np.concatenate([band.mean(axis=(0, 1)) for band in np.array_split(img, 3)])

    centroids = {
        c: np.mean([features(p) for p in train if _label(p) == c], axis=0) for c in DEFAULT_CLASSES
    }
    correct = 0
    for p in test:
        f = features(p)
        guess = min(centroids, key=lambda c: float(np.linalg.norm(f - centroids[c])))
        correct += guess == _label(p)
    accuracy = correct / len(test)
    assert accuracy >= 0.85, f"nearest-centroid accuracy {accuracy:.2f} (chance is 0.25)"
