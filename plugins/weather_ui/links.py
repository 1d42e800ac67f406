"""Operator extra link: from a train/evaluate/promote task instance to its MLflow run page.

Airflow 3 resolves plugin links in the API server (not on the worker), so ``get_link`` reads
the task's XCom from the metadata database: the MLflow run id is in the task's own return
value (``run_id``) or, for tasks that do not return one, in the ``train`` task's of the same
DAG run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from airflow.sdk import BaseOperatorLink

from weather_ui.history import RUN_ID

LINKED_TASKS = ("train", "evaluate", "promote")
_RUN_ID_KEYS = ("run_id", "mlflow_run_id", "challenger_run_id")


class MlflowRunLink(BaseOperatorLink):
    """The "MLflow run" button on the train, evaluate and promote task instances."""

    name = "MLflow run"

    # Which operator classes get the link; @task tasks are _PythonDecoratedOperator. Filled
    # in by the plugin file so this module imports without the standard provider.
    operators: list[type] = []

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        if operator.task_id not in LINKED_TASKS:
            return ""
        run_id = None
        for task_id in dict.fromkeys((operator.task_id, "train")):
            run_id = find_run_id(_xcom_return(ti_key.dag_id, ti_key.run_id, task_id))
            if run_id:
                break
        return mlflow_run_url(run_id) if run_id else ""


def mlflow_run_url(run_id: str) -> str:
    """The MLflow UI page of a run (the UI resolves the experiment from the run id)."""
    from weather_tasks import config, tracking

    return tracking.run_url(config.from_env(), run_id)


def find_run_id(value: Any) -> str | None:
    """The first MLflow run id under a known key anywhere in an XCom value."""
    for key, item in _walk(value):
        if key in _RUN_ID_KEYS and isinstance(item, str) and RUN_ID.match(item):
            return item
    return None


def _walk(value: Any) -> Iterator[tuple[str | None, Any]]:
    if isinstance(value, str) and value[:1] in "{[":
        try:
            value = json.loads(value)
        except ValueError:
            return
    if isinstance(value, dict):
        for k, v in value.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _walk(v)


def _xcom_return(dag_id: str, dag_run_id: str, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.execute(
            XComModel.get_many(
                key="return_value", run_id=dag_run_id, dag_ids=dag_id, task_ids=task_id
            ).with_only_columns(XComModel.value)
        ).first()
    return None if row is None else row[0]
