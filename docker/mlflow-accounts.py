"""One-shot job of the mlflow image: the read-only account that serving uses, and the
registered model it reads.

Run once the server is healthy, as the pipeline (admin) account (MLFLOW_TRACKING_URI,
MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD). Creates MLFLOW_READER_USERNAME with
MLFLOW_READER_PASSWORD unless it exists; it gets the server's default permission, READ.
Creates the registered model WEATHER_REGISTERED_MODEL (empty) unless it exists: MLflow's auth
refuses a non-admin account any read of a model that does not exist (403, not 404), so without
it the endpoint could not even ask for @champion before the first night.
"""

import os
import sys

from mlflow import MlflowClient
from mlflow.exceptions import RestException
from mlflow.server.auth.client import AuthServiceClient

uri = os.environ["MLFLOW_TRACKING_URI"]
name = os.environ["MLFLOW_READER_USERNAME"]
try:
    AuthServiceClient(uri).create_user(name, os.environ["MLFLOW_READER_PASSWORD"])
    print(f"mlflow-accounts: created the read-only account {name!r}")
except RestException as exc:
    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
        sys.exit(f"mlflow-accounts: could not create {name!r}: {exc}")
    print(f"mlflow-accounts: the read-only account {name!r} exists")

model = os.environ["WEATHER_REGISTERED_MODEL"]
try:
    MlflowClient(uri).create_registered_model(
        model, description="Weather photo classifier; versions registered by weather_retrain."
    )
    print(f"mlflow-accounts: created the registered model {model!r}")
except RestException as exc:
    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
        sys.exit(f"mlflow-accounts: could not create the registered model {model!r}: {exc}")
    print(f"mlflow-accounts: the registered model {model!r} exists")
