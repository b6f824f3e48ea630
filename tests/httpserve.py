"""Serve a directory over real HTTP on loopback, the way the tests serve repositories.

``http.server`` answers HTTP/1.0, supports HEAD, answers 404 for missing files and adds no
Content-Encoding; FORMAT.md (last section) records that the real client, pull and check all
accepted it. Tests therefore exercise the same bytes a client would fetch, with no mocks.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class QuietHandler(SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler without per-request log lines (they would flood test output)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


@contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 with a free port; yield the base URL without trailing slash.

    Files are read from disk on every request, so a test may edit the tree while it is served.
    """
    handler = functools.partial(QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=f"httpserve:{root}", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
