"""The browser: read-only, server-rendered HTML pages at ``/ui/`` (upload service roles).

What a person wants to see of a repository without a CVMFS client: which artifacts it holds,
how big they are, until when they live, and how to mount or download them. The pages read the
same state as ``GET /repos/{repo}`` (public, like every read) and offer no write action.

Why it is built this way:

- Jinja2 with autoescape on for every template: artifact and file names are chosen by whoever
  uploads, so each one is escaped as text; nothing a stranger sent is ever marked safe.
- No script, no external asset: the one stylesheet is served by the app itself and every page
  carries ``Content-Security-Policy: default-src 'self'``, so even an escaping mistake could
  not load or run anything from elsewhere.
- Bounded work per request: an artifact page lists at most :data:`MAX_FILES` entries and a
  repository page at most :data:`MAX_ARTIFACTS` artifacts (with a note saying how many were
  left out), and the repository summary reads the manifest and whitelist only, never the
  whole object store (``Repository.info()`` walks every object).
- Blocking reads (SQLite, catalogs) run in a worker thread, like the JSON listing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import FastAPI, Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ..clientconf import client_config
from ..repository import ArtifactInfo, Repository, RepositoryError, validate_artifact_name
from ..repository.names import child_namespaces, parent_namespace
from ..settings import Settings

HERE = Path(__file__).parent
#: Rows an artifact page lists; a larger tree is cut with a note (the download has it all).
MAX_FILES = 1000
#: Artifacts a repository page lists.
MAX_ARTIFACTS = 1000
#: Publishes listed on a repository page.
RECENT_PUBLISHES = 10

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                          autoescape=True, undefined=jinja2.StrictUndefined,
                          trim_blocks=True, lstrip_blocks=True)


# -- formatting -------------------------------------------------------------------------------
def human_size(n: int) -> str:
    """``1536`` -> ``1.5 KiB``: what a person compares at a glance (exact bytes in a title)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def relative(ts: float, now: float) -> str:
    """``in 2 h 5 min`` / ``3 days ago``: two units at most, enough to judge an expiry."""
    delta = int(ts - now)
    secs = abs(delta)
    if secs < 5:
        return "just now"
    parts = []
    for label, unit in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if secs >= unit or (unit == 1 and not parts):
            parts.append(f"{secs // unit} {label}")
            secs %= unit
        if len(parts) == 2:
            break
    text = " ".join(parts)
    return f"in {text}" if delta >= 0 else f"{text} ago"


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def machine_time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class When:
    """A point in time as the templates show it: relative, absolute, and for ``<time>``."""

    relative: str
    absolute: str
    machine: str

    @classmethod
    def of(cls, ts: float | None, now: float) -> "When | None":
        return None if ts is None else cls(relative(ts, now), iso(ts), machine_time(ts))


def provenance(a: ArtifactInfo) -> str | None:
    """Who uploaded it and the metadata it came with, in words: ``env-1 (token)`` or
    ``https://token.actions.githubusercontent.com: repo:org/app:ref:… (oidc)``, then the
    uploader's ``key=value`` pairs (the record is runtime/server/provenance.py's)."""
    value: Any = getattr(a, "provenance", None)
    if not value:
        return None
    if not isinstance(value, dict):
        return str(value)
    who = value.get("uploaded_by") or {}
    if who.get("kind") == "oidc":
        by = f"{who.get('issuer', '?')}: {who.get('subject', '?')} (oidc)"
    else:
        by = f"{who.get('label', '?')} ({who.get('kind', 'token')})"
    meta = value.get("meta") or {}
    return "; ".join([by, *(f"{k}={v}" for k, v in sorted(meta.items()))])


def kind_of(mode: int) -> str:
    return ("dir" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode)
            else "file" if stat.S_ISREG(mode) else "other")


# -- page data (worker thread) ----------------------------------------------------------------
def repository_summary(repo: Repository, now: float) -> dict[str, Any]:
    manifest = repo.manifest()
    whitelist = repo.whitelist()
    return {"fqrn": repo.fqrn, "revision": manifest.revision,
            "published": When.of(manifest.timestamp, now),
            "whitelist_expires": When.of(whitelist.expires.timestamp(), now),
            "ttl_s": repo.config.ttl_s}


def artifact_row(a: ArtifactInfo, now: float) -> dict[str, Any]:
    return {"name": a.name, "kind": a.kind, "size": a.size, "size_h": human_size(a.size),
            "files": a.files, "created": When.of(a.created_at, now),
            "expires": When.of(a.expires_at, now), "revision": a.revision,
            "provenance": provenance(a),
            # -- retention --
            "pinned": a.pinned, "sha256": a.sha256}


def namespace_crumbs(name: str) -> list[dict[str, str]]:
    """``team-a/app`` -> links to ``team-a`` and ``team-a/app`` (each segment shown alone)."""
    segments = name.split("/") if name else []
    return [{"name": seg, "path": "/".join(segments[:i + 1])} for i, seg in enumerate(segments)]


def repository_page(repo: Repository, now: float, namespace: str = "") -> dict[str, Any]:
    """The tree at ``namespace`` ('' = the repository's top): the namespaces directly below
    it (linking to their own page) and the artifacts directly in it."""
    arts = repo.artifacts(namespace)
    if namespace and not any(a.name != namespace for a in arts):
        raise RepositoryError(f"namespace {namespace!r} not found")
    here = [a for a in arts if parent_namespace(a.name) == namespace]
    publishes = [{"revision": r["revision"], "when": When.of(r["published_at"] or r["timestamp"],
                                                             now)}
                 for r in repo.revisions()[:RECENT_PUBLISHES]]
    namespaces = [dict(ns, leaf=ns["name"].rpartition("/")[2], size_h=human_size(ns["size"]))
                  for ns in child_namespaces([(a.name, a.size) for a in arts], namespace)]
    return {"repo": repository_summary(repo, now), "namespace": namespace,
            "crumbs": namespace_crumbs(namespace), "namespaces": namespaces[:MAX_ARTIFACTS],
            "artifacts": [artifact_row(a, now) for a in here[:MAX_ARTIFACTS]],
            "total": len(here), "total_bytes": human_size(sum(a.size for a in arts)),
            "total_under": len(arts), "publishes": publishes}


def artifact_page(repo: Repository, name: str, now: float) -> dict[str, Any]:
    info = repo.artifact(name)
    tree = repo.artifact_tree(name)
    top = f"/{name}"
    paths = sorted(tree)
    files = []
    for path in paths[:MAX_FILES]:
        e = tree[path]
        rel = path[len(top):].lstrip("/") or "."
        files.append({"path": rel, "kind": kind_of(e.mode), "size": e.size,
                      "size_h": human_size(e.size) if stat.S_ISREG(e.mode) else "",
                      "target": e.symlink, "mode": f"{stat.S_IMODE(e.mode):04o}",
                      "mtime": When.of(e.mtime, now)})
    return {"repo": repository_summary(repo, now), "artifact": artifact_row(info, now),
            "files": files, "total_files": len(paths), "max_files": MAX_FILES,
            "crumbs": namespace_crumbs(parent_namespace(name)),
            "leaf": name.rpartition("/")[2]}


# -- client configuration ---------------------------------------------------------------------
def public_base(settings: Settings, request: Request) -> str:
    """The URL clients reach this stratum 0 at: the configured one, else what was asked."""
    return (settings.public_url or str(request.base_url)).rstrip("/")


def mount_config(settings: Settings, request: Request, fqrn: str) -> dict[str, str]:
    base = public_base(settings, request)
    notify = settings.gateway_url or (f"{base}/api/v1" if settings.role == "all" else None)
    key_path = f"/etc/cvmfs/keys/{fqrn}.pub"
    return {"key_url": f"{base}/cvmfs-meta/{fqrn}.pub", "key_path": key_path,
            "conf": client_config(fqrn, base, key_path, notify),
            "conf_path": f"/etc/cvmfs/config.d/{fqrn}.conf"}


# -- routes -----------------------------------------------------------------------------------
def render(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = _env.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def not_found(what: str) -> HTMLResponse:
    """A 404 page naming what is missing by kind only: the request line already says which,
    and the page's text must not echo a stranger's path (the request log quotes error bodies)."""
    return render("not_found.html", status_code=404, what=what)


def _repos(request: Request) -> dict[str, Repository]:
    return request.app.state.repositories


async def index(request: Request) -> Response:
    now = time.time()
    repos = await asyncio.to_thread(
        lambda: [dict(repository_summary(r, now), artifacts=len(r.artifacts()))
                 for r in _repos(request).values()])
    return render("index.html", repos=repos)


async def repository(request: Request) -> Response:
    fqrn = request.path_params["fqrn"]
    repo = _repos(request).get(fqrn)
    if repo is None:
        return not_found("repository")
    namespace = request.path_params.get("namespace", "").strip("/")
    try:
        if namespace:
            validate_artifact_name(namespace, repo.max_name_depth)
        page = await asyncio.to_thread(repository_page, repo, time.time(), namespace)
    except RepositoryError:
        return not_found("namespace")
    return render("repository.html", max_artifacts=MAX_ARTIFACTS, **page)


async def artifact(request: Request) -> Response:
    fqrn, name = request.path_params["fqrn"], request.path_params["name"]
    repo = _repos(request).get(fqrn)
    if repo is None:
        return not_found("repository")
    try:
        validate_artifact_name(name, repo.max_name_depth)
        page = await asyncio.to_thread(artifact_page, repo, name, time.time())
    except RepositoryError:
        return not_found("artifact")
    settings: Settings = request.app.state.settings
    return render("artifact.html", mount=mount_config(settings, request, fqrn),
                  download=f"/repos/{quote(fqrn)}/{quote(name)}",
                  mount_path=f"/cvmfs/{fqrn}/{name}", **page)


async def stylesheet(request: Request) -> Response:
    return FileResponse(HERE / "static" / "ui.css", media_type="text/css",
                        headers=dict(SECURITY_HEADERS, **{"Cache-Control": "max-age=3600"}))


async def to_index(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=308)


async def unknown(request: Request) -> Response:
    return not_found("page")


def routes() -> list[Route]:
    return [
        Route("/ui", to_index, methods=["GET", "HEAD"]),
        Route("/ui/", index, methods=["GET", "HEAD"]),
        Route("/ui/static/ui.css", stylesheet, methods=["GET", "HEAD"]),
        Route("/ui/repos/{fqrn}/", repository, methods=["GET", "HEAD"]),
        Route("/ui/repos/{fqrn}/ns/{namespace:path}", repository, methods=["GET", "HEAD"]),
        Route("/ui/repos/{fqrn}/artifacts/{name:path}", artifact, methods=["GET", "HEAD"]),
        Route("/ui/{rest:path}", unknown, methods=["GET", "HEAD"]),
    ]


def install(app: FastAPI) -> None:
    """Add the browser's routes (roles that hold repositories)."""
    app.router.routes.extend(routes())


__all__ = ["MAX_ARTIFACTS", "MAX_FILES", "human_size", "install", "relative", "routes"]
