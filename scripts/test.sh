#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian 12 machine, then run every test.
# Idempotent: packages, the Docker engine, the base image and the virtualenv are reused.
set -euo pipefail
cd "$(dirname "$0")/.."

# nginx (stratum-0 tests), squid (site-cache tests), the Docker engine and a debootstrapped base image (the runtime image
# is built locally because no registry is reachable): see scripts/ensure-docker.sh.
bash scripts/ensure-docker.sh
# Debian's chromium renders the browser pages (tests/test_ui_chromium.py).
bash scripts/ensure-chromium.sh

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements-dev.txt
.venv/bin/pip install -q --no-deps -e .

exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
