"""weather-retrain: the pipeline's library. Pure Python; never imports Airflow.

One module per stage: ingest (with validate, label, split), data, train (around the Keras
recipe in recipe and models), evaluate (metrics and policy are its pure core), registry and
serving; the MLflow contract in tracking; one config object (config) and one CLI (cli).
Development tooling (the demo, local services) lives in the unshipped ``devtools`` package.
"""

__version__ = "0.1.0"
