"""The Airflow 3 plugin: a model-history page in the UI and an "MLflow run" task link.

- ``fastapi_apps``: the page's FastAPI app, mounted by the API server at ``/weather-models``.
  Airflow does not authenticate a plugin's app (a mount inherits none of the core API's
  dependencies), so every route here requires Airflow's login itself: the UI's session cookie
  (what the page's iframe sends) or a bearer token from ``/auth/token``; anonymous: 401.
- ``external_views``: the nav entry (Browse > Weather models) that shows that page inside the
  Airflow UI (an iframe at ``/plugin/weather-models``).
- ``operator_extra_links``: "MLflow run" on the train/evaluate/promote task instances.

No ML logic here: the page reads the registry and the evaluated runs, the link reads XCom.
"""

from __future__ import annotations

from airflow.api_fastapi.core_api.security import requires_authenticated
from airflow.plugins_manager import AirflowPlugin
from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from fastapi import Depends
from weather_ui.app import create_app
from weather_ui.links import MlflowRunLink

URL_PREFIX = "/weather-models"


class _DecoratedTaskRunLink(MlflowRunLink):
    # The DAG's tasks are @task functions: link that operator class (matched by name and
    # module when the API server deserializes the DAG).
    operators = [_PythonDecoratedOperator]


class WeatherPlugin(AirflowPlugin):
    name = "weather"
    fastapi_apps = [
        {
            "app": create_app(dependencies=[Depends(requires_authenticated())]),
            "url_prefix": URL_PREFIX,
            "name": "Weather model history",
        }
    ]
    external_views = [
        {
            "name": "Weather models",
            "href": f"{URL_PREFIX}/",
            "url_route": "weather-models",
            "destination": "nav",
            "category": "browse",
        }
    ]
    operator_extra_links = [_DecoratedTaskRunLink()]
