"""Import a DAG file as Airflow's dag-processor does, for tests that call what it defines."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest


def load_dag_file(path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> ModuleType:
    """``path`` as a fresh module under ``env`` (parse-time settings are read again), with its
    folder on sys.path as the dag-processor and the task runner put it."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.syspath_prepend(str(path.parent))
    monkeypatch.delitem(sys.modules, "weather_settings", raising=False)  # re-read the env
    spec = importlib.util.spec_from_file_location(f"dag_{uuid.uuid4().hex}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
