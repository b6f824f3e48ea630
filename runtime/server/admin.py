"""Admin routes for the maintenance jobs, and the embedded scheduler.

Routes (``POST``, bearer token required; JSON results with numbers):

- ``/repos/{repo}/clean``, ``/repos/{repo}/gc``, ``/repos/{repo}/resign[?force=true]``: one
  repository; an admin token scoped to that repository is enough.
- ``/clean``, ``/gc``, ``/resign[?force=true]``, ``/housekeeping``: every repository the service
  writes; an admin token without repository scope is required (403 otherwise). Upload
  tokens and CI identity tokens never reach the maintenance routes.

A job already running on a repository answers 409 (per-repository routes) or is reported as
``skipped`` (global routes). The blocking work runs in a worker thread, so uploads and reads
are served meanwhile; a client that disconnects does not cancel a job (each is crash-safe and
runs to its end).

``install(app)`` mounts the routes and, when ``settings.scheduler`` is true, runs the embedded
scheduler (clean, gc, resign on their intervals) for the lifetime of the app.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from fastapi import APIRouter, FastAPI, HTTPException, Request
from .responses import JSONResponse

from ..maintenance import housekeeping as hk
from ..maintenance.joblock import JobBusy
from ..maintenance.scheduler import embedded
from ..repository import Repository, RepositoryError

router = APIRouter()


def _repositories(request: Request) -> dict[str, Repository]:
    return request.app.state.repositories


async def _repository(request: Request, fqrn: str) -> Repository:
    await request.app.state.authorizer.check(request, fqrn, role="admin")
    repo = _repositories(request).get(fqrn)
    if repo is None:
        raise HTTPException(404, f"repository {fqrn} is not served here")
    return repo


async def _run_one(request: Request, job: str, fqrn: str, force: bool = False,
                   dry_run: bool = False) -> JSONResponse:
    repo = await _repository(request, fqrn)
    settings = request.app.state.settings
    try:
        result = await asyncio.to_thread(hk.run_job, job, repo, settings, force=force,
                                         dry_run=dry_run)
    except JobBusy as exc:
        raise HTTPException(409, str(exc)) from None
    except RepositoryError as exc:
        raise HTTPException(500, f"{job} failed on {fqrn}: {exc}") from None
    return JSONResponse(result)


async def _run_all(request: Request, job: str, force: bool = False,
                   dry_run: bool = False) -> JSONResponse:
    await request.app.state.authorizer.check(request, None, role="admin")
    settings = request.app.state.settings
    repos = list(_repositories(request).values())
    if job == "housekeeping":
        report = await asyncio.to_thread(hk.housekeeping, repos, settings)
    else:
        report = await asyncio.to_thread(hk.run_all, job, repos, settings, force=force,
                                         dry_run=dry_run)
    return JSONResponse(report)


@router.post("/repos/{fqrn}/clean")
async def clean_one(request: Request, fqrn: str, dry_run: bool = False) -> JSONResponse:
    """``?dry_run=true``: list what would be removed (``would_remove``), remove nothing."""
    return await _run_one(request, "clean", fqrn, dry_run=dry_run)


@router.post("/repos/{fqrn}/gc")
async def gc_one(request: Request, fqrn: str) -> JSONResponse:
    return await _run_one(request, "gc", fqrn)


@router.post("/repos/{fqrn}/resign")
async def resign_one(request: Request, fqrn: str, force: bool = False) -> JSONResponse:
    return await _run_one(request, "resign", fqrn, force)


@router.post("/clean")
async def clean_all(request: Request, dry_run: bool = False) -> JSONResponse:
    return await _run_all(request, "clean", dry_run=dry_run)


@router.post("/gc")
async def gc_all(request: Request) -> JSONResponse:
    return await _run_all(request, "gc")


@router.post("/resign")
async def resign_all(request: Request, force: bool = False) -> JSONResponse:
    return await _run_all(request, "resign", force)


@router.post("/housekeeping")
async def housekeeping_all(request: Request) -> JSONResponse:
    return await _run_all(request, "housekeeping")


# --------------------------------------------------------------------------------------------
# mounting


def install(app: FastAPI) -> None:
    """Mount the admin routes; run the embedded scheduler during the app's lifespan."""
    app.include_router(router)
    settings = app.state.settings
    if not settings.scheduler or not app.state.repositories:
        return
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[object]:
        async with inner(application) as state:
            scheduler = embedded(settings, application.state.repositories)
            application.state.scheduler = scheduler
            await scheduler.start()
            try:
                yield state
            finally:
                await scheduler.stop()

    app.router.lifespan_context = lifespan
