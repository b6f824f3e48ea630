"""Application factory: one ASGI app whose routes depend on the role it runs as.

``all`` (the embedded default) serves everything in one process; ``upload`` serves the stratum 0,
the upload API and the admin routes; ``gateway`` serves the notification API only.

Shared state lives on ``app.state``: ``settings``, ``repositories`` (fqrn -> Repository, created
at start for every configured repository; roles that write only), ``authorizer``, ``metrics``,
``hub`` (roles that serve the notification API), ``notifier`` (how publishes reach a gateway)
and ``uploads`` (the upload service).

Every publish notifies automatically: each repository's ``listeners`` get the notifier, which
hands the new manifest to the in-process hub or, when ``gateway_url`` is set, POSTs it to that
gateway like ``cvmfs_swissknife notify -p``.

Run it with :func:`make_server` (``serve`` does): its shutdown first ends the notification
streams with an error, so that subscribers reconnect instead of the server waiting forever for
endless responses to finish.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from contextlib import asynccontextmanager
from typing import AsyncIterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from .responses import JSONResponse

from ..cvmfs import batches
from ..gateway import routes as gateway_routes
from ..gateway.hub import Hub
from ..gateway.notifier import HttpNotifier, LocalNotifier, Notifier
from ..repository import Repository
from ..repository.filesystem import object_store_warnings
from ..settings import Settings
from ..version import __version__
from . import admin, stratum0, ui, uploads
from .auth import Authorizer
from .bodytimeout import BodyIdleTimeout, BodyIdleTimeoutMiddleware
from .connection import ConnectionLimits, protocol_class, raise_nofile_limit
from .metrics import Metrics
from .requestlog import RequestLogMiddleware
from .uploads import OUT_OF_DESCRIPTORS, out_of_descriptors, storage_full

log = logging.getLogger(__name__)

#: Seconds uploads in flight get to finish when the server is asked to stop.
GRACEFUL_SHUTDOWN_S = 60


def open_repositories(settings: Settings) -> dict[str, Repository]:
    """Open every configured repository, creating those that don't exist yet."""
    repos = {}
    for config in settings.repositories:
        repo = Repository(settings.data_dir, settings.keys_dir, config,
                          **settings.repository_options())
        repo.init()
        repos[config.fqrn] = repo
    return repos


def _make_notifier(settings: Settings, hub: Hub | None) -> Notifier | None:
    if settings.gateway_url:
        return HttpNotifier(settings.gateway_url)
    if hub is not None:
        return LocalNotifier(hub)
    log.warning("role %s without CVMFS_EPHEMERAL_GATEWAY_URL: publishes notify no gateway",
                settings.role)
    return None


def _install_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"detail": "<one line>"}``."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail).splitlines()[0] if exc.detail else "error"
        return JSONResponse({"detail": detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        if errs:
            where = ".".join(str(p) for p in errs[0].get("loc", ()) if p != "query")
            detail = f"invalid {where}: {errs[0].get('msg', 'invalid value')}"
        else:
            detail = "invalid request"
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(BodyIdleTimeout)
    async def stalled(request: Request, exc: BodyIdleTimeout) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=408,
                            headers={"Connection": "close"})

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        if storage_full(exc):
            log.error("%s %s: the storage is full", request.method, request.url.path)
            return JSONResponse({"detail": "the server's storage is full (no space left on "
                                           "device)"}, status_code=507)
        if out_of_descriptors(exc):
            log.error("%s %s: out of file descriptors", request.method, request.url.path)
            return JSONResponse({"detail": OUT_OF_DESCRIPTORS}, status_code=503,
                                headers={"Retry-After": "1"})
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)


def create_app(settings: Settings) -> FastAPI:
    writes = settings.role in ("all", "upload")
    repositories = open_repositories(settings) if writes else {}
    if writes:
        for warning in object_store_warnings(settings.data_dir):
            log.warning("%s", warning)
    hub = Hub.from_settings(settings) if settings.role in ("all", "gateway") else None
    notifier = _make_notifier(settings, hub) if writes else None
    metrics = Metrics(repositories, hub.subscriber_counts if hub is not None else None)
    authorizer = Authorizer.from_settings(settings)
    service = uploads.UploadService(settings, repositories, authorizer, metrics, hub=hub,
                                    notifier=notifier)
    if hub is not None:
        hub.instrument(metrics.registry)
        hub.pushed.append(lambda fqrn, _rev: metrics.notifications.labels(fqrn).inc())
    for fqrn, repo in repositories.items():  # -- retention: expirations per run
        repo.job_listeners.append(
            lambda job, report, fqrn=fqrn: metrics.observe_job(fqrn, job, report))
    if notifier is not None:
        for fqrn, repo in repositories.items():
            repo.listeners.append(lambda result, fqrn=fqrn: notifier.notify(fqrn, result.manifest))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if hub is not None:
            hub.loop = asyncio.get_running_loop()
        if repositories:
            # the first tarball upload should not wait for the object-writing helper to start
            await asyncio.to_thread(batches.start_helpers)
        try:
            yield
        finally:
            if hub is not None:
                hub.close()
            await service.close()
            if notifier is not None:
                await asyncio.to_thread(notifier.close)
            for repo in repositories.values():
                repo.close()
            if repositories:
                await asyncio.to_thread(batches.stop_helpers)

    app = FastAPI(title="cvmfs-ephemeral", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.authorizer = authorizer
    app.state.repositories = repositories
    app.state.hub = hub
    app.state.notifier = notifier
    app.state.metrics = metrics
    app.state.uploads = service
    _install_error_handlers(app)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "role": settings.role, "version": __version__})

    app.add_api_route("/metrics", metrics.endpoint, methods=["GET"])
    if writes:
        app.router.routes.extend(stratum0.routes(settings.data_dir))
        app.include_router(uploads.router())
        admin.install(app)  # maintenance routes + embedded scheduler (runtime/server/admin.py)
        ui.install(app)  # the read-only browser at /ui/ (runtime/server/ui.py)
    if hub is not None:
        app.router.routes.extend(gateway_routes.routes(hub))
    # outermost last: the request id is set before anything else runs
    app.add_middleware(BodyIdleTimeoutMiddleware, timeout_s=settings.body_idle_timeout_s)
    app.add_middleware(RequestLogMiddleware, mode=settings.access_log)
    return app


class Server(uvicorn.Server):
    """uvicorn, plus: on shutdown, end the notification streams first (with an error)."""

    def __init__(self, config: uvicorn.Config, hub: Hub | None):
        super().__init__(config)
        self.hub = hub

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.hub is not None:
            self.hub.close()
        await super().shutdown(sockets)


#: File descriptors kept for what is not a connection (state.db, objects being written,
#: catalogs, helper pipes); the rest is shared at about 3 per connection (the socket, a staged
#: file, an object store file).
FD_RESERVE = 256
FDS_PER_CONNECTION = 3
#: Connection limits when ``CVMFS_EPHEMERAL_MAX_CONNECTIONS`` is unset: the gateway holds one
#: long-lived stream per subscribed client (bench/gateway.py holds 10,000).
DEFAULT_MAX_CONNECTIONS = 1000
GATEWAY_MAX_CONNECTIONS = 20_000


def connection_limits(settings: Settings, nofile: int) -> ConnectionLimits:
    """The settings' limits, with the connection limit lowered to what ``nofile`` allows, so
    that a busy server answers 503 instead of failing uploads with EMFILE."""
    gateway_only = settings.role == "gateway"
    per_connection = 1 if gateway_only else FDS_PER_CONNECTION  # a subscriber: just its socket
    fits = max(1, (nofile - FD_RESERVE) // per_connection)
    max_connections = settings.max_connections or (GATEWAY_MAX_CONNECTIONS if gateway_only
                                                   else DEFAULT_MAX_CONNECTIONS)
    if fits < max_connections:
        log.warning("file-descriptor limit %d allows about %d connections: "
                    "CVMFS_EPHEMERAL_MAX_CONNECTIONS lowered from %d", nofile, fits,
                    max_connections)
        max_connections = fits
    return ConnectionLimits(settings.max_header_bytes, settings.header_timeout_s,
                            max_connections)


def make_server(app: FastAPI, *, host: str, port: int, log_level: str | None = None) -> Server:
    """uvicorn with our connection protocol and our logging (``log_config=None``: uvicorn's
    loggers propagate to the setup of :mod:`runtime.logs` instead of their own handlers).

    Raises the file-descriptor limit to the hard limit first. ``log_level`` is accepted for
    callers of the old signature; the level is the root logger's (``runtime.logs.setup``).
    """
    settings: Settings = app.state.settings
    soft, _hard = raise_nofile_limit()
    limits = connection_limits(settings, soft)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                            http=protocol_class(limits),
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, lifespan="on")
    return Server(config, app.state.hub)


__all__ = ["Server", "create_app", "make_server", "open_repositories"]
