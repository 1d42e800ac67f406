#!/usr/bin/env bash
# Entrypoint of the mlflow image: `mlflow server` behind MLflow's basic-auth app. Every request
# but /health needs an account. Every account reads everything (default_permission READ); what
# the pipeline's account (the admin) made, its runs, its registered model and the @champion
# alias, only it may change. (Another account may still create experiments and models of its
# own: MLflow's READ does not forbid that.)
#   MLFLOW_AUTH_DATABASE_URI     where accounts live (its own database, not the tracking one)
#   MLFLOW_AUTH_ADMIN_USERNAME   the pipeline's account, created on the first start with
#   MLFLOW_AUTH_ADMIN_PASSWORD   this password (ignored once the account exists)
#   MLFLOW_AUTH_CACHE_SECONDS    how long a checked password is trusted (default 60; 0: check
#                                every request). A password check is a deliberately slow hash:
#                                without the cache, the endpoint's alias polls and the tasks'
#                                calls kept half a core busy on 2 cores.
# Further arguments go to `mlflow server`.
set -euo pipefail
: "${MLFLOW_AUTH_DATABASE_URI:?set the accounts database URL}"
: "${MLFLOW_AUTH_ADMIN_USERNAME:?set the pipeline account name}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set the pipeline account password}"
export MLFLOW_AUTH_CONFIG_PATH="${HOME}/basic_auth.ini"
(umask 077 && cat > "${MLFLOW_AUTH_CONFIG_PATH}" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_SECONDS:-60}
INI
)
exec mlflow server --app-name basic-auth "$@"
