"""Serving the repository like a stratum 0 (docs/cvmfs-format.md: "Serving over HTTP", "HTTP caching"), for the embedded default.

Only names a client or ``cvmfs_swissknife pull`` may ask for are served; everything else is a
404, which also confines requests to the repository (no ``..``, no private area, no keys).
Odd paths (overlong names, NULs, encoded slashes) are 404s too, never errors.
Objects are immutable and cached for 3 days; the signed files and public keys are ``no-cache``:
a proxy may keep them but must ask the stratum 0 before every use, so a client notified of a
publish never gets the previous manifest from a site cache (a ``max-age`` would let it, and the
client would then wait a whole TTL). The headers are exactly nginx's (tests compare them). No
``Content-Encoding``, ``ETag`` or ``Last-Modified`` (the client hashes raw bodies and Squid
mishandles validators). In Docker and Kubernetes nginx serves the same files with the same
rules (``deploy/nginx/stratum0.conf``).
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response

from ..settings import FQRN_RE

SIGNED_FILES = (".cvmfspublished", ".cvmfswhitelist", ".cvmfs_master_replica")
OBJECT_RE = re.compile(r"^data/[0-9a-f]{2}/[0-9a-f]{38}[CPHXM]?$")
META_RE = re.compile(r"^([a-z0-9][a-z0-9_.-]{0,252})\.(pub|crt)$")

#: The signed files and keys: revalidated on every use (squid stores them, asks each time).
NO_CACHE = "no-cache"
#: Content-addressed objects: never change (3 days, like cvmfs_server's Apache configuration).
IMMUTABLE = "public, max-age=259200, immutable"


class _PlainFileResponse(FileResponse):
    """A file response without validators (no ETag, no Last-Modified), like cvmfs's Apache."""

    def set_stat_headers(self, stat_result) -> None:  # type: ignore[no-untyped-def]
        super().set_stat_headers(stat_result)
        for header in ("etag", "last-modified"):
            if header in self.headers:
                del self.headers[header]


def _not_found() -> Response:
    return PlainTextResponse("not found\n", status_code=404)


def _file(path: Path, media_type: str, cache: str) -> Response:
    try:
        if not path.is_file():
            return _not_found()
    except (OSError, ValueError):  # a name too long for the filesystem, a NUL: not a file here
        return _not_found()
    return _PlainFileResponse(path, media_type=media_type, headers={"Cache-Control": cache})


def repository_file(data_dir: Path, fqrn: str, relpath: str) -> Response:
    """``GET|HEAD /cvmfs/<fqrn>/<relpath>``."""
    if not FQRN_RE.match(fqrn):  # never let a path parameter walk out of public/
        return PlainTextResponse("not found\n", status_code=404)
    base = Path(data_dir) / "public" / fqrn
    if relpath in SIGNED_FILES:
        return _file(base / relpath, "application/x-cvmfs", NO_CACHE)
    if OBJECT_RE.match(relpath):
        return _file(base / relpath, "application/octet-stream", IMMUTABLE)
    return PlainTextResponse("not found\n", status_code=404)


def meta_file(data_dir: Path, name: str) -> Response:
    """``GET|HEAD /cvmfs-meta/<fqrn>.pub|.crt``: the public key and certificate."""
    m = META_RE.match(name)
    if not m:
        return PlainTextResponse("not found\n", status_code=404)
    media = "application/x-pem-file"
    return _file(Path(data_dir) / "meta" / name, media, NO_CACHE)


def routes(data_dir: Path):
    """Starlette routes for the stratum 0 (mounted by the app for roles that serve it)."""
    from starlette.routing import Route

    async def repo(request: Request) -> Response:
        return repository_file(data_dir, request.path_params["fqrn"], request.path_params["path"])

    async def meta(request: Request) -> Response:
        return meta_file(data_dir, request.path_params["name"])

    return [
        Route("/cvmfs/{fqrn}/{path:path}", repo, methods=["GET", "HEAD"]),
        Route("/cvmfs-meta/{name}", meta, methods=["GET", "HEAD"]),
    ]
