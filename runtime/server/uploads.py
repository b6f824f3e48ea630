"""The upload API (``/repos/…``), compatible with the seed's routes and parameters.

Write routes need a bearer token; list and download are public. Every error is JSON
``{"detail": "<one line>"}`` with the status the seed's users expect (see ``_STATUS``).

An upload streams: the body is read with ``request.stream()`` and each piece goes straight to
the object store (hashed and compressed on the ingest pool); an archive to unpack goes through
a bounded pipe to a tar reader on a worker thread. Nothing holds a whole upload in memory, and
uploads run in parallel. Only the commit is serialized, by the repository's
:class:`~runtime.server.committer.GroupCommitter`; the response comes once the revision that
holds the artifact is published.

Failure at any point before the commit (bad input, size limit, malformed archive, client
disconnect, process death) leaves the published repository exactly as it was: the staged
transaction is aborted and its objects, if any were stored, are unreferenced and reclaimed by
gc. Once handed to the committer, a transaction is published or refused as a whole.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import json
import logging
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi import APIRouter, HTTPException, Request
from python_multipart.multipart import MultipartParser, parse_options_header
from python_multipart.exceptions import MultipartParseError
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from .responses import JSONResponse

from .. import logs
from ..gateway.hub import Hub
from ..gateway.notifier import Notifier
from ..repository import (ArtifactExists, ArtifactNotFound, InvalidPath, NotInitialized,
                          PublishResult, QuotaExceeded, Repository, RepositoryError,
                          RepositoryLocked, Transaction, validate_artifact_name)
from ..repository.names import (child_namespaces, namespaces_of, parent_namespace,
                                refuse_route_name)
from ..settings import Settings
from . import digests, downloads, requestlog, retention
from .auth import Authorizer
from .bodytimeout import BodyIdleTimeout
from .committer import GroupCommitter
from .downloads import DownloadSlots
from .metrics import Metrics
from .provenance import InvalidMetadata, metadata_from_headers, record as provenance_record
from ..ingest import IngestLimits, UnpackPool
from .unpack import ArchiveError, ArtifactTooLarge, stage_archive_async

log = logging.getLogger(__name__)

#: After refusing an upload part-way (limit, bad archive), read and discard at most this much
#: of the rest of the body so the client gets to read the answer (closing a socket with unread
#: data resets it, and the client would see a broken connection instead of the reason).
DRAIN_LIMIT = 64 * 1024 * 1024
#: The headers of one multipart part (a browser sends a few hundred bytes).
MAX_PART_HEADER_BYTES = 16 * 1024
#: Form fields read beside the file (``keep_last``, ``pin``), and the bytes each may have.
FORM_FIELDS = ("keep_last", "pin")
MAX_FORM_FIELD_BYTES = 64

_STATUS: list[tuple[type[BaseException], int]] = [
    (ArtifactTooLarge, 413), (QuotaExceeded, 413), (ArchiveError, 400), (InvalidPath, 400),
    (ArtifactExists, 409),
    (ArtifactNotFound, 404), (NotInitialized, 404), (RepositoryLocked, 503),
    (RepositoryError, 400), (InvalidMetadata, 400),
]


def storage_full(exc: BaseException) -> bool:
    """The server's disk (or quota) is full: the client may retry later, elsewhere (507)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


STORAGE_FULL = "the server's storage is full (no space left on device); nothing was published"


def out_of_descriptors(exc: BaseException) -> bool:
    """The process (EMFILE) or system (ENFILE) ran out of file descriptors: a busy server, not
    a broken one, so the client gets 503 and may retry."""
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)


OUT_OF_DESCRIPTORS = ("the server has too many open files right now; nothing was published, "
                      "retry later")


def status_for(exc: BaseException) -> int:
    if storage_full(exc):
        return 507
    if out_of_descriptors(exc):
        return 503
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail.splitlines()[0] if detail else "error"},
                        status_code=status)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class UploadService:
    """What the routes share: configuration, repositories, committers, metrics, notifier."""

    settings: Settings
    repositories: dict[str, Repository]
    authorizer: Authorizer
    metrics: Metrics
    hub: Hub | None = None
    notifier: Notifier | None = None
    committers: dict[str, GroupCommitter] = field(default_factory=dict)
    #: Archive parsing: fair slots per tenant and the ingest limits (runtime/ingest/pool.py).
    unpack_pool: UnpackPool = field(init=False)
    downloads: DownloadSlots = field(init=False)

    def __post_init__(self) -> None:
        self.unpack_pool = UnpackPool(self.settings.unpack_workers,
                                      self.settings.unpack_workers_per_tenant,
                                      IngestLimits.from_settings(self.settings),
                                      self.settings.unpack_workers_per_repository)
        self.downloads = DownloadSlots(self.settings.max_downloads_per_client,
                                       self.settings.max_downloads,
                                       self.settings.max_download_entries)
        for fqrn, repo in self.repositories.items():
            committer = GroupCommitter(repo)
            committer.on_commit = self._observe_commit
            self.committers[fqrn] = committer

    def _observe_commit(self, fqrn: str, batch: int, result: PublishResult | None) -> None:
        self.metrics.commit_batch.labels(fqrn).observe(batch)
        if result is not None and result.new_revision:
            self.metrics.publish_seconds.labels(fqrn).observe(result.publish_time_s)

    def repository(self, fqrn: str) -> Repository:
        repo = self.repositories.get(fqrn)
        if repo is None:
            raise HTTPException(404, f"repository {fqrn!r} not found")
        return repo

    def lifetime(self, ttl_s: int | None, expire_in: str | None,
                 fqrn: str | None = None) -> int | None:
        """Seconds until expiry from ``ttl_s`` or GitLab-style ``expire_in`` under the
        repository's lifetime rules (``retention.lifetime``); None for ``never``. 422."""
        name = fqrn or ""
        return retention.lifetime(self.settings.lifetimes(name), name or "this server",
                                  ttl_s, expire_in)

    async def close(self) -> None:
        for committer in self.committers.values():
            await committer.aclose()
        self.unpack_pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------------------------
# request bodies


class Counter:
    """Counts body bytes and enforces the size limit as they arrive."""

    def __init__(self, limit: int):
        self.limit = limit
        self.total = 0

    def __call__(self, n: int) -> None:
        self.total += n
        if self.total > self.limit:
            raise ArtifactTooLarge(f"artifact larger than the limit of {self.limit} bytes")


class MultipartBody:
    """Streams one field (``file``) out of a ``multipart/form-data`` body, without spooling."""

    def __init__(self, request: Request, field_name: str = "file"):
        ctype, params = parse_options_header(request.headers.get("content-type", ""))
        boundary = params.get(b"boundary")
        if ctype != b"multipart/form-data" or not boundary:
            raise HTTPException(400, "expected a multipart/form-data body with a 'file' field "
                                     "(or use PUT /repos/<repo>/<name> with the raw bytes)")
        self.stream = request.stream()
        self._field = field_name.encode()
        self._events: list[tuple[str, object]] = []
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._in_file = False
        self._header_bytes = 0
        self.filename: str | None = None
        #: the small form fields of FORM_FIELDS sent before or after the file (retention)
        self.fields: dict[str, str] = {}
        self._collect: str | None = None
        self._collected = bytearray()
        try:
            self._parser = self._make_parser(boundary)
        except (ValueError, LookupError) as exc:
            raise HTTPException(400, f"malformed multipart boundary: {exc}") from None

    def _make_parser(self, boundary: bytes) -> MultipartParser:
        return MultipartParser(boundary, {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_piece(self._header_field, d[s:e]),
            "on_header_value": lambda d, s, e: self._header_piece(self._header_value, d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": lambda d, s, e: self._events.append(("data", bytes(d[s:e]))),
            "on_part_end": lambda: self._events.append(("end", None)),
        })

    def _part_begin(self) -> None:
        self._headers = {}
        self._header_bytes = 0

    def _header_piece(self, into: bytearray, piece: bytes) -> None:
        """Part headers are kept only up to MAX_PART_HEADER_BYTES: beyond, the body is refused."""
        self._header_bytes += len(piece)
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise ArchiveError(f"malformed multipart body: part headers larger than "
                               f"{MAX_PART_HEADER_BYTES} bytes")
        into.extend(piece)

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        self._events.append(("part", dict(self._headers)))

    async def _feed(self) -> bool:
        """Parse the next piece of the body; False at its end."""
        try:
            chunk = await self.stream.__anext__()
        except StopAsyncIteration:
            return False
        try:
            self._parser.write(chunk)
        except ArchiveError:
            raise
        except (MultipartParseError, ValueError, LookupError) as exc:
            raise ArchiveError(f"malformed multipart body: {exc}") from exc
        return True

    def _form_event(self, kind: str, value: object) -> None:
        """A part other than the file: keep the value of a FORM_FIELDS field (bounded)."""
        if kind == "part":
            _disp, params = parse_options_header(
                value.get(b"content-disposition", b""))  # type: ignore[union-attr]
            name = (params.get(b"name") or b"").decode("utf-8", "replace")
            self._collect = name if name in FORM_FIELDS else None
            self._collected.clear()
        elif kind == "data" and self._collect is not None:
            self._collected.extend(value)  # type: ignore[arg-type]
            if len(self._collected) > MAX_FORM_FIELD_BYTES:
                raise ArchiveError(f"malformed multipart body: field {self._collect!r} is "
                                   f"longer than {MAX_FORM_FIELD_BYTES} bytes")
        elif kind == "end" and self._collect is not None:
            self.fields[self._collect] = self._collected.decode("utf-8", "replace")
            self._collect = None

    async def start(self) -> str | None:
        """Read up to the start of the file field; return its filename."""
        while True:
            while self._events:
                kind, value = self._events.pop(0)
                if kind == "part":
                    _disp, params = parse_options_header(
                        value.get(b"content-disposition", b""))  # type: ignore[union-attr]
                    if params.get(b"name") == self._field:
                        raw = params.get(b"filename")
                        self.filename = raw.decode("utf-8", "replace") if raw else None
                        self._in_file = True
                        return self.filename
                self._form_event(kind, value)
            if not await self._feed():
                raise HTTPException(400, "multipart body has no 'file' field")

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file field's bytes, then the rest of the body is read and ignored."""
        while self._in_file:
            while self._events:
                kind, value = self._events.pop(0)
                if not self._in_file:
                    self._form_event(kind, value)
                    continue
                if kind == "data":
                    yield value  # type: ignore[misc]
                elif kind == "end":
                    self._in_file = False
            if self._in_file and not await self._feed():
                raise ArchiveError("multipart body ended inside the 'file' field")
        while True:  # the rest: fields after the file are read too (bounded), data dropped
            while self._events:
                self._form_event(*self._events.pop(0))
            if not await self._feed():
                break


async def _drain(stream: AsyncIterator[bytes], limit: int) -> None:
    """Read and drop the rest of a body (bounded); see ``DRAIN_LIMIT``."""
    seen = 0
    try:
        async for chunk in stream:
            seen += len(chunk)
            if seen > limit:
                return
    except (ClientDisconnect, RuntimeError):
        return


# --------------------------------------------------------------------------------------------
# the upload itself


def _declared_length(request: Request) -> int | None:
    try:
        return int(request.headers["content-length"])
    except (KeyError, ValueError):
        return None


async def _stage_file(tx: Transaction, name: str, chunks: AsyncIterator[bytes],
                      count: Counter, room: "retention.QuotaRoom | None" = None) -> int:
    staged = tx.open_file(name, mode=0o644)
    try:
        async for chunk in chunks:
            count(len(chunk))
            if room is not None:  # -- retention: stop a file once it outgrows the quota
                room.check(count.total)
            if chunk:
                await staged.awrite(chunk)
        content = await staged.aclose()
    except BaseException:
        staged.abort()
        raise
    return content.size


def _outcome(status: int) -> str:
    if status < 300:
        return "published"
    return {408: "timed_out", 499: "abandoned"}.get(status, "refused" if status < 500 else "failed")


def _reason(response: Response) -> str:
    try:
        return str(json.loads(bytes(response.body)).get("detail", ""))
    except (ValueError, AttributeError):
        return ""


async def upload(service: UploadService, request: Request, fqrn: str, name: str | None,
                 *, multipart: bool, unpack: bool, overwrite: bool,
                 ttl_s: int | None, expire_in: str | None = None,
                 sha256: str | None = None, keep_last: str | None = None,
                 pin: str | None = None) -> Response:
    """One upload, logged as one line (repository, name, size, revision, duration, outcome,
    the token's label; never the token) whatever its outcome."""
    record: dict[str, Any] = {"repository": fqrn, "name": name, "size": 0, "revision": None,
                              "token": None, "unpack": unpack, "overwrite": overwrite}
    started = time.perf_counter()
    status, reason = 500, "internal error"
    try:
        response = await _upload(service, request, record, fqrn, name, multipart=multipart,
                                 unpack=unpack, overwrite=overwrite, ttl_s=ttl_s,
                                 expire_in=expire_in, sha256=sha256, keep_last=keep_last,
                                 pin=pin)
        status = response.status_code
        reason = _reason(response) if status >= 400 else ""
        if status == 200 and record.pop("refreshed", False):
            record["outcome"] = "refreshed"
        return response
    except HTTPException as exc:
        status, reason = exc.status_code, str(exc.detail)
        raise
    finally:
        outcome = record.pop("outcome", None) or _outcome(status)
        level = (logging.INFO if status < 400 or status == 499
                 else logging.WARNING if status < 500 else logging.ERROR)
        fields = {**record, "status": status, "outcome": outcome,
                  "duration_s": round(time.perf_counter() - started, 6)}
        if reason:
            fields["reason"] = reason
        logs.event(log, level, f"upload {fqrn}/{record['name'] or '?'}: {outcome}", **fields)
        requestlog.event_logged()


async def _client_gone(request: Request) -> bool:
    """True when the client has disconnected (checked once the body is complete)."""
    try:
        return await request.is_disconnected()
    except (RuntimeError, ClientDisconnect):
        return True


async def _upload(service: UploadService, request: Request, record: dict[str, Any], fqrn: str,
                  name: str | None, *, multipart: bool, unpack: bool, overwrite: bool,
                  ttl_s: int | None, expire_in: str | None,
                  sha256: str | None, keep_last: str | None = None,
                  pin: str | None = None) -> Response:
    """Authorize, check, stream, commit, answer."""
    principal = await service.authorizer.check(request, fqrn, name=name, ttl_s=ttl_s)
    record["token"] = principal.label
    repo = service.repository(fqrn)
    try:
        ttl = _principal_lifetime(principal, fqrn, name,
                                  service.lifetime(ttl_s, expire_in, fqrn),
                                  explicit=ttl_s is not None or expire_in is not None)
        want = digests.expected(request.headers.get("content-digest"), sha256)
        keep_q, pin_q = retention.parse_keep_last(keep_last), retention.parse_pin(pin)
    except HTTPException as exc:
        # refused before the body is read: drain it (bounded) so the client reads the reason
        await _drain(request.stream(), DRAIN_LIMIT)
        service.metrics.uploads.labels(fqrn, "refused").inc()
        return error(exc.status_code, str(exc.detail))
    limit = service.settings.max_artifact_bytes
    declared = _declared_length(request)
    slack = 64 * 1024 if multipart else 0  # multipart framing around the file bytes
    if declared is not None and declared > limit + slack:
        service.metrics.uploads.labels(fqrn, "too_large").inc()
        return error(413, f"artifact larger than the limit of {limit} bytes "
                          f"(Content-Length {declared})")
    body: MultipartBody | None = None
    if multipart:
        body = MultipartBody(request)
        try:
            filename = await body.start()
        except BodyIdleTimeout as exc:
            return _timed_out(service, fqrn, exc)
        except ClientDisconnect:
            return _abandoned(service, fqrn, name or "")
        except ArchiveError as exc:
            await _drain(body.stream, DRAIN_LIMIT)
            service.metrics.uploads.labels(fqrn, "refused").inc()
            return error(400, str(exc))
        if name is None:
            name = filename or ""
            record["name"] = name
        chunks, raw_stream = body.chunks(), body.stream
    else:
        chunks = raw_stream = request.stream()
    hashed = digests.HashingBody(chunks, want)
    chunks = hashed.pieces()
    assert name is not None
    try:
        refuse_route_name(validate_artifact_name(name, repo.max_name_depth))
        principal.authorize(fqrn, name=name)
        meta = metadata_from_headers(request.headers.raw)
        exists = await asyncio.to_thread(_name_conflict, repo, name)
        if exists is not None:
            raise ArtifactExists(exists)
        if not overwrite and _exists(repo, name):
            raise ArtifactExists(f"artifact {name!r} already exists in {fqrn}; "
                                 "pass overwrite=true to replace it")
        # a file's size is known before staging (Content-Length), and its bytes as they come
        room = None if unpack else await asyncio.to_thread(
            retention.precheck_quota, service.settings.lifetimes(fqrn), fqrn, name,
            0 if declared is None else max(0, declared - slack),
            lambda top: repo.artifacts(prefix=top))
    except (RepositoryError, InvalidMetadata) as exc:
        await _drain(raw_stream, DRAIN_LIMIT)
        service.metrics.uploads.labels(fqrn, "refused").inc()
        return error(status_for(exc), str(exc))

    started = time.perf_counter()
    count = Counter(limit)
    tx = repo.begin()
    try:
        tx.artifact(name)
        if not overwrite:
            tx.require_absent.add(name)
        if unpack:
            if overwrite and _exists(repo, name):
                tx.remove(name)
            stats = await stage_archive_async(tx, name, chunks, executor=service.unpack_pool,
                                              max_bytes=limit, on_bytes=count,
                                              tenant=principal.label)
            extra = {"files": stats.files + stats.hardlinks, "image": stats.image}
        else:
            await _stage_file(tx, name, chunks, count, room)
            extra = {"sha256": hashed.hexdigest()}
        hashed.verify()  # a mismatch raises 400 here: the transaction is aborted below
        if not unpack:
            tx.set_sha256(name, hashed.hexdigest())
        form = body.fields if body is not None else {}
        keep = retention.merge("keep_last", keep_q,
                               retention.parse_keep_last(form.get("keep_last")))
        pinned = retention.merge("pin", pin_q, retention.parse_pin(form.get("pin")))
        if keep is not None:
            tx.set_keep_last(name, keep)  # type: ignore[arg-type]
        if pinned is not None:
            tx.set_pin(name, bool(pinned))
        tx.set_expiry(name, None if ttl is None else repo.clock() + ttl)
        tx.set_provenance(name, provenance_record(principal, meta))
    except BodyIdleTimeout as exc:
        tx.abort()
        return _timed_out(service, fqrn, exc)
    except ClientDisconnect:
        tx.abort()
        return _abandoned(service, fqrn, name)
    except BaseException as exc:
        tx.abort()
        if (not isinstance(exc, (RepositoryError, HTTPException)) and not storage_full(exc)
                and not out_of_descriptors(exc)):
            raise
        await _drain(raw_stream, DRAIN_LIMIT)
        service.metrics.uploads.labels(fqrn, "refused").inc()
        if isinstance(exc, HTTPException):
            raise
        return error(status_for(exc), _detail_for(exc))
    finally:
        record["size"] = count.total
    upload_time = time.perf_counter() - started
    if await _client_gone(request):
        # the client gave up while its body was being unpacked (a busy pool): nobody waits
        # for this revision, and publishing it later would surprise whoever retries
        tx.abort()
        return _abandoned(service, fqrn, name)

    try:
        result = await service.committers[fqrn].commit(tx)
    except (RepositoryError, OSError) as exc:
        if (not isinstance(exc, RepositoryError) and not storage_full(exc)
                and not out_of_descriptors(exc)):
            raise
        service.metrics.uploads.labels(fqrn, "refused").inc()
        return error(status_for(exc), _detail_for(exc))
    service.metrics.uploads.labels(fqrn, "published").inc()
    service.metrics.upload_bytes.labels(fqrn).inc(count.total)
    info = repo.artifact(name)
    record.update(size=info.size, revision=result.revision,
                  refreshed=name in result.refreshed, **extra)
    return JSONResponse({
        "name": name, "path": f"/cvmfs/{fqrn}/{name}", "size": info.size,
        "revision": result.revision, "expires_at": iso(info.expires_at),
        "upload_time_s": round(upload_time, 6), "publish_time_s": round(result.publish_time_s, 6),
        "refreshed": name in result.refreshed, "digest_verified": want is not None, **extra,
        "provenance": info.provenance,
        # -- retention --
        "pinned": info.pinned, "removed": list(tx.pruned),
    })


def _exists(repo: Repository, name: str) -> bool:
    try:
        repo.artifact(name)
    except ArtifactNotFound:
        return False
    return True


def _name_conflict(repo: Repository, name: str) -> str | None:
    """Why ``name`` cannot be an artifact now (409 before the body is read); None if it can.

    Only a fast early answer: the commit decides again under the writer lock
    (``Commit.check_names``), so two uploads racing for ``a/b`` and ``a/b/c`` never both win.
    """
    fqrn = repo.fqrn
    for ns in namespaces_of(name):
        if _exists(repo, ns):
            return f"{ns!r} is an artifact in {fqrn}, so {name!r} cannot be created under it"
    if repo.is_namespace(name):
        return (f"{name!r} is a namespace holding artifacts in {fqrn}; it cannot also be an "
                f"artifact (list them with ?prefix={name}/)")
    return None


def _principal_lifetime(principal: Any, fqrn: str, name: str | None, lifetime: int | None,
                        *, explicit: bool) -> int | None:
    """The lifetime this identity may give: an explicit one above its maximum (or ``never``
    when it has one) is refused (403); the server's default is lowered to it."""
    if principal.max_ttl_s is not None and lifetime is None:
        raise HTTPException(403, f"'{principal.label}' may not upload artifacts that never "
                                 f"expire (its maximum lifetime is {principal.max_ttl_s} s)")
    if lifetime is None:
        return None
    if explicit:
        principal.authorize(fqrn, name=name, ttl_s=lifetime)
    return principal.cap_ttl(lifetime)


def _detail_for(exc: BaseException) -> str:
    if storage_full(exc):
        return STORAGE_FULL
    if out_of_descriptors(exc):
        return OUT_OF_DESCRIPTORS
    return str(exc)


def _timed_out(service: UploadService, fqrn: str, exc: BodyIdleTimeout) -> Response:
    service.metrics.uploads.labels(fqrn, "timed_out").inc()
    response = error(408, str(exc))
    response.headers["Connection"] = "close"  # the client is stalled: do not keep it around
    return response


def _abandoned(service: UploadService, fqrn: str, name: str) -> Response:
    service.metrics.uploads.labels(fqrn, "disconnected").inc()
    return Response(status_code=499)


# --------------------------------------------------------------------------------------------
# reading artifacts back


class _ChangeLog:
    """One log line for a delete or a TTL change, whatever its outcome (like an upload's)."""

    def __init__(self, what: str, fqrn: str, name: str):
        self.what, self.fqrn, self.name = what, fqrn, name
        self.token: str | None = None
        self.revision: int | None = None
        self.fields: dict[str, Any] = {}
        self.status, self.reason = 500, "internal error"

    def answer(self, response: Response) -> Response:
        self.status = response.status_code
        self.reason = _reason(response) if self.status >= 400 else ""
        return response

    def __enter__(self) -> "_ChangeLog":
        self.started = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        if isinstance(exc, HTTPException):
            self.status, self.reason = exc.status_code, str(exc.detail)
        outcome = "done" if self.status < 400 else "refused" if self.status < 500 else "failed"
        fields = {"repository": self.fqrn, "name": self.name, "revision": self.revision,
                  "token": self.token, **self.fields, "status": self.status,
                  "outcome": outcome, "duration_s": round(time.perf_counter() - self.started, 6)}
        if self.reason:
            fields["reason"] = self.reason
        level = (logging.INFO if self.status < 400
                 else logging.WARNING if self.status < 500 else logging.ERROR)
        logs.event(log, level, f"{self.what} {self.fqrn}/{self.name}: {outcome}", **fields)
        requestlog.event_logged()


#: Kept for callers of the old name (tests/test_unpack.py reads files back with it).
_content = downloads.file_content


def _disposition(filename: str) -> str:
    return f"attachment; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"


def _file_download(repo: Repository, request: Request, name: str, entry: Any) -> Response:
    """A file artifact: 200, 206 (one ``Range``), 304 (``If-None-Match``) or 416, with a
    strong ETag from the content hash; ``If-Range`` with another ETag (or a date) gets the
    whole file. HEAD answers the same headers without reading any content."""
    tag = downloads.etag(entry)
    headers = {"ETag": tag, "Accept-Ranges": "bytes", "Content-Disposition": _disposition(name)}
    none_match = request.headers.get("if-none-match")
    if none_match is not None and downloads.etag_matches(none_match, tag, weak=True):
        return Response(status_code=304, headers=headers)
    wanted = None
    if_range = request.headers.get("if-range")
    if if_range is None or downloads.etag_matches(if_range, tag, weak=False):
        try:
            wanted = downloads.parse_range(request.headers.get("range"), entry.size)
        except downloads.Unsatisfiable:
            return Response(status_code=416, headers={
                **headers, "Content-Range": f"bytes */{entry.size}"})
    if wanted is None:
        status, first, last = 200, 0, entry.size - 1
    else:
        status, (first, last) = 206, wanted
        headers["Content-Range"] = f"bytes {first}-{last}/{entry.size}"
    headers["Content-Length"] = str(max(0, last - first + 1))
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers,
                        media_type="application/octet-stream")
    content = (downloads.file_content(repo, entry) if status == 200
               else downloads.file_range(repo, entry, first, last))
    return downloads.SlotResponse(downloads.stream(content), None, status_code=status,
                                  media_type="application/octet-stream", headers=headers)


# --------------------------------------------------------------------------------------------
# routes


def router() -> APIRouter:
    r = APIRouter()

    def svc(request: Request) -> UploadService:
        return request.app.state.uploads

    @r.post("/repos/{fqrn}")
    async def post_upload(request: Request, fqrn: str, unpack: bool = False,
                          overwrite: bool = False, ttl_s: int | None = None,
                          name: str | None = None, expire_in: str | None = None,
                          sha256: str | None = None, keep_last: str | None = None,
                          pin: str | None = None) -> Response:
        """Seed-compatible multipart upload (field ``file``; its filename names the artifact;
        fields ``keep_last`` and ``pin`` beside it, like the query parameters)."""
        return await upload(svc(request), request, fqrn, name, multipart=True, unpack=unpack,
                            overwrite=overwrite, ttl_s=ttl_s, expire_in=expire_in,
                            sha256=sha256, keep_last=keep_last, pin=pin)

    @r.put("/repos/{fqrn}/{name:path}")
    async def put_upload(request: Request, fqrn: str, name: str, unpack: bool = False,
                         overwrite: bool = False, ttl_s: int | None = None,
                         expire_in: str | None = None, sha256: str | None = None,
                         keep_last: str | None = None, pin: str | None = None) -> Response:
        """Raw body upload (``curl -T file``)."""
        return await upload(svc(request), request, fqrn, name, multipart=False, unpack=unpack,
                            overwrite=overwrite, ttl_s=ttl_s, expire_in=expire_in,
                            sha256=sha256, keep_last=keep_last, pin=pin)

    @r.get("/repos/{fqrn}")
    async def list_artifacts(request: Request, fqrn: str, prefix: str = "") -> Response:
        """Every artifact, or with ``?prefix=team-a/`` those of that namespace (recursively;
        matched at segment boundaries), plus the namespaces directly below the prefix."""
        repo = svc(request).repository(fqrn)
        try:
            arts = await asyncio.to_thread(repo.artifacts, prefix)
        except RepositoryError as exc:
            return error(422, f"invalid prefix: {exc}")
        base = prefix.rstrip("/")
        return JSONResponse({
            "repository": fqrn, "revision": repo.revision(), "prefix": base,
            "namespaces": child_namespaces([(a.name, a.size) for a in arts], base),
            "files": [{"name": a.name, "kind": a.kind, "size": a.size, "files": a.files,
                       "expires_at": iso(a.expires_at), "created_at": iso(a.created_at),
                       "revision": a.revision, "provenance": a.provenance,
                       # -- retention --
                       "pinned": a.pinned, "sha256": a.sha256} for a in arts]})

    # -- retention: usage (before the download route, which would take "usage" as a name) --
    @r.get("/repos/{fqrn}/usage")
    async def usage(request: Request, fqrn: str) -> Response:
        """Bytes and artifacts per top-level namespace, and the quota (public, like the list)."""
        service = svc(request)
        repo = service.repository(fqrn)
        arts = await asyncio.to_thread(repo.artifacts)
        return JSONResponse(retention.usage_report(fqrn, repo.revision(),
                                                   service.settings.lifetimes(fqrn), arts))

    @r.head("/repos/{fqrn}/{name:path}")
    async def head_download(request: Request, fqrn: str, name: str) -> Response:
        """The download's headers, without its body (a directory's tar is not generated)."""
        return await download(request, fqrn, name)

    @r.get("/repos/{fqrn}/{name:path}")
    async def download(request: Request, fqrn: str, name: str) -> Response:
        service = svc(request)
        repo = service.repository(fqrn)
        head = request.method == "HEAD"
        try:
            validate_artifact_name(name, repo.max_name_depth)
            info = await asyncio.to_thread(repo.artifact, name)
        except RepositoryError as exc:
            if isinstance(exc, ArtifactNotFound) and await asyncio.to_thread(
                    repo.is_namespace, name):
                return error(404, f"{name!r} is a namespace, not an artifact; list it with "
                                  f"GET /repos/{fqrn}?prefix={name}/")
            return error(status_for(exc), str(exc))
        leaf = name.rpartition("/")[2]
        if info.kind == "dir" and head:
            # headers only: the tar is neither generated nor admitted (its size is unknown
            # without generating it, so no Content-Length)
            return Response(headers={"Content-Type": "application/x-tar",
                                     "Content-Disposition": _disposition(leaf + ".tar")})
        slot = None
        if info.kind == "dir":
            client = request.client.host if request.client else "?"
            slot = service.downloads.acquire(client, max(1, info.files))
        if info.kind == "dir" and info.catalog_hash:
            try:  # streamed from the nested catalog: constant memory whatever the entries
                entries = await asyncio.to_thread(downloads.artifact_entries, repo, name,
                                                  info.catalog_hash)
            except BaseException:
                slot.release()  # type: ignore[union-attr]
                raise
            return downloads.SlotResponse(
                downloads.stream(downloads.tar_pieces(repo, entries), slot), slot,
                media_type="application/x-tar",
                headers={"Content-Disposition": _disposition(leaf + ".tar")})
        try:
            tree = await asyncio.to_thread(repo.artifact_tree, name)
        except BaseException as exc:
            if slot is not None:
                slot.release()
            if isinstance(exc, RepositoryError):
                return error(status_for(exc), str(exc))
            raise
        top = tree[f"/{name}"]
        if top.is_regular:
            return _file_download(repo, request, leaf, top)
        # members are named from the artifact's own directory (``pr-123/...``), as for a
        # top-level artifact, whatever namespace holds it
        cut = len(parent_namespace(name)) + 1 if "/" in name else 0
        entries = ((path[cut:], e) for path, e in downloads.sorted_entries(tree))
        pieces = downloads.tar_pieces(repo, entries)
        del tree  # the sorted iterator holds what the stream still needs
        return downloads.SlotResponse(downloads.stream(pieces, slot), slot,
                                      media_type="application/x-tar",
                                      headers={"Content-Disposition": _disposition(leaf + ".tar")})

    @r.delete("/repos/{fqrn}/{name:path}")
    async def delete(request: Request, fqrn: str, name: str,
                     recursive: bool = False) -> Response:
        """Delete an artifact; ``?recursive=true`` deletes a namespace (every artifact under
        it, decided at commit) in one revision."""
        service = svc(request)
        with _ChangeLog("delete", fqrn, name) as change:
            repo = service.repository(fqrn)
            try:
                validate_artifact_name(name.rstrip("/") if recursive else name,
                                       repo.max_name_depth)
            except RepositoryError as exc:
                await service.authorizer.check(request, fqrn, name=name)
                return change.answer(error(status_for(exc), str(exc)))
            name = name.rstrip("/")
            namespace = not _exists(repo, name) and await asyncio.to_thread(
                repo.is_namespace, name)
            # a namespace delete touches only names below ``name/``: a token scoped to
            # ``team-a/`` may empty ``team-a`` but never write the name ``team-a`` itself
            scope = name + "/" if namespace else name
            change.token = (await service.authorizer.check(request, fqrn, name=scope)).label
            if namespace and not recursive:
                return change.answer(error(409, f"{name!r} is a namespace holding artifacts; "
                                                "pass recursive=true to delete all of them"))
            try:
                tx = repo.begin()
                if namespace:
                    tx.remove_namespace(name)
                else:
                    tx.remove(tx.artifact(name))
                result = await service.committers[fqrn].commit(tx)
            except RepositoryError as exc:
                return change.answer(error(status_for(exc), str(exc)))
            change.revision = result.revision
            body: dict[str, Any] = {"name": name, "revision": result.revision,
                                    "publish_time_s": round(result.publish_time_s, 6)}
            if namespace:
                body["removed"] = sorted(result.removed)
                change.fields["removed"] = len(result.removed)
            return change.answer(JSONResponse(body))

    @r.post("/repos/{fqrn}/{name:path}/ttl")
    async def set_ttl(request: Request, fqrn: str, name: str,
                      ttl_s: int | None = None, expire_in: str | None = None) -> Response:
        service = svc(request)
        with _ChangeLog("ttl", fqrn, name) as change:
            principal = await service.authorizer.check(request, fqrn, name=name, ttl_s=ttl_s)
            change.token = principal.label
            repo = service.repository(fqrn)
            if ttl_s is None and expire_in is None:
                return change.answer(error(422, "query parameter ttl_s (or expire_in) is "
                                                "required"))
            ttl = _principal_lifetime(principal, fqrn, name,
                                      service.lifetime(ttl_s, expire_in, fqrn), explicit=True)
            change.fields["ttl_s"] = ttl
            try:
                validate_artifact_name(name, repo.max_name_depth)
                tx = repo.begin()
                tx.set_expiry(name, None if ttl is None else repo.clock() + ttl)
                result = await service.committers[fqrn].commit(tx)
            except RepositoryError as exc:
                return change.answer(error(status_for(exc), str(exc)))
            change.revision = result.revision
            expires = iso(repo.artifact(name).expires_at)
            change.fields["expires_at"] = expires
            return change.answer(JSONResponse({"name": name, "revision": result.revision,
                                               "expires_at": expires}))

    # -- retention: pin / unpin an existing artifact (the ttl route's style and role) --
    @r.post("/repos/{fqrn}/{name:path}/pin")
    async def set_pin(request: Request, fqrn: str, name: str,
                      pin: str | None = None) -> Response:
        """``?pin=true`` (the default) exempts the artifact from keep_last; ``false`` ends it."""
        service = svc(request)
        with _ChangeLog("pin", fqrn, name) as change:
            change.token = (await service.authorizer.check(request, fqrn, name=name)).label
            repo = service.repository(fqrn)
            pinned = retention.parse_pin(pin)
            pinned = True if pinned is None else pinned
            change.fields["pinned"] = pinned
            try:
                validate_artifact_name(name, repo.max_name_depth)
                tx = repo.begin()
                tx.set_pin(name, pinned)
                result = await service.committers[fqrn].commit(tx)
            except RepositoryError as exc:
                return change.answer(error(status_for(exc), str(exc)))
            change.revision = result.revision
            return change.answer(JSONResponse({
                "name": name, "pinned": repo.artifact(name).pinned,
                "revision": result.revision}))

    @r.post("/repos/{fqrn}/notify")
    async def notify(request: Request, fqrn: str) -> Response:
        """Send the current revision to subscribers again (seed route)."""
        service = svc(request)
        await service.authorizer.check(request, fqrn)
        repo = service.repository(fqrn)
        if service.settings.gateway_url and service.notifier is not None:
            service.notifier.notify(fqrn, repo.manifest_bytes())
            return JSONResponse({"repository": fqrn, "revision": repo.revision(),
                                 "gateway": service.settings.gateway_url})
        if service.hub is not None:
            msg = await service.hub.resend(fqrn)
            subs = service.hub.subscriber_counts().get(fqrn, 0)
            return JSONResponse({"repository": fqrn, "revision": msg.revision if msg else None,
                                 "subscribers": subs})
        return error(503, "no notification gateway is configured for this server")

    return r
