"""Airflow UI glue for the weather pipeline: the model-history page and the MLflow run link."""
