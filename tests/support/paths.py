"""Where things are: the repository, its DAGs folder and the real photos in ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
MWD = REPO.parent / "shared" / "datasets" / "mwd"


def mwd_images() -> Path:
    """The real photos; without them a skip that says why, or a failure when ``CI`` is set.

    CI checks out ../shared beside the repository: there, missing photos mean a broken set-up
    that would otherwise pass quietly with every real-photo test skipped.
    """
    images = MWD / "images"
    if not images.is_dir():
        why = f"real photos not found at {images} (../shared is absent)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI is set, so they are required", pytrace=False)
        pytest.skip(why)
    return images
