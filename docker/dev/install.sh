#!/usr/bin/env bash
# Installs what prodg needs on a fresh machine of this kind, idempotently: Debian packages, the venv, the locally
# built images. Sourced by docker/dev/up (the main job) and .ci/run (the tests).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"

if ! docker info >/dev/null 2>&1; then
  echo "prodg: the Docker Engine does not answer (docker info failed); it is required, nothing is mocked" >&2
  docker info >&2 || true
  exit 1
fi

need=()
for cmd_pkg in debootstrap:debootstrap git:git zstd:zstd psql:postgresql-client /usr/lib/postgresql/15/bin/initdb:postgresql-15; do
  cmd=${cmd_pkg%%:*}; pkg=${cmd_pkg#*:}
  if [[ $cmd == /* ]]; then [ -x "$cmd" ] || need+=("$pkg"); else command -v "$cmd" >/dev/null || need+=("$pkg"); fi
done
if [ ${#need[@]} -gt 0 ]; then
  echo "prodg: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

python=${PRODG_PYTHON:-python3}
stamp=.venv/.prodg-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "prodg: creating .venv"
  "$python" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[test]"
  echo "$want" >"$stamp"
fi

bash docker/images/build.sh
