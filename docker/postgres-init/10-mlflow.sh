#!/bin/bash
# Runs once, when the PostgreSQL volume is first initialised: MLflow's role, its tracking
# database and its accounts database (basic-auth app) next to Airflow's (POSTGRES_DB).
# Password from MLFLOW_DB_PASSWORD (see .env.example).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<-SQL
    CREATE ROLE mlflow LOGIN PASSWORD '${MLFLOW_DB_PASSWORD}';
    CREATE DATABASE mlflow OWNER mlflow;
    CREATE DATABASE mlflow_auth OWNER mlflow;
SQL
