"""DAG integrity tests parse the DAG files in this process: give Airflow a throwaway home.

Set before anything imports airflow (its configuration is read once, at import), so parsing
never touches ~/airflow and never sees a developer's airflow.cfg.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"

if "airflow" not in sys.modules:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="weather-dags-test-")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)


@pytest.fixture(scope="session")
def dagbag() -> Iterator[Any]:
    """The repo's dags/ folder, parsed once (Airflow's DagBag, as the dag-processor does)."""
    from airflow.dag_processing.dagbag import DagBag

    yield DagBag(dag_folder=str(DAGS))
