#!/usr/bin/env bash
# Headless Chromium from Debian's `chromium` package, for the production test's look at the deployed UI
# (tests/prod/test_production.py). Idempotent; prints the browser's path.
set -euo pipefail
for cmd in chromium chromium-browser; do
  if command -v "$cmd" >/dev/null; then command -v "$cmd"; exit 0; fi
done
echo "install-chromium.sh: installing Debian's chromium" >&2
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
command -v chromium
