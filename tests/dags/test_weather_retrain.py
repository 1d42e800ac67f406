"""DAG integrity: the DAG files parse cleanly, cheaply, and say what the issue asks for."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest

from tests.support import DAGS, REPO
from tests.support.dags import load_dag_file
from weather_tasks import config
from weather_tasks.config import ConfigError

EXPECTED_UPSTREAM = {
    "ingest": set(),
    "anything_new": {"ingest"},
    "screen": {"ingest", "anything_new"},
    "train": {"screen"},
    "evaluate": {"train"},
    "promote": {"evaluate", "screen"},
    "report": {"promote"},
}
IO_TASKS = ("ingest", "screen", "evaluate", "promote")




@pytest.fixture(scope="module")
def dag(dagbag: Any) -> Any:
    return dagbag.dags["weather_retrain"]


def test_dagbag_imports_without_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert {"weather_retrain", "weather_champion_consumer"} <= set(dagbag.dags)


def test_parsing_opens_no_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow's own guard: a DAG file must not fetch connections at parse time."""
    from airflow.sdk import BaseHook

    with mock.patch.object(BaseHook, "get_connection") as get_connection:
        for path in sorted(DAGS.glob("*.py")):
            load_dag_file(path, monkeypatch)
    get_connection.assert_not_called()


def test_parsing_imports_no_heavy_library() -> None:
    """TensorFlow, Keras and MLflow are imported inside tasks, never when the file is parsed."""
    code = (
        "import runpy, sys, json\n"
        f"sys.path.insert(0, {str(DAGS)!r})\n"
        f"for f in {[str(p) for p in sorted(DAGS.glob('*.py'))]!r}:\n"
        "    runpy.run_path(f)\n"
        "heavy = ('tensorflow', 'keras', 'mlflow', 'sklearn', 'matplotlib')\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_task_graph(dag: Any) -> None:
    assert {t.task_id: set(t.upstream_task_ids) for t in dag.tasks} == EXPECTED_UPSTREAM


def test_dag_settings(dag: Any) -> None:
    assert dag.timetable.expression == "0 2 * * *"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert {"weather", "ml"} <= set(dag.tags)
    assert dag.owner == "ml-platform"
    assert "weather_retrain.py" in (dag.doc_md or "") and len(dag.doc_md) > 200


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("30 3 * * 1-5", "30 3 * * 1-5"), ("none", None), ("manual", None), ("", "0 2 * * *")],
)
def test_schedule_comes_from_env(monkeypatch: pytest.MonkeyPatch, raw: str, expected: Any) -> None:
    module = load_dag_file(DAGS / "weather_retrain.py", monkeypatch, WEATHER_SCHEDULE=raw)
    dag = module.weather_retrain_dag
    if expected is None:
        assert dag.schedule is None
    else:
        assert dag.timetable.expression == expected


def test_io_tasks_retry_with_exponential_backoff(dag: Any) -> None:
    for task_id in IO_TASKS:
        task = dag.get_task(task_id)
        assert task.retries >= 2, task_id
        assert task.retry_exponential_backoff, task_id
        assert task.max_retry_delay and task.max_retry_delay <= timedelta(hours=1), task_id


def test_training_runs_on_the_gpu_queue_with_a_timeout(dag: Any) -> None:
    train = dag.get_task("train")
    assert train.queue == "gpu"
    assert train.execution_timeout is not None and train.execution_timeout >= timedelta(hours=1)
    others = [t.queue for t in dag.tasks if t.task_id != "train"]
    assert "gpu" not in others


def test_failed_training_ends_its_mlflow_runs(dag: Any) -> None:
    """A killed training cannot end its MLflow run: the task's failure callback does."""
    callbacks = dag.get_task("train").on_failure_callback
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    assert [c.__name__ for c in callbacks] == ["_end_abandoned_training"]


def test_failure_callback_reaches_mlflow_for_its_airflow_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The callback builds the run's config from its params and asks the configured tracking
    server (here, where nothing listens) for that run's runs: one transient line naming it."""
    from devtools.local_services import free_port
    from weather_tasks.tracking import TrackingError

    uri = f"http://127.0.0.1:{free_port()}"
    module = load_dag_file(
        DAGS / "weather_retrain.py",
        monkeypatch,
        WEATHER_MLFLOW_TRACKING_URI=uri,
        WEATHER_MLFLOW_HTTP_RETRIES="0",
    )
    with pytest.raises(TrackingError, match=f"{uri}: cannot connect") as caught:
        module._end_abandoned_training({"params": {"epochs": 3}, "run_id": "manual__x"})
    assert caught.value.transient and "\n" not in str(caught.value)


def test_report_runs_on_nothing_new_nights(dag: Any) -> None:
    """The short-circuit skips training but not the report (its trigger rule lets it run)."""
    assert dag.get_task("report").trigger_rule == "none_failed"
    short = dag.get_task("anything_new")
    assert short.ignore_downstream_trigger_rules is False


@pytest.mark.parametrize(
    ("accepted", "requarantined", "force", "expected"),
    [(0, 0, False, False), (0, 0, True, True), (3, 0, False, True), (1, 0, True, True),
     (0, 2, False, True)],  # content taken out of the dataset by a label conflict: retrain
)
def test_short_circuit_rule(
    dag: Any, accepted: int, requarantined: int, force: bool, expected: bool
) -> None:
    decide = dag.get_task("anything_new").python_callable
    ingested = {"accepted": accepted, "requarantined": requarantined}
    assert decide(ingested, params={"force_retrain": force}) is expected


# --- params ---------------------------------------------------------------------------------


def _validated(dag: Any, **conf: Any) -> dict[str, Any]:
    """What a trigger with ``conf`` does to the params (``create_dagrun`` validates the same)."""
    params = copy.deepcopy(dag.params)
    params.update(conf)
    params.validate()
    return params.dump()


@pytest.mark.parametrize(
    "conf",
    [
        {},
        {"force_retrain": True},
        {"epochs": 1, "batch_size": 8, "image_size": 64, "model": "model_1", "min_delta": 0.01},
        {"model": "model_3", "min_delta": -0.05},
        {"epochs": None, "model": None},
    ],
)
def test_valid_params(dag: Any, conf: dict[str, Any]) -> None:
    assert _validated(dag, **conf) == {**dag.params.dump(), **conf}


@pytest.mark.parametrize(
    ("conf", "name"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": "ten"}, "epochs"),
        ({"batch_size": 5000}, "batch_size"),
        ({"image_size": 8}, "image_size"),
        ({"model": "model_4"}, "model"),
        ({"min_delta": 2}, "min_delta"),
        ({"force_retrain": "yes"}, "force_retrain"),
    ],
)
def test_invalid_params_name_the_param(dag: Any, conf: dict[str, Any], name: str) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match=rf"param {name}\b"):
        _validated(dag, **conf)


def test_params_are_exactly_the_per_run_settings(dag: Any) -> None:
    """Generated from the config's declarations: the trigger form never offers deployment
    settings (storage, tracking), only what a run may change."""
    assert set(dag.params.keys()) == set(config.per_run_settings())
    assert {"epochs", "batch_size", "image_size", "model", "min_delta", "force_retrain"} <= set(
        dag.params.keys()
    )
    for deployment in ("bucket", "s3_endpoint_url", "mlflow_tracking_uri", "registered_model"):
        assert deployment not in dag.params.keys()


@pytest.mark.parametrize(
    "name",
    [n for n, (_, kind) in config.per_run_settings().items() if kind in (int, float)],
)
def test_param_bounds_agree_with_the_config(dag: Any, name: str) -> None:
    """What the trigger form accepts, PipelineConfig accepts, and the edges agree."""
    schema = dag.params.get_param(name).schema
    low, high = schema["minimum"], schema["maximum"]
    step = 1 if "integer" in schema["type"] else 0.001
    base = config.from_env(environ={})
    for ok in (low, high):
        assert getattr(config.override(base, **{name: ok}), name) == ok
    for bad in (low - step, high + step):
        with pytest.raises(ConfigError, match=name):
            config.override(base, **{name: bad})


def test_model_param_lists_the_configs_models(dag: Any) -> None:
    assert [m for m in dag.params.get_param("model").schema["enum"] if m] == list(config.MODELS)


def test_run_config_applies_params_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_dag_file(
        DAGS / "weather_retrain.py", monkeypatch, WEATHER_EPOCHS="7", WEATHER_MODEL="model_2"
    )
    cfg = module.run_config({"epochs": 3, "model": None, "force_retrain": True})
    assert (cfg.epochs, cfg.model) == (3, "model_2")
    # Types the JSON schema lets through (2.0 is an "integer") still meet PipelineConfig's check.
    with pytest.raises(ConfigError, match="epochs"):
        module.run_config({"epochs": 2.0})


def test_cross_field_rule_fails_the_first_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """model_2 at 64 px passes every param's own check; the run's config refuses it at once
    (ingest fails fast) instead of inside train after an MLflow run is open."""
    module = load_dag_file(DAGS / "weather_retrain.py", monkeypatch)
    with pytest.raises(ConfigError, match="WEATHER_IMAGE_SIZE.*model_2.*96"):
        module.run_config({"model": "model_2", "image_size": 64})


@pytest.mark.parametrize(("env", "param", "forced"),
                         [("", False, False), ("true", False, True), ("", True, True)])
def test_force_retrain_from_env_or_param(
    dag: Any, monkeypatch: pytest.MonkeyPatch, env: str, param: bool, forced: bool
) -> None:
    """A switch left off in the form keeps the deployment's WEATHER_FORCE_RETRAIN."""
    monkeypatch.setenv("WEATHER_FORCE_RETRAIN", env)
    decide = dag.get_task("anything_new").python_callable
    assert decide({"accepted": 0, "requarantined": 0}, params={"force_retrain": param}) is forced


def test_run_config_points_the_task_process_at_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_dag_file(DAGS / "weather_retrain.py", monkeypatch,
                   WEATHER_MLFLOW_TRACKING_URI="http://mlflow.example:5000")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    module.run_config({})
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000"


# --- the champion Asset ---------------------------------------------------------------------


def test_promote_emits_the_champion_through_an_alias(dag: Any, dagbag: Any) -> None:
    from airflow.sdk import AssetAlias

    (alias,) = dag.get_task("promote").outlets
    assert isinstance(alias, AssetAlias)
    consumer = dagbag.dags["weather_champion_consumer"]
    module = load_dag_file(DAGS / "weather_retrain.py", pytest.MonkeyPatch())
    assert module.CHAMPION_UPDATES == alias
    assert module.CHAMPION.name == "weather-classifier-champion"
    scheduled_on = consumer.timetable.asset_condition.objects
    assert [(a.name, a.uri) for a in scheduled_on] == [(module.CHAMPION.name, module.CHAMPION.uri)]


def test_empty_registered_model_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """compose passes unset settings as "": the Asset name must not become "-champion"."""
    for path in (DAGS / "weather_retrain.py", DAGS / "weather_champion_consumer.py"):
        module = load_dag_file(path, monkeypatch, WEATHER_REGISTERED_MODEL="")
        assert module.CHAMPION.name == "weather-classifier-champion"


def test_champion_event_metadata() -> None:
    module = load_dag_file(DAGS / "weather_retrain.py", pytest.MonkeyPatch())
    extra = module._champion_event(
        {"promoted": True, "status": "promoted", "version": "4", "registered_model": "wc",
         "accuracy": 0.91, "manifest_version": "v000003", "run_id": "abc"}
    )
    assert extra["version"] == "4"
    assert extra["model_uri"] == "models:/wc/4"
    assert (extra["accuracy"], extra["manifest_version"]) == (0.91, "v000003")


# --- the library stays Airflow-free ---------------------------------------------------------


def test_weather_tasks_never_imports_airflow() -> None:
    code = (
        "import importlib, pkgutil, sys, json\n"
        "import weather_tasks\n"
        "pkgs = pkgutil.walk_packages(weather_tasks.__path__, 'weather_tasks.')\n"
        "names = [m.name for m in pkgs]\n"
        "for n in names:\n"
        "    importlib.import_module(n)\n"
        "bad = sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.'))\n"
        "print(json.dumps({'modules': names, 'airflow': bad}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "weather_tasks.config" in result["modules"] and len(result["modules"]) >= 5
    assert result["airflow"] == []


# --- failure semantics: retry what is transient, fail fast on the rest -----------------------


def _raised_through_the_task_guard(exc: BaseException) -> BaseException:
    module = load_dag_file(DAGS / "weather_retrain.py", pytest.MonkeyPatch())
    with pytest.raises(BaseException) as caught, module._fail_fast_on_permanent_errors():
        raise exc
    return caught.value


def _client_error(code: str, status: int, operation: str) -> Any:
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )


def _permanent() -> list[BaseException]:
    from botocore.exceptions import NoCredentialsError

    from weather_tasks.config import PipelineError

    return [
        ConfigError("WEATHER_BUCKET (bucket) is set but empty"),
        PipelineError("manifest v000009 does not exist"),
        _client_error("NoSuchBucket", 404, "ListObjectsV2"),
        _client_error("AccessDenied", 403, "GetObject"),
        NoCredentialsError(),
    ]


def _transient() -> list[BaseException]:
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    from weather_tasks.config import PipelineError

    return [
        PipelineError("the server restarted", transient=True),
        _client_error("SlowDown", 503, "GetObject"),
        _client_error("503", 503, "HeadObject"),
        EndpointConnectionError(endpoint_url="http://minio:9000/weather"),
        ReadTimeoutError(endpoint_url="http://minio:9000/weather"),
    ]


@pytest.mark.parametrize("index", range(5))
def test_permanent_failures_fail_the_task_without_retries(index: int) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    exc = _permanent()[index]
    raised = _raised_through_the_task_guard(exc)
    assert isinstance(raised, AirflowFailException), raised
    assert "\n" not in str(raised)


@pytest.mark.parametrize("index", range(5))
def test_transient_failures_are_left_to_airflows_retries(index: int) -> None:
    """Re-raised as one-line PipelineErrors, not AirflowFailException: the task's retries
    (exponential backoff) apply."""
    from airflow.sdk.exceptions import AirflowFailException

    from weather_tasks.config import PipelineError

    raised = _raised_through_the_task_guard(_transient()[index])
    assert not isinstance(raised, AirflowFailException)
    assert isinstance(raised, PipelineError) and raised.transient
    assert "\n" not in str(raised)


def test_screen_runs_before_training_on_the_default_queue(dag: Any) -> None:
    """Screening embeds with the champion (TensorFlow inside the task), but on a CPU worker:
    it must not take the GPU queue's slot; it has a timeout like the other long IO tasks."""
    screen = dag.get_task("screen")
    assert screen.queue != "gpu"
    assert screen.execution_timeout is not None
    assert dag.get_task("train").upstream_task_ids == {"screen"}
