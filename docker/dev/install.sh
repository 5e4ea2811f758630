#!/usr/bin/env bash
# Installs what prodg needs on a fresh machine of this kind, idempotently: Debian packages, the venv, s3s-fs (the
# local backup store), the locally built images. Sourced by docker/dev/up (the main job) and .ci/run (the tests).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"

if ! docker info >/dev/null 2>&1; then
  echo "prodg: the Docker Engine does not answer (docker info failed); it is required, nothing is mocked" >&2
  docker info >&2 || true
  exit 1
fi

# Debian packages, each only when what it provides is missing (a bare Debian 12 has none of these):
#   debootstrap      the base image's rootfs (docker/images/build.sh; it pulls in wget, its downloader)
#   ca-certificates  TLS for https mirrors (debootstrap's wget) and https git remotes (PRODG_REPO_URL)
#   git, zstd        the config repo; backup compression
#   psql, initdb     PostgreSQL 15's client and server
#   docker-registry  the CNCF Distribution registry: the tests' (and a dev host's) image registry on loopback
#   curl             the registry script's health probe; git hooks that tell `prodg webhook` about a push
#   age              age-keygen (the backup identities) and the plain `age` an operator restores with
#   docker-compose   Compose 1.29 (Debian's): brings docker/prod/docker-compose.yml up, for operators and for
#                    tests/prod/test_production.py
# What else docker/images/build.sh and docker/prod/build.sh run (mount, chroot, tar, awk, find, sha256sum) is in
# every Debian (Priority: required); the Docker CLI and Engine are a precondition (checked above); chromium is
# installed by docker/prod/install-chromium.sh, which .ci/run calls.
need=()
for cmd_pkg in debootstrap:debootstrap git:git zstd:zstd psql:postgresql-client \
    /usr/lib/postgresql/15/bin/initdb:postgresql-15 /etc/ssl/certs/ca-certificates.crt:ca-certificates \
    /usr/bin/docker-registry:docker-registry curl:curl age:age docker-compose:docker-compose; do
  cmd=${cmd_pkg%%:*}; pkg=${cmd_pkg#*:}
  if [[ $cmd == /* ]]; then [ -e "$cmd" ] || need+=("$pkg"); else command -v "$cmd" >/dev/null || need+=("$pkg"); fi
done

# The interpreter for .venv: PRODG_PYTHON (e.g. a pyenv Python, which brings venv + ensurepip) or Debian's python3.
# Debian ships `ensurepip` only in python3.X-venv, and without it `python3 -m venv` fails; so the test is whether
# the chosen interpreter can import both, and apt is asked only for Debian's own interpreter.
python=${PRODG_PYTHON:-python3}
can_venv() { "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; }
if ! command -v "$python" >/dev/null; then
  if [ -n "${PRODG_PYTHON:-}" ]; then echo "prodg: PRODG_PYTHON=$PRODG_PYTHON is not an executable" >&2; exit 1; fi
  need+=(python3 python3-venv)
elif ! can_venv; then
  py_real=$(readlink -f "$("$python" -c 'import sys; print(sys.executable)')")
  case $py_real in
    /usr/bin/python3*)
      if [ "$py_real" = "$(readlink -f /usr/bin/python3 2>/dev/null)" ]; then need+=(python3-venv)
      else need+=("$(basename "$py_real")-venv"); fi ;;
    *) echo "prodg: $python ($py_real) cannot create a venv (no venv/ensurepip module) and is not Debian's;" \
         "install its venv support or set PRODG_PYTHON to another interpreter" >&2
       exit 1 ;;
  esac
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "prodg: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  if [[ " ${need[*]} " == *" docker-registry "* ]] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    # the package enables a system-wide registry on :5000 (every address); prodg starts its own on loopback
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
fi
can_venv || { echo "prodg: $python still cannot create a venv (import venv, ensurepip failed)" >&2; exit 1; }

stamp=.venv/.prodg-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "prodg: creating .venv"
  "$python" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[test]"
  echo "$want" >"$stamp"
fi

# The dev profile's backup store, and the tests' second S3 implementation: s3s-fs (the s3s project's S3 server that
# keeps objects as files), built from crates.io at a pinned version with its locked dependencies. 0.14.1 is the
# newest that builds with this machine's rustc 1.95 (0.15+ needs 1.96). About 3.5 minutes the first time.
s3s_fs=.prodg/tools/bin/s3s-fs
if [ ! -x "$s3s_fs" ]; then
  cargo=$(command -v cargo || echo "$HOME/.cargo/bin/cargo")
  [ -x "$cargo" ] || { echo "prodg: cargo (Rust) is needed to build s3s-fs, the local backup store" >&2; exit 1; }
  echo "prodg: building s3s-fs 0.14.1 (cargo install, into .prodg/tools)"
  "$cargo" install -q s3s-fs --version 0.14.1 --features binary --locked --root .prodg/tools
fi

bash docker/images/build.sh
