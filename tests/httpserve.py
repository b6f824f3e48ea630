"""Serve a directory over real HTTP on loopback, the way the tests serve repositories.

``http.server`` supports HEAD, answers 404 for missing files and adds no Content-Encoding;
docs/cvmfs-format.md ("Verified against the real tools") records that the real client, pull and check all accepted it.
Tests therefore exercise the same bytes a client would fetch, with no mocks.
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
    """SimpleHTTPRequestHandler without per-request log lines (they would flood test output).

    It speaks HTTP/1.1 with keep-alive, like the production server should (docs/cvmfs-format.md,
    "Serving over HTTP"), which also saves a TCP connection and a thread per request in the tests.
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else Nagle + delayed ACK stall each keep-alive reply 40 ms

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 with a free port; yield the base URL without trailing slash.

    Files are read from disk on every request, so a test may edit the tree while it is served.
    """
    handler = functools.partial(QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    # A short poll interval keeps shutdown() (which waits for the next poll) fast per test.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.005},
                              name=f"httpserve:{root}", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
