#!/bin/bash
# Runs once, when the PostgreSQL volume is first initialised: a database and role for MLflow
# next to Airflow's (POSTGRES_DB). Password from MLFLOW_DB_PASSWORD (see .env.example).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<-SQL
    CREATE ROLE mlflow LOGIN PASSWORD '${MLFLOW_DB_PASSWORD}';
    CREATE DATABASE mlflow OWNER mlflow;
SQL
