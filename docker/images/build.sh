#!/usr/bin/env bash
# Builds the images the test bed and the offline demo need from Debian's packages (no registry is reachable):
# one debootstrapped rootfs imported as prodg/base, and small builds on top that only add an entrypoint/command.
# Idempotent: an image that already exists is skipped (PRODG_REBUILD_IMAGES=1 forces a rebuild).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
suite=${PRODG_DEBIAN_SUITE:-bookworm}
base=${PRODG_BASE_IMAGE:-prodg/base:$suite}
cache=${PRODG_IMAGE_CACHE:-/var/cache/prodg}
packages="postgresql postgresql-client redis-server caddy prometheus prometheus-node-exporter busybox
  python3-fastapi python3-uvicorn python3-prometheus-client ca-certificates tzdata"

have() { [ "${PRODG_REBUILD_IMAGES:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

# The Debian mirror this machine's apt already uses (deb822 .sources or one-line sources.list); never a hard-coded host.
debian_mirror() {
  local uri
  uri=$(awk -v s="$suite" '
      /^URIs:/ {u=$2} /^Suites:/ {for (i=2;i<=NF;i++) if ($i==s) print u}
    ' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
  if [ -z "$uri" ]; then
    uri=$(awk -v s="$suite" '$1=="deb" && $0 ~ (" " s " ") {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1)
  fi
  [ -n "$uri" ] || { echo "build.sh: no apt source for suite '$suite' in /etc/apt (set PRODG_DEBIAN_MIRROR)" >&2; exit 1; }
  echo "$uri"
}

build_base() {
  if have "$base"; then echo "image $base: present"; return; fi
  command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
  local mirror root tarball
  mirror=${PRODG_DEBIAN_MIRROR:-$(debian_mirror)}
  mkdir -p "$cache"
  tarball="$cache/base-$suite.tar"
  if [ ! -s "$tarball" ] || [ "${PRODG_REBUILD_IMAGES:-0}" = 1 ]; then
    root=$(mktemp -d /var/tmp/prodg-rootfs.XXXXXX)
    trap 'umount "$root/proc" 2>/dev/null || true; rm -rf "$root"' EXIT
    echo "debootstrap $suite from $mirror into $root"
    debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
      || { tail -n 30 "$cache/debootstrap.log" >&2; exit 1; }
    # No service may start inside the chroot on the build host.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"; chmod +x "$root/usr/sbin/policy-rc.d"
    mount -t proc proc "$root/proc"
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages \
      >"$cache/packages.log" 2>&1 || { tail -n 30 "$cache/packages.log" >&2; exit 1; }
    chroot "$root" apt-get clean
    # wget, nc & co. as commands, like the busybox/alpine-based official images that healthchecks are written for.
    # Only where Debian has no real command of that name (busybox's setpriv, tar, ... must not shadow the real ones).
    chroot "$root" /bin/sh -c 'for a in $(busybox --list); do command -v "$a" >/dev/null 2>&1 ||
      ln -s /bin/busybox "/usr/local/bin/$a"; done'
    umount "$root/proc"
    rm -f "$root/usr/sbin/policy-rc.d"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/lib/postgresql/*/main
    tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"; trap - EXIT
  fi
  docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/sh"]' "$tarball" "$base" >/dev/null
  echo "image $base: imported"
}

build_service() { # NAME -> prodg/NAME:SUITE from docker/images/NAME/Dockerfile
  local name=$1 tag="prodg/$1:$suite"
  if have "$tag"; then echo "image $tag: present"; return; fi
  docker build -q --build-arg "BASE_IMAGE=$base" -t "$tag" "$here/$name" >/dev/null
  echo "image $tag: built"
}

# s3-store: MinIO's stand-in, s3s-fs (built by docker/dev/install.sh into .prodg/tools) in the base image.
build_s3_store() {
  local tag="prodg/s3-store:$suite" binary="$here/../../.prodg/tools/bin/s3s-fs" context
  if have "$tag"; then echo "image $tag: present"; return; fi
  [ -x "$binary" ] || { echo "build.sh: $binary is missing (docker/dev/install.sh builds it)" >&2; exit 1; }
  context=$(mktemp -d /var/tmp/prodg-s3-store.XXXXXX)
  cp "$here/s3-store/Dockerfile" "$here/s3-store/entrypoint.sh" "$binary" "$context/"
  docker build -q --build-arg "BASE_IMAGE=$base" -t "$tag" "$context" >/dev/null || { rm -rf "$context"; exit 1; }
  rm -rf "$context"
  echo "image $tag: built"
}

build_base
# sqlite-app: a test-bed stand-in for the SQLite-backed services (not in seed-names: pushed under no seed name).
for svc in postgres redis caddy prometheus node-exporter sqlite-app; do build_service "$svc"; done
build_s3_store
