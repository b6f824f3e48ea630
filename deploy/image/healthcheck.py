#!/usr/bin/env python3
"""Container health check: exit 0 when http://127.0.0.1:<port>/healthz answers 200.

One image serves every role on a different port (nginx 8000, upload 8080, gateway 4929), so the
port is an argument (default 8080, the embedded default's). Python's standard library only: the
image carries no curl.
"""

import sys
import urllib.request


def main() -> int:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
