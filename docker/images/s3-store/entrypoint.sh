#!/bin/sh
# MinIO's interface as far as prodg uses it: S3 on port 9000, the root user's keys, objects under /data. MinIO's own
# arguments (`server /data --console-address …`) are accepted and ignored.
set -eu
: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is not set}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is not set}"
mkdir -p /data
exec /usr/local/bin/s3s-fs --host 0.0.0.0 --port 9000 --access-key "$MINIO_ROOT_USER" \
  --secret-key "$MINIO_ROOT_PASSWORD" /data
