"""Run the real app on a loopback port in a background thread (uvicorn, real sockets).

``LiveServer`` binds its socket itself, so a test knows the port before the server starts
and can start a new server on the same port after stopping one (restart tests).
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from runtime.server.app import create_app, make_server
from runtime.settings import Settings


def free_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


class LiveServer:
    def __init__(self, settings: Settings, port: int = 0):
        self.settings = settings
        self.app = create_app(settings)
        self.sock = free_socket(port)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = make_server(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server.config.timeout_graceful_shutdown = 5
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name=f"live-server:{self.port}", daemon=True)

    def start(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        if self.thread.is_alive():
            raise RuntimeError("server did not stop")

    @property
    def repositories(self):  # type: ignore[no-untyped-def]
        return self.app.state.repositories


@contextmanager
def live_server(settings: Settings, port: int = 0) -> Iterator[LiveServer]:
    server = LiveServer(settings, port).start()
    try:
        yield server
    finally:
        server.stop()
