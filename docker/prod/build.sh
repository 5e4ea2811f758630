#!/usr/bin/env bash
# Builds the production images offline, from the local Debian base (docker/images/build.sh) and a wheelhouse:
#   prodg/dagster:<digest>       webserver + daemon, no user code
#   prodg/dagster-code:<digest>  the code location (prodg_assets + definitions.py) served over gRPC on port 4000;
#                                DockerRunLauncher runs every run in a container of this same image
# Python packages enter the images only from docker/prod/.wheelhouse (`pip --no-index --find-links`), and git (the
# config repo's reader) only from the .debs in docker/prod/.debs; both are fetched here, and again only when what
# they must hold changes (a stamp). <digest> is a digest of every file of the image's build context, so a changed
# input builds a new tag and an unchanged one is skipped (PRODG_REBUILD_IMAGES=1 rebuilds anyway).
# Prints DAGSTER_IMAGE=… and DAGSTER_CODE_IMAGE=… on stdout (progress goes to stderr) and records them in
# docker/prod/.env, where `docker compose` finds them.
set -euo pipefail
shopt -s inherit_errexit
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
suite=${PRODG_DEBIAN_SUITE:-bookworm}
base=${PRODG_BASE_IMAGE:-prodg/base:$suite}
pip=${PRODG_PIP:-$repo/.venv/bin/pip}
wheelhouse=$here/.wheelhouse
debs=$here/.debs
stage=$here/.build
log() { echo "build.sh: $*" >&2; }

# (a) The Debian base and the stand-in images (Postgres is the deployment's database). Never rebuilt from here.
if ! docker image inspect "$base" prodg/postgres:"$suite" >/dev/null 2>&1; then
  log "$base or prodg/postgres:$suite missing: running docker/images/build.sh"
  PRODG_REBUILD_IMAGES=0 bash "$repo/docker/images/build.sh" >&2
fi
[ -x "$pip" ] || { log "no pip at $pip: run docker/dev/install.sh first (it creates .venv), or set PRODG_PIP"; exit 1; }

# (b) The wheelhouse: the pinned Dagster set and the project's runtime dependencies, for the base image's Python.
# Versions are constrained to what .venv has installed, so the images run the same versions the tests ran.
# PRODG_EXTRA_REQUIREMENTS (space-separated) adds packages to both images, e.g. "paramiko" for DOCKER_HOST=ssh://
# or "dagster-k8s==0.29.27" (docs/PRODUCTION.md).
extra=$(printf '%s\n' ${PRODG_EXTRA_REQUIREMENTS:-})
requirements=$(
  printf '%s\n' pip 'setuptools>=68' dagster==1.13.27 dagster-webserver==1.13.27 dagster-postgres==0.29.27 \
    dagster-docker==0.29.27
  [ -z "$extra" ] || printf '%s\n' "$extra"
  "$(dirname "$pip")/python" -c '
import sys, tomllib
with open(sys.argv[1], "rb") as fh:
    print("\n".join(tomllib.load(fh)["project"]["dependencies"]))' "$repo/pyproject.toml"
)
constraints=$("$pip" --disable-pip-version-check freeze --exclude-editable | grep -v -e '^-e ' -e ' @ ' || true)
base_py=$(docker run --rm --entrypoint python3 "$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
host_py=$("$(dirname "$pip")/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
layout=2 # bump when the wheelhouse's own files change
stamp=$(printf '%s\n--\n%s\n--\n%s %s %s\n' "$requirements" "$constraints" "$base_py" "$(uname -m)" "$layout" |
  sha256sum | cut -c1-16)
if [ "$(cat "$wheelhouse/.stamp" 2>/dev/null)" != "$stamp" ]; then
  log "filling the wheelhouse for Python $base_py ($(echo "$requirements" | wc -l) requirements)"
  rm -rf "$wheelhouse.tmp" && mkdir -p "$wheelhouse.tmp"
  printf '%s\n' "$requirements" >"$wheelhouse.tmp/requirements.txt"
  printf '%s\n' "$constraints" >"$wheelhouse.tmp/constraints.txt"
  printf '# PRODG_EXTRA_REQUIREMENTS\n%s\n' "$extra" >"$wheelhouse.tmp/extra-requirements.txt"
  if [ "$host_py" = "$base_py" ]; then
    # Same interpreter version as the image (and the same glibc family): `pip wheel` also turns any sdist into a
    # wheel here, so nothing is compiled inside the image.
    "$pip" --disable-pip-version-check wheel -q -w "$wheelhouse.tmp" \
      -r "$wheelhouse.tmp/requirements.txt" -c "$wheelhouse.tmp/constraints.txt" >&2
  else
    "$pip" --disable-pip-version-check download -q -d "$wheelhouse.tmp" --only-binary=:all: \
      --platform manylinux2014_x86_64 --python-version "$base_py" --implementation cp \
      -r "$wheelhouse.tmp/requirements.txt" -c "$wheelhouse.tmp/constraints.txt" >&2
  fi
  [ "$(ls "$wheelhouse.tmp"/pip-*.whl | wc -l)" = 1 ] || { log "expected exactly one pip wheel"; exit 1; }
  (cd "$wheelhouse.tmp" && ls *.whl >lock.txt)
  echo "$stamp" >"$wheelhouse.tmp/.stamp"
  rm -rf "$wheelhouse" && mv "$wheelhouse.tmp" "$wheelhouse"
  log "wheelhouse: $(ls "$wheelhouse"/*.whl | wc -l) wheels"
else
  log "wheelhouse: up to date ($(ls "$wheelhouse"/*.whl | wc -l) wheels)"
fi

# git for the code image, as .debs resolved against the base image's own package set by apt in a throwaway
# container (the build itself then installs them with dpkg, offline).
deb_stamp=$(printf '%s git\n' "$(docker image inspect -f '{{.Id}}' "$base")" | sha256sum | cut -c1-16)
if [ "$(cat "$debs/.stamp" 2>/dev/null)" != "$deb_stamp" ]; then
  log "fetching git and its dependencies as .debs for $base"
  rm -rf "$debs" && mkdir -p "$debs"
  docker run --rm -v "$debs:/var/cache/apt/archives" "$base" sh -c \
    'set -e; apt-get update -qq
     DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --download-only --no-install-recommends git >/dev/null
     rm -rf /var/cache/apt/archives/partial /var/cache/apt/archives/lock' >&2
  ls "$debs"/git_*.deb >/dev/null
  echo "$deb_stamp" >"$debs/.stamp"
fi

# (c) The images. Each build context is staged under .build/ (hard links where possible) and hashed file by file.
stage_context() { # NAME FILE... (FILE: a path in the repo; folders are copied without __pycache__)
  local name=$1 ctx; shift
  ctx=$stage/$name
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp "$here/$name.Dockerfile" "$ctx/Dockerfile"
  cp -al "$wheelhouse" "$ctx/wheelhouse" 2>/dev/null || cp -a "$wheelhouse" "$ctx/wheelhouse"
  rm -f "$ctx/wheelhouse/.stamp"
  for f in "$@"; do
    case $f in
      /*) cp -a "$f" "$ctx/" ;;
      *) mkdir -p "$ctx/src/$(dirname "$f")" && cp -a "$repo/$f" "$ctx/src/$f" ;;
    esac
  done
  find "$ctx" -name __pycache__ -prune -exec rm -rf {} + -o -name '*.pyc' -exec rm -f {} +
}

context_digest() { # CTX -> 12 hex chars over every file's path and content
  (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-12
}

# This checkout's id (made once, kept in .prodg/): the images it builds carry it, and only those are ever pruned here,
# so another checkout's run on the same Engine keeps its images.
checkout_id=$(cat "$repo/.prodg/checkout-id" 2>/dev/null || true)
if [ -z "$checkout_id" ]; then
  mkdir -p "$repo/.prodg"
  checkout_id=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
  printf '%s\n' "$checkout_id" >"$repo/.prodg/checkout-id"
fi

build_image() { # NAME REPO -> prints the tag
  local name=$1 image=$2 digest tag
  digest=$(context_digest "$stage/$name")
  tag=$image:$digest
  if [ "${PRODG_REBUILD_IMAGES:-0}" != 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    log "image $tag: present"
  else
    log "image $tag: building"
    # The legacy builder: this Engine has no buildx. Its log is shown only when the build fails.
    if ! DOCKER_BUILDKIT=0 docker build --force-rm --build-arg "BASE_IMAGE=$base" --build-arg "IMAGE=$tag" \
        --label "prodg.inputs-digest=$digest" --label "prodg.checkout=$checkout_id" \
        -t "$tag" "$stage/$name" >"$stage/$name.log" 2>&1; then
      tail -n 40 "$stage/$name.log" >&2
      log "image $tag: build failed (full log: $stage/$name.log)"
      exit 1
    fi
    log "image $tag: built"
  fi
  echo "$tag"
}

stage_context dagster "$here/dagster.yaml" "$here/workspace.yaml"
dagster_image=$(build_image dagster prodg/dagster)
stage_context code "$here/dagster.yaml" "$debs" pyproject.toml definitions.py prodg_assets
rm -f "$stage/code/.debs/.stamp"
code_image=$(build_image code prodg/dagster-code)

# Older builds of this checkout: the newest PRODG_KEEP_IMAGES (default 3) of each image stay, for rolling back; an
# image a container still uses is kept by the Engine anyway, and other checkouts' builds are never touched.
prune_old() { # IMAGE CURRENT_TAG
  docker image ls "$1" --filter "label=prodg.checkout=$checkout_id" --format '{{.CreatedAt}}\t{{.Repository}}:{{.Tag}}' |
    sort -r | cut -f2 |
    { grep -vx -e "$2" -e "$1:latest" || true; } |
    tail -n +"${PRODG_KEEP_IMAGES:-3}" | while read -r old; do
      docker image rm "$old" >/dev/null 2>&1 && log "image $old: removed (older build)" || true
    done
}
prune_old prodg/dagster "$dagster_image"
prune_old prodg/dagster-code "$code_image"
# `latest` follows the newest build: config/ (the mainframe's own Dagster layer) names these tags by default.
docker tag "$dagster_image" prodg/dagster:latest
docker tag "$code_image" prodg/dagster-code:latest

# Record the tags for docker compose, keeping whatever else the operator keeps in .env (mode 600: it may also hold
# DAGSTER_POSTGRES_PASSWORD).
(
  umask 077
  { grep -v -e '^DAGSTER_IMAGE=' -e '^DAGSTER_CODE_IMAGE=' "$here/.env" 2>/dev/null || true
    printf 'DAGSTER_IMAGE=%s\nDAGSTER_CODE_IMAGE=%s\n' "$dagster_image" "$code_image"; } >"$here/.env.tmp"
  mv "$here/.env.tmp" "$here/.env"
)
printf 'DAGSTER_IMAGE=%s\nDAGSTER_CODE_IMAGE=%s\n' "$dagster_image" "$code_image"
