"""DAG integrity tests parse the DAG files in this process: give Airflow a throwaway home.

Set before anything imports airflow (its configuration is read once, at import), so parsing
never touches ~/airflow and never sees a developer's airflow.cfg.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import DAGS

if "airflow" not in sys.modules:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="weather-dags-test-")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)


@pytest.fixture(scope="session")
def dagbag() -> Iterator[Any]:
    """The repo's dags/ folder, parsed once, as the dag-processor parses a bundle (the bundle's
    folder on sys.path, so the DAG files can import weather_settings.py beside them)."""
    from airflow.dag_processing.dagbag import BundleDagBag

    yield BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)
