"""Application factory: one ASGI app whose routes depend on the role it runs as.

``all`` (the embedded default) serves everything in one process; ``upload`` serves the stratum 0,
the upload API and the admin routes; ``gateway`` serves the notification API only.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.responses import JSONResponse

from ..settings import Settings
from . import stratum0


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="cvmfs-ephemeral", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "role": settings.role})

    if settings.role in ("all", "upload"):
        app.router.routes.extend(stratum0.routes(settings.data_dir))
    return app
