"""One-shot job of the mlflow image: the read-only account that serving uses.

Run once the server is healthy, as the pipeline (admin) account (MLFLOW_TRACKING_URI,
MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD). Creates MLFLOW_READER_USERNAME with
MLFLOW_READER_PASSWORD unless it exists; it gets the server's default permission, READ.
"""

import os
import sys

from mlflow.exceptions import RestException
from mlflow.server.auth.client import AuthServiceClient

client = AuthServiceClient(os.environ["MLFLOW_TRACKING_URI"])
name = os.environ["MLFLOW_READER_USERNAME"]
try:
    client.create_user(name, os.environ["MLFLOW_READER_PASSWORD"])
    print(f"mlflow-accounts: created the read-only account {name!r}")
except RestException as exc:
    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
        sys.exit(f"mlflow-accounts: could not create {name!r}: {exc}")
    print(f"mlflow-accounts: the read-only account {name!r} exists")
