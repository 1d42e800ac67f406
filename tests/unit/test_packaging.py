"""Who installs what: the library without Airflow, Airflow as the `airflow` extra, a model
consumer only the model's logged requirements (mlflow-skinny, not the MLflow server); the lock
covers every extra; the type hints ship (py.typed); the version and the changelog agree."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import weather_tasks
from weather_tasks import model_package

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def test_the_library_installs_without_airflow() -> None:
    base = _names(PROJECT["dependencies"])
    assert not {n for n in base if n.startswith("apache-airflow")}, base
    assert {"apache-airflow", "apache-airflow-providers-amazon"} <= _names(
        PROJECT["optional-dependencies"]["airflow"]
    )


def test_dev_brings_the_airflow_extra_for_the_dags_tests_and_the_demo() -> None:
    dev = [Requirement(r) for r in PROJECT["optional-dependencies"]["dev"]]
    assert any(r.name == PROJECT["name"] and "airflow" in r.extras for r in dev)


def test_the_lock_pins_every_dependency_of_every_extra() -> None:
    locked = {
        canonicalize_name(line.split("==")[0])
        for line in (REPO / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith((" ", "#"))
    }
    declared = _names(PROJECT["dependencies"])
    for extra in PROJECT["optional-dependencies"].values():
        declared |= _names(extra)
    declared.discard(canonicalize_name(PROJECT["name"]))
    assert declared <= locked, sorted(declared - locked)


def _dockerfile_stages() -> dict[str, str]:
    """docker/Dockerfile's stages: name (``FROM ... AS name``) -> the stage's text."""
    text = (REPO / "docker" / "Dockerfile").read_text()
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)[ \t]*$", text, flags=re.M | re.I)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.parametrize("stage", ["airflow-requirements", "gpu-worker-venv"])
def test_the_airflow_images_install_the_airflow_extra(stage: str) -> None:
    """The airflow and gpu-worker images install this project's `airflow` extra, read from the
    pyproject.toml the stage copies to /src; the airflow image through the pinned list that
    airflow-requirements compiles."""
    stages = _dockerfile_stages()
    assert "airflow" in PROJECT["optional-dependencies"]
    assert re.search(r"--extra airflow\b", stages[stage])
    assert re.search(r"^COPY .*\bpyproject\.toml\b.* /src/?$", stages[stage], re.M)
    assert re.search(r"^COPY --from=airflow-requirements /src/airflow.txt /src/$",
                     stages["airflow-venv"], re.M)
    assert "-r /src/airflow.txt" in stages["airflow-venv"]


def test_the_model_requires_neither_airflow_nor_the_mlflow_server() -> None:
    names = _names(model_package.model_requirements())
    assert not {n for n in names if n.startswith("apache-airflow")}, names
    assert "mlflow" not in names and "weather-retrain" not in names
    assert {"mlflow-skinny", "keras", "pillow", "numpy", "pandas"} <= names


@pytest.mark.parametrize("requirement", model_package.model_requirements())
def test_the_trained_versions_satisfy_the_model_requirements(requirement: str) -> None:
    """The bounds are literal or derived; either way the versions that trained (and tested)
    the model must be inside them, or the lock has moved past a bound."""
    req = Requirement(requirement)
    if req.marker is not None and not req.marker.evaluate():
        pytest.skip(f"not for this platform: {req.marker}")
    installed = importlib.metadata.version(req.name)
    assert req.specifier.contains(installed, prereleases=True), (requirement, installed)


def test_mlflow_skinny_is_pinned_to_the_version_that_logs_the_model() -> None:
    skinny = [r for r in model_package.model_requirements() if r.startswith("mlflow-skinny")]
    assert skinny == [f"mlflow-skinny=={importlib.metadata.version('mlflow')}"]


def test_type_hints_ship_with_the_package() -> None:
    assert (REPO / "weather_tasks" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["weather_tasks"]


def test_one_version_and_a_changelog_section_for_it() -> None:
    assert PROJECT["version"] == weather_tasks.__version__
    headings = re.findall(r"^## (\S+)", (REPO / "CHANGELOG.md").read_text(), re.M)
    assert "Unreleased" in headings
    assert PROJECT["version"] in headings
