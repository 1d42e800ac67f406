"""Helpers that test modules import (paths, the real photos); fixtures live in conftest.py."""

from tests.support.paths import DAGS, MWD, REPO, mwd_images

__all__ = ["DAGS", "MWD", "REPO", "mwd_images"]
