#!/usr/bin/env bash
# Entrypoint of the Airflow images: runs the command it is given (`airflow scheduler`,
# `weather serve`, ...). Where AIRFLOW_ADMIN_PASSWORD is set (the api-server only), it first
# writes the simple auth manager's password file for AIRFLOW_ADMIN_USER, readable by this user
# alone, and removes the password from the environment the command inherits.
set -euo pipefail
if [ -n "${AIRFLOW_ADMIN_PASSWORD:-}" ]; then
    file="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-${AIRFLOW_HOME}/simple_auth_manager_passwords.json}"
    (umask 077 && python -c 'import json, os, sys
json.dump({os.environ["AIRFLOW_ADMIN_USER"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, open(sys.argv[1], "w"))' "$file")
    export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$file"
    unset AIRFLOW_ADMIN_PASSWORD
fi
exec "$@"
