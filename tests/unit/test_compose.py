"""The production compose file, checked without a container engine.

Parses docker/compose.yaml and .env.example: the services of the topology are there, the GPU
worker listens on the queue the DAG's train task is sent to, every ``WEATHER_*`` name is one
the pipeline reads, every ``${VAR}`` has a value in .env.example, the Dockerfiles copy files
that exist. Where Debian's ``docker-compose`` is installed it also renders the file.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from weather_tasks import config

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker" / "compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
DAG_FILE = REPO / "dags" / "weather_retrain.py"

SERVICES = {
    "postgres", "redis", "minio", "minio-init", "mlflow", "airflow-init", "airflow-apiserver",
    "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker",
    "airflow-worker-gpu",
}
AIRFLOW_SERVICES = SERVICES - {"postgres", "redis", "minio", "minio-init", "mlflow"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} (enough for this file)."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op and op.endswith("?"):
            raise KeyError(f"{name} is required: {arg}")
        return arg or ""

    return _VAR.sub(sub, value.replace("$$", "\0")).replace("\0", "$")


def _command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def _flag(cmd: list[str], *names: str) -> str | None:
    for i, arg in enumerate(cmd):
        for name in names:
            if arg == name and i + 1 < len(cmd):
                return cmd[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def _dag_task_queues() -> dict[str, str | None]:
    """Each @task function in the DAG file -> the queue= in its decorator (None: default)."""
    tree = ast.parse(DAG_FILE.read_text())
    queues: dict[str, str | None] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            target = deco.func if isinstance(deco, ast.Call) else deco
            name = ast.unparse(target)
            if name == "task" or name.startswith("task."):
                queue = None
                if isinstance(deco, ast.Call):
                    for kw in deco.keywords:
                        if kw.arg == "queue" and isinstance(kw.value, ast.Constant):
                            queue = kw.value.value
                queues[node.name] = queue
    return queues


def _weather_names_read_by_dags() -> set[str]:
    """WEATHER_* variables a DAG file reads at parse time (e.g. WEATHER_SCHEDULE)."""
    names: set[str] = set()
    for path in (REPO / "dags").glob("*.py"):
        names |= set(re.findall(r"""environ(?:\.get)?\(?\[?["'](WEATHER_[A-Z0-9_]+)""",
                                path.read_text()))
    return names


def test_all_services_present() -> None:
    services = _compose()["services"]
    assert SERVICES <= set(services), SERVICES - set(services)


def test_gpu_worker_listens_on_the_train_task_queue() -> None:
    services = _compose()["services"]
    queues = _dag_task_queues()
    assert "train" in queues, f"no @task train in {DAG_FILE}"
    train_queue = queues["train"]
    assert train_queue, "the train task must be routed to a dedicated queue"
    gpu_cmd = _command(services["airflow-worker-gpu"])
    assert gpu_cmd[:2] == ["celery", "worker"]
    assert _flag(gpu_cmd, "--queues", "-q") == train_queue
    assert _flag(gpu_cmd, "--concurrency", "-c") == "1"
    # The CPU worker serves the default queue, where every other task goes.
    cpu_cmd = [_interpolate(a, _env_example()) for a in _command(services["airflow-worker"])]
    default_queue = services["airflow-worker"]["environment"]["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]
    assert _flag(cpu_cmd, "--queues", "-q") == default_queue
    assert train_queue not in (_flag(cpu_cmd, "--queues", "-q") or "").split(",")
    others = {t: q for t, q in queues.items() if t != "train"}
    assert all(q in (None, default_queue) for q in others.values()), others


def test_gpu_worker_reserves_an_nvidia_gpu_and_uses_a_cuda_tensorflow_image() -> None:
    gpu = _compose()["services"]["airflow-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    dockerfile = (COMPOSE.parent / gpu["build"]["context"] / gpu["build"]["dockerfile"]).resolve()
    text = dockerfile.read_text()
    base = re.search(r"^ARG TF_IMAGE=(\S+)", text, re.M)
    assert base and base.group(1).startswith("tensorflow/tensorflow:")
    assert base.group(1).endswith("-gpu")
    # Same TensorFlow as the lock the tests ran with.
    locked = re.search(r"^tensorflow-cpu==(\S+)", (REPO / "requirements.lock").read_text(), re.M)
    assert locked and f":{locked.group(1)}-gpu" in base.group(1)


def test_weather_names_are_real_settings() -> None:
    valid = set(config.env_names()) | _weather_names_read_by_dags()
    example = {k for k in _env_example() if k.startswith("WEATHER_")}
    assert example, "no WEATHER_* settings in .env.example"
    assert example <= valid, f"unknown in .env.example: {sorted(example - valid)}"
    services = _compose()["services"]
    for name, service in services.items():
        env = service.get("environment") or {}
        keys = {k for k in env if k.startswith("WEATHER_")}
        assert keys <= valid, f"{name}: unknown {sorted(keys - valid)}"
    # Every pipeline setting in .env.example reaches the Airflow containers.
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert example <= set(env), f"{name} misses {sorted(example - set(env))}"


def test_env_example_values_are_valid_pipeline_config() -> None:
    fields = set(config.env_names())
    values = {k: v for k, v in _env_example().items() if k in fields}
    cfg = config.from_env(environ=values)
    assert cfg.classes == ("shine", "sunrise", "cloudy", "rain")
    assert cfg.registered_model == "weather-classifier"


def test_every_variable_has_a_value_in_env_example() -> None:
    example = _env_example()
    used = {m.group(1) for m in _VAR.finditer(COMPOSE.read_text().replace("$$", ""))}
    required = {m.group(1) for m in _VAR.finditer(COMPOSE.read_text()) if m.group(2) == ":?"}
    # Image names have working defaults; everything else is spelled out in .env.example.
    optional = {"MINIO_IMAGE", "MINIO_MC_IMAGE", "AIRFLOW_IMAGE_NAME", "MLFLOW_IMAGE_NAME",
                "GPU_WORKER_IMAGE_NAME"}
    assert used - set(example) <= optional, sorted(used - set(example) - optional)
    assert all(example.get(name) for name in required), [n for n in required if not example.get(n)]


def test_s3_connection_and_mlflow_wiring() -> None:
    services = _compose()["services"]
    env = {k: _interpolate(str(v), _env_example())
           for k, v in services["airflow-worker"]["environment"].items()}
    conn = json.loads(env["AIRFLOW_CONN_WEATHER_S3"])
    assert conn["conn_type"] == "aws"
    assert conn["extra"]["endpoint_url"] == "http://minio:9000"
    assert conn["login"] == _env_example()["MINIO_ROOT_USER"]
    assert env["WEATHER_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    mlflow_cmd = [_interpolate(a, _env_example()) for a in _command(services["mlflow"])]
    assert _flag(mlflow_cmd, "--backend-store-uri").startswith("postgresql://")
    assert _flag(mlflow_cmd, "--artifacts-destination").startswith("s3://")
    assert "mlflow:5000" in _flag(mlflow_cmd, "--allowed-hosts").split(",")
    init = " ".join(_command(services["minio-init"]))
    assert "WEATHER_BUCKET" in init and "MLFLOW_BUCKET" in init


def test_build_files_exist() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        build = service.get("build")
        if not build:
            continue
        context = (COMPOSE.parent / build["context"]).resolve()
        dockerfile = context / build["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY") and "--from" not in line:
                for src in line.split()[1:-1]:
                    if not src.startswith("--"):
                        assert (context / src).exists(), f"{dockerfile.name}: COPY {src} missing"
    for name, service in services.items():
        for volume in service.get("volumes", []):
            src = volume.split(":", 1)[0]
            if src.startswith("."):
                assert (COMPOSE.parent / src).exists(), f"{name}: {src} missing"


@pytest.fixture
def docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.skip("docker-compose not installed (Debian package docker-compose)")
    return path


def test_docker_compose_renders_the_file(docker_compose: str, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    out = subprocess.run(
        [docker_compose, "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    rendered = yaml.safe_load(out.stdout)
    assert SERVICES <= set(rendered["services"])
    gpu = rendered["services"]["airflow-worker-gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_docker_compose_refuses_a_missing_secret(docker_compose: str, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    lines = [ln for ln in ENV_EXAMPLE.read_text().splitlines()
             if not ln.startswith("MINIO_ROOT_PASSWORD=")]
    env_file.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [docker_compose, "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode != 0
    assert "set in .env" in out.stderr
