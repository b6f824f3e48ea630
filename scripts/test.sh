#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian 12 machine, then run every test.
# Idempotent: packages, the virtualenv and the Docker engine are reused when already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: nginx (the stratum-0 test), the Docker engine and debootstrap (the runtime
# image is built from a locally debootstrapped base because no registry is reachable).
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    (dockerd >/var/log/dockerd.log 2>&1 &)
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements-dev.txt
.venv/bin/pip install -q --no-deps -e .

exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
