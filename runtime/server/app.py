"""Application factory: one ASGI app whose routes depend on the role it runs as.

``all`` (the embedded default) serves everything in one process; ``upload`` serves the stratum 0,
the upload API and the admin routes; ``gateway`` serves the notification API only.

Shared state lives on ``app.state``: ``settings``, ``repositories`` (fqrn -> Repository, created
at start for every configured repository; roles that write only) and ``authorizer``.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.responses import JSONResponse

from ..repository import Repository
from ..settings import Settings
from . import stratum0
from .auth import Authorizer, load_tokens


def open_repositories(settings: Settings) -> dict[str, Repository]:
    """Open every configured repository, creating those that don't exist yet."""
    repos = {}
    for config in settings.repositories:
        repo = Repository(settings.data_dir, settings.keys_dir, config)
        repo.init()
        repos[config.fqrn] = repo
    return repos


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="cvmfs-ephemeral", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.authorizer = Authorizer(load_tokens(settings))
    app.state.repositories = (
        open_repositories(settings) if settings.role in ("all", "upload") else {}
    )

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "role": settings.role})

    if settings.role in ("all", "upload"):
        app.router.routes.extend(stratum0.routes(settings.data_dir))
    return app
