#!/usr/bin/env bash
# Install Debian's chromium if missing: tests/test_ui_chromium.py renders the browser pages
# (/ui/) in a real headless Chromium and writes screenshots. Idempotent; run by scripts/test.sh.
set -euo pipefail
if ! command -v chromium >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
        fonts-dejavu-core >/dev/null
fi
chromium --version
