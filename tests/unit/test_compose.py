"""The production compose files and images, checked without a container engine.

Parses docker/compose.yaml, docker/compose.publish.yaml, docker/Dockerfile, .dockerignore and
.env.example: the services of the topology are there and built from targets that exist, every
image runs as a non-root user and installs exactly the lock, nothing is published but on
PUBLISH_ADDRESS (127.0.0.1 by default), every service that keeps running has a health check,
the pipeline and the serving endpoint use their own MLflow accounts, the GPU worker listens on
the queue the DAG's train task is sent to, every ``WEATHER_*`` name is one the pipeline reads,
every ``${VAR}`` has a value in .env.example. Where Debian's ``docker-compose`` is installed it
also renders the files, and CI's override (tests/platform/compose.test.yaml) with them.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from weather_tasks import cli, config

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker" / "compose.yaml"
PUBLISH = REPO / "docker" / "compose.publish.yaml"
CI_OVERRIDE = REPO / "tests" / "platform" / "compose.test.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENV_EXAMPLE = REPO / ".env.example"
LOCK = REPO / "requirements.lock"
PYPROJECT = REPO / "pyproject.toml"
DAG_FILE = REPO / "dags" / "weather_retrain.py"

SERVICES = {
    "postgres",
    "redis",
    "minio",
    "minio-init",
    "mlflow",
    "mlflow-init",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-worker-gpu",
    "weather-serve",
}
# The services that build an image, and the Dockerfile target each builds; every other service
# of the project runs one of these images by name.
BUILDS = {"airflow-init": "airflow", "mlflow": "mlflow", "airflow-worker-gpu": "gpu-worker"}
RUNTIME_TARGETS = ("airflow", "mlflow", "gpu-worker")
ONE_SHOT = {"minio-init", "mlflow-init", "airflow-init"}  # run to completion, then exit
# Not started by CI's override (its header: no GPU there); profile-gated services neither.
NOT_STARTED_IN_CI = {"airflow-worker-gpu"}
PUBLISH_ADDRESS = "${PUBLISH_ADDRESS:-127.0.0.1}"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
# scheme://[user@]host: group 1 the scheme, group 2 the host.
_URL = re.compile(r"\b([a-z][a-z0-9+.-]*)://(?:[^@/\s\"']*@)?(\[[^\]]*\]|[^:/\s\"'?#]+)")
NOT_A_HOST = {"s3", "models", "runs", "mlflow-artifacts", "file"}  # s3://<bucket>, ...


# --- compose files ---------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _publish() -> dict[str, Any]:
    return yaml.safe_load(PUBLISH.read_text())


def _env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} (enough for these files)."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op and op.endswith("?"):
            raise KeyError(f"{name} is required: {arg}")
        return arg or ""

    return _VAR.sub(sub, value.replace("$$", "\0")).replace("\0", "$")


def _variables(value: Any) -> set[str]:
    """The ${VAR} names anywhere in a compose value (``$$`` is a literal dollar)."""
    return {m.group(1) for m in _VAR.finditer(json.dumps(value).replace("$$", ""))}


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


def _airflow_services(services: dict[str, Any]) -> set[str]:
    """The services that run an ``airflow`` command (and so need the pipeline's settings)."""
    return {n for n, s in services.items() if _command(s)[:1] == ["airflow"]}


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
        names |= set(
            re.findall(r"""environ(?:\.get)?\(?\[?["'](WEATHER_[A-Z0-9_]+)""", path.read_text())
        )
    return names


def _lock() -> dict[str, str]:
    """requirements.lock: canonical name -> pinned version."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name.split("[")[0])] = version.split()[0]
    return pins


# --- Dockerfile and .dockerignore ------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    name: str
    base: str
    instructions: tuple[tuple[str, str], ...]  # (KEYWORD, arguments), continuations joined


def _instructions(text: str) -> Iterator[tuple[str, str]]:
    """The Dockerfile's instructions, comment lines dropped and ``\\`` continuations joined."""
    buf = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not buf):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (buf + line).strip().partition(" ")
        buf = ""
        yield keyword.upper(), " ".join(args.split())


def _global_args() -> dict[str, str]:
    """ARGs declared before the first FROM: name -> default."""
    out = {}
    for keyword, args in _instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = args.partition("=")
            out[name] = default
    return out


def _stages() -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    current: tuple[str, str, list[tuple[str, str]]] | None = None
    for keyword, args in _instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            if current:
                stages[current[0]] = Stage(current[0], current[1], tuple(current[2]))
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            current = (name, words[0], [])
        elif current:
            current[2].append((keyword, args))
    assert current, f"no FROM in {DOCKERFILE}"
    stages[current[0]] = Stage(current[0], current[1], tuple(current[2]))
    return stages


def _lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    """``name``'s stage and the stages it derives from (FROM <stage>), the root first."""
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain[::-1]


def _substitute(value: str, args: dict[str, str]) -> str:
    """``$NAME`` and ``${NAME}`` replaced by the ARGs' values (unknown: empty)."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), value)


def _copy_args(args: str) -> tuple[dict[str, str], list[str], str]:
    """COPY's options, sources and destination (shell or JSON form)."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    options = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
    paths = [w for w in words if not w.startswith("--")]
    return options, paths[:-1], paths[-1]


def _installs(stage: Stage) -> list[list[str]]:
    """Each ``pip install`` / ``uv pip install`` command of the stage's RUNs, as words.

    ``${WHEELHOUSE:+--no-index --find-links ...}`` expands to nothing without a wheelhouse,
    which is how the checks below read it.
    """
    out = []
    for keyword, args in stage.instructions:
        if keyword != "RUN":
            continue
        for part in re.sub(r"\$\{\w+:\+[^}]*\}", "", args).split("&&"):
            words = shlex.split(part)
            if any(
                w.rsplit("/", 1)[-1] in ("pip", "pip3") and words[i + 1 : i + 2] == ["install"]
                for i, w in enumerate(words)
            ):
                out.append(words)
    return out


_VALUED = {
    "--prefix",
    "--constraint",
    "-c",
    "--override",
    "--find-links",
    "-f",
    "--index-url",
    "-i",
    "--extra-index-url",
    "-r",
    "--requirement",
}


def _install_parts(words: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """An install command's options (with values) and the things it installs."""
    options: dict[str, list[str]] = {}
    packages: list[str] = []
    rest = words[words.index("install") + 1 :]
    i = 0
    while i < len(rest):
        word = rest[i]
        if word in _VALUED and i + 1 < len(rest):
            options.setdefault(word, []).append(rest[i + 1])
            i += 2
            continue
        if word.startswith("-"):
            name, _, value = word.partition("=")
            options.setdefault(name, []).append(value)
        else:
            packages.append(word)
        i += 1
    return options, packages


def _dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (re-include?, pattern), in order: Docker's syntax (``*``, ``?``, ``**``,
    a leading ``!``; a pattern that matches a folder matches everything in it)."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((include, re.compile(regex)))
    return rules


def _sent_to_the_build(path: str) -> bool:
    """Whether the build context holds ``path`` (relative to the repository), after
    .dockerignore: the last pattern that matches it or one of its folders decides."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    sent = True
    for include, regex in _dockerignore():
        if any(regex.fullmatch(p) for p in prefixes):
            sent = include
    return sent


# --- topology ---------------------------------------------------------------------------------


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
    assert gpu_cmd[:3] == ["airflow", "celery", "worker"]
    assert _flag(gpu_cmd, "--queues", "-q") == train_queue
    assert _flag(gpu_cmd, "--concurrency", "-c") == "1"
    # The gpu-worker image's own command (docker run without compose) says the same.
    image_cmd = [json.loads(a) for k, a in _stages()["gpu-worker"].instructions if k == "CMD"]
    assert image_cmd and _flag(image_cmd[-1], "--queues", "-q") == train_queue, image_cmd
    # The CPU worker serves the default queue, where every other task goes.
    cpu_cmd = [_interpolate(a, _env_example()) for a in _command(services["airflow-worker"])]
    assert cpu_cmd[:3] == ["airflow", "celery", "worker"]
    default_queue = services["airflow-worker"]["environment"]["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]
    assert _flag(cpu_cmd, "--queues", "-q") == default_queue
    assert train_queue not in (_flag(cpu_cmd, "--queues", "-q") or "").split(",")
    others = {t: q for t, q in queues.items() if t != "train"}
    assert all(q in (None, default_queue) for q in others.values()), others


def test_gpu_worker_gets_an_nvidia_gpu_and_the_locked_cuda_tensorflow() -> None:
    gpu = _compose()["services"]["airflow-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    stages = _stages()
    installs = [_install_parts(w) for w in _installs(stages["gpu-worker-venv"])]
    cuda = [p for _, packages in installs for p in packages if p.startswith("tensorflow[")]
    assert len(cuda) == 1, f"gpu-worker-venv installs TensorFlow {len(cuda)} times: {cuda}"
    req, _, version = cuda[0].partition("==")
    assert Requirement(req).extras == {"and-cuda"}, cuda[0]
    # The version is the lock's tensorflow-cpu, literally or read from the lock at build time.
    locked = _lock()["tensorflow-cpu"]
    read = re.fullmatch(r"\$\(sed -n 's/\^([A-Za-z0-9_.-]+)==//p' (\S+)\)", version)
    if read:
        assert (read.group(1), read.group(2)) == ("tensorflow-cpu", "/src/requirements.lock"), (
            f"{cuda[0]}: not the lock's tensorflow-cpu version"
        )
        assert LOCK.read_text().count("\ntensorflow-cpu==") == 1  # sed prints one version
    else:
        assert version == locked, f"{cuda[0]}: the lock has tensorflow-cpu=={locked}"
    # tensorflow-cpu (the project's dependency) is dropped, not installed beside it.
    ((options, _),) = [i for i in installs if any(p.startswith("tensorflow[") for p in i[1])]
    overrides = options.get("--override", [])
    assert len(overrides) == 1, options
    run = " ".join(a for k, a in stages["gpu-worker-venv"].instructions if k == "RUN")
    written = re.search(rf"echo '([^']*)' > {re.escape(overrides[0])}", run)
    assert written, f"{overrides[0]} is not written in gpu-worker-venv"
    dropped = Requirement(written.group(1))
    assert dropped.name == "tensorflow-cpu", f"{overrides[0]} overrides {dropped.name}"
    assert dropped.marker is not None and not dropped.marker.evaluate(), f"{dropped} is installed"


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
    # Every pipeline setting in .env.example reaches the Airflow containers; the ones only
    # `weather serve` reads need not.
    read_elsewhere = {s for cmd, names in cli.READS.items() if cmd != "serve" for s in names}
    serve_only = {config.env_name(s) for s in cli.READS["serve"]} - {
        config.env_name(s) for s in read_elsewhere
    }
    airflow = _airflow_services(services)
    assert airflow >= {"airflow-scheduler", "airflow-worker", "airflow-worker-gpu"}
    for name in airflow:
        env = services[name]["environment"]
        missing = example - serve_only - set(env)
        assert not missing, f"{name} misses {sorted(missing)}"


def test_the_endpoint_gets_every_setting_it_reads_from_env_example() -> None:
    """What `weather serve` reads (cli.READS) and a deployment sets in .env reaches it."""
    env = _compose()["services"]["weather-serve"]["environment"]
    reads = {config.env_name(s) for s in cli.READS["serve"]}
    missing = (reads & set(_env_example())) - set(env)
    assert not missing, f"weather-serve ignores these .env settings: {sorted(missing)}"


def test_env_example_values_are_valid_pipeline_config() -> None:
    fields = set(config.env_names())
    values = {k: v for k, v in _env_example().items() if k in fields}
    cfg = config.from_env(environ=values)
    assert cfg.classes == ("shine", "sunrise", "cloudy", "rain")
    assert cfg.registered_model == "weather-classifier"


def test_every_variable_has_a_value_in_env_example() -> None:
    example = _env_example()
    text = COMPOSE.read_text() + PUBLISH.read_text()
    used = {m.group(1) for m in _VAR.finditer(text.replace("$$", ""))}
    required = {m.group(1) for m in _VAR.finditer(text) if m.group(2) == ":?"}
    # Image names have working defaults; everything else is spelled out in .env.example.
    optional = {
        "MINIO_IMAGE",
        "MINIO_MC_IMAGE",
        "AIRFLOW_IMAGE_NAME",
        "MLFLOW_IMAGE_NAME",
        "GPU_WORKER_IMAGE_NAME",
    }
    assert "PUBLISH_ADDRESS" in used
    assert used - set(example) <= optional, sorted(used - set(example) - optional)
    assert all(example.get(name) for name in required), [n for n in required if not example.get(n)]


def test_s3_connection_and_mlflow_wiring() -> None:
    services = _compose()["services"]
    example = _env_example()

    def env_of(name: str) -> dict[str, str]:
        return {
            k: _interpolate(str(v), example)
            for k, v in services[name].get("environment", {}).items()
        }

    worker = env_of("airflow-worker")
    conn = json.loads(worker["AIRFLOW_CONN_WEATHER_S3"])
    assert conn["conn_type"] == "aws"
    assert conn["extra"]["endpoint_url"] == "http://minio:9000"
    assert conn["login"] == example["MINIO_ROOT_USER"]
    mlflow = env_of("mlflow")
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
    assert mlflow["MLFLOW_AUTH_DATABASE_URI"].startswith("postgresql")
    assert mlflow["MLFLOW_AUTH_DATABASE_URI"] != mlflow["MLFLOW_BACKEND_STORE_URI"]
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"] == f"s3://{example['MLFLOW_BUCKET']}/artifacts"
    assert mlflow["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert mlflow["MLFLOW_HOST"] == "0.0.0.0"  # reached by the other containers
    # Every client's tracking URI reaches this server, by a Host header it accepts (with
    # .env.example's list and with the built-in default).
    allowed_raw = services["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"]
    allowed = set(mlflow["MLFLOW_SERVER_ALLOWED_HOSTS"].split(","))
    allowed &= set(_interpolate(allowed_raw, {}).split(","))
    for name, key in [
        ("airflow-worker", "WEATHER_MLFLOW_TRACKING_URI"),
        ("airflow-worker-gpu", "WEATHER_MLFLOW_TRACKING_URI"),
        ("weather-serve", "WEATHER_MLFLOW_TRACKING_URI"),
        ("mlflow-init", "MLFLOW_TRACKING_URI"),
    ]:
        uri = env_of(name)[key]
        host_port = uri.split("://", 1)[1].rstrip("/")
        assert uri == f"http://mlflow:{mlflow['MLFLOW_PORT']}", (name, uri)
        assert host_port in allowed, (name, host_port, allowed)
    # The databases MLflow opens are the ones PostgreSQL's init script creates.
    init = "\n".join(p.read_text() for p in (REPO / "docker" / "postgres-init").glob("*.sh"))
    created = set(re.findall(r"CREATE DATABASE (\w+)", init))
    for key in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_DATABASE_URI"):
        assert mlflow[key].rsplit("/", 1)[1] in created, (key, created)
    # The entrypoint's required variables are set.
    entrypoint = (REPO / "docker" / "mlflow-entrypoint.sh").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", entrypoint))
    assert required and required <= set(mlflow), sorted(required - set(mlflow))
    buckets = " ".join(_command(services["minio-init"]))
    assert "WEATHER_BUCKET" in buckets and "MLFLOW_BUCKET" in buckets


def test_the_pipeline_writes_to_mlflow_and_the_endpoint_only_reads() -> None:
    """The Airflow services log in as the pipeline's account (MLflow's admin, created by the
    server), the endpoint as the read-only account (created by mlflow-init), never as the
    pipeline's."""
    services = _compose()["services"]
    mlflow_env = services["mlflow"]["environment"]
    pipeline = (mlflow_env["MLFLOW_AUTH_ADMIN_USERNAME"], mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"])
    assert _variables(pipeline[0]) == {"MLFLOW_PIPELINE_USER"}
    assert _variables(pipeline[1]) == {"MLFLOW_PIPELINE_PASSWORD"}
    for name in _airflow_services(services):
        env = services[name]["environment"]
        account = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
        assert account == pipeline, name
    init_env = services["mlflow-init"]["environment"]
    assert (init_env["MLFLOW_TRACKING_USERNAME"], init_env["MLFLOW_TRACKING_PASSWORD"]) == pipeline
    reader = (init_env["MLFLOW_READER_USERNAME"], init_env["MLFLOW_READER_PASSWORD"])
    assert _variables(reader[0]) == {"MLFLOW_READER_USER"}
    assert _variables(reader[1]) == {"MLFLOW_READER_PASSWORD"}
    serve = services["weather-serve"]
    assert (
        serve["environment"]["MLFLOW_TRACKING_USERNAME"],
        serve["environment"]["MLFLOW_TRACKING_PASSWORD"],
    ) == reader
    assert not {v for v in _variables(serve) if v.startswith("MLFLOW_PIPELINE_")}
    # Two accounts, with .env.example's names and with the built-in defaults.
    for env in (_env_example(), {}):
        assert _interpolate(reader[0], env) != _interpolate(pipeline[0], env)


def test_only_the_api_server_gets_the_airflow_admin_password() -> None:
    """The entrypoint writes the simple auth manager's password file where the password is set,
    for the user the auth manager's users list names."""
    services = _compose()["services"]
    holders = {
        n for n, s in services.items() if "AIRFLOW_ADMIN_PASSWORD" in (s.get("environment") or {})
    }
    assert holders == {"airflow-apiserver"}
    env = services["airflow-apiserver"]["environment"]
    users = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")
    assert any(u.startswith(env["AIRFLOW_ADMIN_USER"] + ":") for u in users), users


def test_nothing_is_published_but_on_the_publish_address() -> None:
    services = _compose()["services"]
    assert not {n for n, s in services.items() if "ports" in s}, "compose.yaml publishes a port"
    published = _publish()["services"]
    assert set(published) <= set(services), sorted(set(published) - set(services))
    assert _env_example()["PUBLISH_ADDRESS"] == "127.0.0.1"
    for name, service in published.items():
        assert set(service) == {"ports"}, f"{name}: compose.publish.yaml only publishes ports"
        for port in service["ports"]:
            if isinstance(port, dict):  # long syntax
                on_address = port.get("host_ip") == PUBLISH_ADDRESS
            else:
                on_address = (
                    re.fullmatch(rf"{re.escape(PUBLISH_ADDRESS)}:\d+:\d+(/tcp|/udp)?", str(port))
                    is not None
                )
            assert on_address, f"{name}: {port!r} is not on {PUBLISH_ADDRESS}"
    assert _interpolate(PUBLISH_ADDRESS, {}) == "127.0.0.1"


@pytest.mark.parametrize(
    ("service", "port"),
    [("airflow-apiserver", "8080"), ("mlflow", "5000"), ("weather-serve", "8000")],
)
def test_a_published_port_is_the_one_the_service_listens_on(service: str, port: str) -> None:
    compose = _compose()["services"][service]
    listens = _flag(_command(compose), "--port") or compose["environment"].get("MLFLOW_PORT")
    assert listens == port
    targets = [
        str(p).split("/")[0].rsplit(":", 1)[1] for p in _publish()["services"][service]["ports"]
    ]
    assert port in targets, targets


@pytest.mark.parametrize(
    "service", sorted(set(yaml.safe_load(COMPOSE.read_text())["services"]) - ONE_SHOT)
)
def test_a_long_running_service_has_a_health_check(service: str) -> None:
    check = _compose()["services"][service].get("healthcheck") or {}
    assert check.get("test") and not check.get("disable"), f"{service}: no healthcheck"
    assert check["test"] not in (["NONE"], "NONE")


@pytest.mark.parametrize("job", sorted(ONE_SHOT))
def test_a_one_shot_job_is_not_restarted_and_others_wait_for_it(job: str) -> None:
    services = _compose()["services"]
    assert str(services[job].get("restart")) == "no", job
    waiting = [
        n
        for n, s in services.items()
        if isinstance(s.get("depends_on"), dict)
        and (s["depends_on"].get(job) or {}).get("condition") == "service_completed_successfully"
    ]
    assert waiting, f"nothing waits for {job} to finish"


# --- images -----------------------------------------------------------------------------------


def test_each_build_names_the_dockerfile_and_a_target_it_defines() -> None:
    services = _compose()["services"]
    stages = _stages()
    builds = {n: s["build"] for n, s in services.items() if s.get("build")}
    assert {n: b.get("target") for n, b in builds.items()} == BUILDS
    declared = set(_global_args()) | {
        a.split("=")[0] for s in stages.values() for k, a in s.instructions if k == "ARG"
    }
    for name, build in builds.items():
        assert (COMPOSE.parent / build["context"]).resolve() == REPO, name
        assert build["dockerfile"] == "docker/Dockerfile", name
        assert build["target"] in stages, f"{name}: no stage {build['target']!r}"
        assert set(build.get("args") or {}) <= declared, (name, build.get("args"))
    # The default base image is the same everywhere it is spelled.
    base = builds["mlflow"]["args"]["BASE_IMAGE"]
    assert _interpolate(base, {}) == _global_args()["BASE_IMAGE"] == _env_example()["BASE_IMAGE"]


def test_every_service_runs_an_image_that_is_built_or_pulled() -> None:
    """A service that runs the project's image names one a build produces: the Airflow and
    `weather` commands the airflow (or gpu-worker) image, the account job the mlflow image."""
    services = _compose()["services"]
    built = {s["image"]: s["build"]["target"] for s in services.values() if s.get("build")}
    runs_in = {
        "airflow": {"airflow", "gpu-worker"},
        "weather": {"airflow"},
        "python": {"mlflow"},
    }  # the program a service starts -> images that have it
    for name, service in services.items():
        image = service["image"]
        if "weather-retrain/" not in image:
            assert not image.startswith("${") or ":-" in image, f"{name}: {image}"
            continue
        assert image in built, f"{name}: {image} is built by no service"
        if service.get("build"):
            continue  # runs its own image's entrypoint
        program = (service.get("entrypoint") or _command(service))[0]
        assert built[image] in runs_in[program], (
            f"{name} runs {program} in the {built[image]} image"
        )


def test_every_runtime_target_runs_as_a_non_root_user() -> None:
    stages = _stages()
    for target in RUNTIME_TARGETS:
        args = dict(_global_args())
        user = None
        for stage in _lineage(stages, target):
            for keyword, value in stage.instructions:
                if keyword == "ARG":
                    name, _, default = value.partition("=")
                    args[name] = default
                elif keyword == "USER":
                    user = _substitute(value, args)
        assert user, f"{target}: no USER, runs as root"
        assert user.split(":")[0] not in ("", "root", "0"), f"{target}: USER {user}"
    # Compose does not switch it back.
    for name, service in _compose()["services"].items():
        user = _interpolate(str(service.get("user", "")), _env_example())
        assert user.split(":")[0] not in ("root", "0"), f"{name}: user {user}"


def test_each_runtime_target_copies_its_own_venv() -> None:
    """Each runtime target's /opt/venv comes from its own ``<target>-venv`` stage (made in
    ``build``); the Airflow images lay the library (stage ``project``) over it."""
    stages = _stages()
    for target in RUNTIME_TARGETS:
        into_venv = [
            (_copy_args(a)[0].get("from"), _copy_args(a)[2].rstrip("/"))
            for s in _lineage(stages, target)
            for k, a in s.instructions
            if k == "COPY" and _copy_args(a)[2].startswith("/opt/venv")
        ]
        assert into_venv[0] == (f"{target}-venv", "/opt/venv"), (target, into_venv)
        assert all(src == "project" for src, _ in into_venv[1:]), (target, into_venv)
        assert _lineage(stages, f"{target}-venv")[0].name == "build"


def test_every_copy_source_exists_and_is_sent_to_the_build() -> None:
    stages = _stages()
    copied = 0
    for stage in stages.values():
        for keyword, args in stage.instructions:
            if keyword not in ("COPY", "ADD"):
                continue
            options, sources, _ = _copy_args(args)
            if "from" in options:
                assert options["from"] in stages, f"COPY --from={options['from']}: no stage"
                continue
            for src in sources:
                copied += 1
                assert (REPO / src).exists(), f"{stage.name}: COPY {src}: missing"
                assert _sent_to_the_build(src), f"{stage.name}: COPY {src}: in .dockerignore"
    assert copied >= 5


def test_the_package_is_whole_in_the_build_context() -> None:
    """The wheel built from /src needs the package's modules and data, pyproject's readme and
    license files: all copied into /src, none left out by .dockerignore."""
    project = tomllib.loads(PYPROJECT.read_text())
    needed = [
        "pyproject.toml",
        "requirements.lock",
        project["project"]["readme"],
        *project["project"].get("license-files", []),
    ]
    package_files = [
        p.relative_to(REPO).as_posix()
        for p in (REPO / "weather_tasks").rglob("*.py")
        if "__pycache__" not in p.parts
    ]
    for pattern in project["tool"]["setuptools"]["package-data"]["weather_tasks"]:
        package_files += [
            p.relative_to(REPO).as_posix()
            for p in (REPO / "weather_tasks").glob(pattern)
            if p.is_file()
        ]
    in_src: set[str] = set()
    stages = _stages()
    for keyword, args in [*stages["build"].instructions, *stages["project"].instructions]:
        if keyword == "COPY":
            _, sources, dest = _copy_args(args)
            if dest.rstrip("/") == "/src":
                in_src |= set(sources)
            elif dest.startswith("/src/"):
                in_src |= {s for s in sources if dest.rstrip("/") == f"/src/{s.rstrip('/')}"}
    not_copied = sorted({*needed, "weather_tasks"} - in_src)
    assert not not_copied, f"not copied into /src: {not_copied}"
    left_out = [f for f in [*needed, *package_files] if not _sent_to_the_build(f)]
    assert not left_out, f".dockerignore leaves out {left_out}"
    # ... and only that: no secrets, no checkout, no virtual environment.
    for path in (
        ".env",
        ".git/config",
        ".venv/bin/python",
        "tests/conftest.py",
        "weather_tasks/__pycache__/config.cpython-311.pyc",
    ):
        assert not _sent_to_the_build(path), f"{path} is sent to the build"


def test_an_entrypoint_copied_into_the_image_is_executable() -> None:
    stages = _stages()
    for target in RUNTIME_TARGETS:
        copies: dict[str, str] = {}
        entrypoint: list[str] = []
        for stage in _lineage(stages, target):
            for keyword, args in stage.instructions:
                if keyword == "COPY" and not args.startswith("--from"):
                    _, sources, dest = _copy_args(args)
                    for src in sources:  # into a folder when it ends with / or is many
                        into = dest.endswith("/") or len(sources) > 1
                        copies[f"{dest.rstrip('/')}/{Path(src).name}" if into else dest] = src
                elif keyword == "ENTRYPOINT":
                    entrypoint = json.loads(args)
        assert entrypoint, f"{target}: no ENTRYPOINT"
        program = next(
            (src for dest, src in copies.items() if dest.rsplit("/", 1)[1] == entrypoint[0]), None
        )
        assert program, f"{target}: ENTRYPOINT {entrypoint[0]} is not one of its COPYs"
        path = REPO / program
        assert path.stat().st_mode & 0o111, f"{program} is not executable"
        assert path.read_text().startswith("#!"), f"{program} has no #! line"


def test_every_install_uses_the_lock_as_constraints() -> None:
    """Every package install into /opt/venv goes through ``--constraint /src/requirements.lock``;
    the only other install is the installer itself, pinned exactly."""
    stages = _stages()
    constrained = 0
    for stage in stages.values():
        for words in _installs(stage):
            options, packages = _install_parts(words)
            if "/src/requirements.lock" in options.get("--constraint", []):
                constrained += 1
                continue
            if packages == ["/src"] and "--no-deps" in options:  # the library alone
                continue
            assert packages, f"{stage.name}: {' '.join(words)}"
            for package in packages:
                req = Requirement(package.replace("${UV_VERSION}", "0"))
                assert req.name == "uv" and str(req.specifier).startswith("=="), (
                    f"{stage.name}: {package} is installed without the lock"
                )
    assert constrained >= len(RUNTIME_TARGETS)
    assert _global_args().get("UV_VERSION") or any(
        a.startswith("UV_VERSION=") and a.split("=", 1)[1]
        for s in stages.values()
        for k, a in s.instructions
        if k == "ARG"
    )
    # The lock is at /src when the installs run.
    build_copies = [_copy_args(a) for k, a in stages["build"].instructions if k == "COPY"]
    assert any(
        "requirements.lock" in src and dest.rstrip("/") == "/src" for _, src, dest in build_copies
    )


def test_the_mlflow_image_installs_the_mlflow_server_extra() -> None:
    """The same packages and extras as pyproject's ``mlflow-server``; their versions come from
    the lock, which must satisfy the extra's pins."""
    extra = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    wanted = [Requirement(r) for r in extra["mlflow-server"]]
    installed = [
        Requirement(p)
        for words in _installs(_stages()["mlflow-venv"])
        for p in _install_parts(words)[1]
    ]
    assert installed, "mlflow-venv installs nothing"

    def key(r: Requirement) -> tuple[str, frozenset[str]]:
        return canonicalize_name(r.name), frozenset(r.extras)

    assert sorted(map(key, installed)) == sorted(map(key, wanted)), (
        f"mlflow-venv installs {sorted(map(str, installed))}, the extra is {extra['mlflow-server']}"
    )
    assert not [str(r) for r in installed if r.specifier], "pins belong in the lock"
    lock = _lock()
    for r in wanted:
        version = lock[canonicalize_name(r.name)]
        assert r.specifier.contains(version, prereleases=True), (str(r), version)


# --- docker-compose renders -------------------------------------------------------------------


@pytest.fixture
def docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.skip("docker-compose not installed (Debian package docker-compose)")
    return path


def _render(
    docker_compose: str, env_file: Path, *files: Path, environ: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    args = [docker_compose, "--env-file", str(env_file)]
    for path in files:
        args += ["-f", str(path)]
    return subprocess.run(
        [*args, "config"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", **(environ or {})},
    )


def test_docker_compose_renders_the_files(docker_compose: str, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    out = _render(docker_compose, env_file, COMPOSE, PUBLISH)
    assert out.returncode == 0, out.stderr
    rendered = yaml.safe_load(out.stdout)["services"]
    assert SERVICES <= set(rendered)
    gpu = rendered["airflow-worker-gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    for name, target in BUILDS.items():
        assert rendered[name]["build"]["target"] == target
        assert Path(rendered[name]["build"]["context"]) == REPO
    ports = {n: s["ports"] for n, s in rendered.items() if s.get("ports")}
    assert set(ports) == set(_publish()["services"])
    for name, service_ports in ports.items():
        for port in service_ports:
            host_ip = port["host_ip"] if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", (name, port)


def test_docker_compose_refuses_a_missing_secret(docker_compose: str, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    lines = [
        ln
        for ln in ENV_EXAMPLE.read_text().splitlines()
        if not ln.startswith("MINIO_ROOT_PASSWORD=")
    ]
    env_file.write_text("\n".join(lines) + "\n")
    out = _render(docker_compose, env_file, COMPOSE, PUBLISH)
    assert out.returncode != 0
    assert "set in .env" in out.stderr


PLATFORM = {
    "PLATFORM_DB_PREFIX": "t1_",
    "PLATFORM_REDIS_DB": "3",
    "PLATFORM_S3_URL": "http://127.0.0.1:39000",
    "PLATFORM_AIRFLOW_PORT": "38080",
    "PLATFORM_MLFLOW_PORT": "35000",
    "PLATFORM_SERVE_PORT": "38000",
    "PLATFORM_SCHEDULER_HEALTH_PORT": "38974",
    "MLFLOW_IMAGE_NAME": "weather-retrain/mlflow:ci",
}


def test_ci_override_runs_everything_on_the_host_network_at_127_0_0_1(
    docker_compose: str,
    tmp_path: Path,
) -> None:
    """CI's override: every service on the host's network, none published, and no service it
    starts still reaches another by its compose name (there is no compose DNS there)."""
    env_file = tmp_path / "env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    out = _render(docker_compose, env_file, COMPOSE, CI_OVERRIDE, environ=PLATFORM)
    assert out.returncode == 0, out.stderr
    rendered = yaml.safe_load(out.stdout)["services"]
    started = {n for n, s in rendered.items() if not s.get("profiles")} - NOT_STARTED_IN_CI
    assert SERVICES - NOT_STARTED_IN_CI <= started
    override = set(yaml.safe_load(CI_OVERRIDE.read_text())["services"])
    assert override >= started | NOT_STARTED_IN_CI
    for name in override:
        assert rendered[name].get("network_mode") == "host", f"{name}: not on the host network"
    assert not {n for n, s in rendered.items() if s.get("ports")}
    names = set(rendered)
    for name in started:
        service = rendered[name]
        parts = {
            "environment": service.get("environment"),
            "command": service.get("command"),
            "entrypoint": service.get("entrypoint"),
            "healthcheck": (service.get("healthcheck") or {}).get("test"),
        }
        for part, value in parts.items():
            text = json.dumps(value)
            hosts = {m.group(2) for m in _URL.finditer(text) if m.group(1) not in NOT_A_HOST}
            assert not hosts & names, f"{name} {part}: URL to {sorted(hosts & names)}"
            # On the host's network 0.0.0.0 would listen on every interface of the CI machine.
            assert "0.0.0.0" not in text, f"{name} {part} listens on 0.0.0.0"
    # The ports the test picked are where the services listen and where clients go.
    mlflow_port = rendered["mlflow"]["environment"]["MLFLOW_PORT"]
    assert str(mlflow_port) == PLATFORM["PLATFORM_MLFLOW_PORT"]
    api = rendered["airflow-apiserver"]
    assert _flag(api["command"], "--port") == PLATFORM["PLATFORM_AIRFLOW_PORT"]
    for name in started & _airflow_services(rendered):
        env = rendered[name]["environment"]
        assert env["WEATHER_MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{mlflow_port}", name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith(
            f"http://127.0.0.1:{PLATFORM['PLATFORM_AIRFLOW_PORT']}/"
        ), name
