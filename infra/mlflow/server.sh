#!/usr/bin/env bash
# The MLflow tracking server of a cluster: runs, params and the model registry in a database, artifacts (model
# directories, audio examples) in S3, proxied by the server so that clients need no bucket credentials.
#
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:PASSWORD@DB:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://BUCKET/mlflow \
#   MLFLOW_HOST=0.0.0.0 MLFLOW_ALLOWED_HOSTS=mlflow.internal:5000 infra/mlflow/server.sh
#
# Every hires command then takes --tracking-uri http://mlflow.internal:5000 (runs log their artifacts as
# mlflow-artifacts:/..., which the server writes under MLFLOW_ARTIFACTS_DESTINATION).
#
# Environment (the server's host needs `pip install -r infra/mlflow/requirements.txt`):
#   MLFLOW_BACKEND_STORE_URI      required: an SQLAlchemy URL (postgresql://, mysql+pymysql://, sqlite:///PATH.db
#                                 for a single-host trial); the server creates and migrates its tables
#   MLFLOW_ARTIFACTS_DESTINATION  required: s3://BUCKET/PREFIX (credentials and region from the usual AWS variables
#                                 or the instance role; MLFLOW_S3_ENDPOINT_URL for MinIO or another S3 API)
#   MLFLOW_HOST (127.0.0.1), MLFLOW_PORT (5000), MLFLOW_WORKERS (4)
#   MLFLOW_ALLOWED_HOSTS          the Host headers clients use (MLflow 3 refuses others once not on localhost)
# Extra arguments are passed to `mlflow server`.
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI to the database URL (e.g. postgresql://...)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION to s3://BUCKET/PREFIX}"
case "$MLFLOW_ARTIFACTS_DESTINATION" in
  s3://*) ;;
  *) echo "server.sh: MLFLOW_ARTIFACTS_DESTINATION=$MLFLOW_ARTIFACTS_DESTINATION is not an s3:// URI" >&2; exit 2 ;;
esac

args=(
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI"
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"
  --serve-artifacts
  --host "${MLFLOW_HOST:-127.0.0.1}"
  --port "${MLFLOW_PORT:-5000}"
  --workers "${MLFLOW_WORKERS:-4}"
)
if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then
  args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi
exec mlflow server "${args[@]}" "$@"
