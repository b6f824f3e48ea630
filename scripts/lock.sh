#!/usr/bin/env bash
# Regenerate runtime/requirements.lock: every transitive dependency of the runtime image, pinned
# with the hashes of every published file of that version. The Dockerfile installs the lock with
# `pip install --require-hashes`, so an image built from the same context holds the same bytes on
# any day. Rerun after changing runtime/requirements.txt; tests/test_packaging.py checks that the
# lock still matches it.
#
# The image runs Debian bookworm's Python 3.11 on Linux; --universal resolves for every platform
# (markers kept), so the lock also installs on the machines that run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
UV="${UV:-}"
if [[ -z "$UV" ]]; then
    if [[ -x .venv/bin/uv ]]; then UV=.venv/bin/uv; else UV=uv; fi   # pinned in requirements-dev.txt
fi
"$UV" pip compile --quiet --universal --python-version 3.11 --generate-hashes \
    --custom-compile-command "scripts/lock.sh" \
    --output-file runtime/requirements.lock runtime/requirements.txt
