"""``upload``: publish a file, a directory or an image archive from a CI job.

The artifact is streamed with ``PUT /repos/<fqrn>/<name>`` (a directory as a tar generated on
the fly, so nothing is staged on the CI machine's disk), with an exact ``Content-Length`` so
the server can refuse an oversized artifact before any byte is sent. The token comes from
``CVMFS_EPHEMERAL_TOKEN`` (never from the command line, where other users could read it).

Connection errors and 5xx answers are retried with exponential backoff (the whole upload is
sent again; the server keeps nothing of a failed attempt). A 4xx answer is final. The exit
status is 0 only when the artifact is published; the path and expiry are printed (JSON with
``--json``). ``--wait-visible`` then polls the public ``.cvmfspublished`` until the stratum 0
serves that revision.

Metadata: each ``--meta KEY=VALUE`` is sent as an ``X-Artifact-Meta-KEY`` header and kept with
the artifact's provenance. In GitHub Actions and GitLab CI the job's ``commit-sha``,
``pipeline-url`` and ``ref`` are added from the runner's environment (:func:`ci_metadata`;
``--no-ci-meta`` leaves them out; an explicit ``--meta`` of the same key wins).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, List, Mapping, Optional

import typer

from ..cli_common import check_url, client_token, explain_status

if TYPE_CHECKING:
    import httpx

# httpx, the tar writer and json are imported inside the functions that use them: ``upload
# --help`` and every other command of the CLI start without paying for them (bench/cli_startup.py).

RETRY_STATUSES = range(500, 600)
BLOCK = 1024 * 1024
#: Files up to this size are hashed in a pre-pass so the server can verify them
#: (``Content-Digest``). The header must precede the body and HTTP/1.1 trailers are not an
#: option with our server and proxies, so the digest costs a second read of the file; below
#: this size that read is mostly served from the page cache and takes well under a second
#: (SHA-256 runs at over 1 GB/s), beside an upload that takes longer. Larger files go without a
#: digest rather than doubling the disk reads of a CI job; TCP and TLS checksums still apply.
DIGEST_PREPASS_LIMIT = 1024**3


class UploadFailed(Exception):
    """Final failure: message for the user, and the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _file_body(path: Path, progress: Callable[[int], None]) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while True:
            block = fh.read(BLOCK)
            if not block:
                return
            progress(len(block))
            yield block


def file_digest(path: Path) -> str:
    """``Content-Digest`` value (RFC 9530) of a file's SHA-256, read in blocks."""
    import base64
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            h.update(block)
    return f"sha-256=:{base64.b64encode(h.digest()).decode()}:"


def _dir_body(path: Path, progress: Callable[[int], None]) -> Iterator[bytes]:
    from .. import tarstream

    for piece in tarstream.directory(path):
        progress(len(piece))
        yield piece


class _Progress:
    """A rich progress bar on a terminal; nothing otherwise (CI logs stay clean)."""

    def __init__(self, total: int, label: str, enabled: bool):
        self._bar = None
        if enabled:
            from rich.progress import (BarColumn, DownloadColumn, Progress,
                                       TransferSpeedColumn, TimeRemainingColumn)
            self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                                 DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                                 transient=True)
            self._task = self._bar.add_task(label, total=total)

    def __enter__(self) -> "_Progress":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def reset(self) -> None:
        if self._bar is not None:
            self._bar.reset(self._task)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)


_META_KEY = re.compile(r"[A-Za-z0-9-]{1,64}")


def ci_metadata(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``commit-sha``, ``pipeline-url`` and ``ref`` of the CI job running this, if any.

    GitHub Actions: ``GITHUB_SHA``, ``GITHUB_SERVER_URL``/``GITHUB_REPOSITORY``/actions/runs/
    ``GITHUB_RUN_ID``, ``GITHUB_REF``. GitLab CI: ``CI_COMMIT_SHA``, ``CI_PIPELINE_URL``,
    ``CI_COMMIT_REF_NAME``. Elsewhere: nothing.
    """
    env = os.environ if env is None else env
    out: dict[str, str] = {}
    if env.get("GITHUB_ACTIONS") == "true" or env.get("GITHUB_SHA"):
        if env.get("GITHUB_SHA"):
            out["commit-sha"] = env["GITHUB_SHA"]
        if env.get("GITHUB_SERVER_URL") and env.get("GITHUB_REPOSITORY") \
                and env.get("GITHUB_RUN_ID"):
            out["pipeline-url"] = (f"{env['GITHUB_SERVER_URL'].rstrip('/')}/"
                                   f"{env['GITHUB_REPOSITORY']}/actions/runs/"
                                   f"{env['GITHUB_RUN_ID']}")
        if env.get("GITHUB_REF"):
            out["ref"] = env["GITHUB_REF"]
    elif env.get("GITLAB_CI") == "true" or env.get("CI_COMMIT_SHA"):
        for key, var in (("commit-sha", "CI_COMMIT_SHA"), ("pipeline-url", "CI_PIPELINE_URL"),
                         ("ref", "CI_COMMIT_REF_NAME")):
            if env.get(var):
                out[key] = env[var]
    return out


def parse_meta(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict; a malformed one is a usage error (exit status 2)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _META_KEY.fullmatch(key):
            raise UploadFailed(f"--meta {item!r}: expected KEY=VALUE with KEY of 1 to 64 "
                               "A-Z a-z 0-9 -", 2)
        out[key.lower()] = value
    return out


def upload(source: Path, *, url: str, repo: str, name: str | None = None,
           ttl_s: int | None = None, unpack: bool = False, overwrite: bool = False,
           token: str = "", retries: int = 5, backoff_s: float = 1.0, timeout_s: float = 600.0,
           progress: bool = False, log: Callable[[str], None] = lambda _m: None,
           expire_in: str | None = None, digest: bool = True,
           meta: Mapping[str, str] | None = None, keep_last: int | None = None,
           pin: bool | None = None) -> dict:
    """Upload ``source``; return the server's JSON answer. Raises :class:`UploadFailed`.

    With ``digest`` (the default) a file up to :data:`DIGEST_PREPASS_LIMIT` is sent with its
    ``Content-Digest``, computed once (retries reuse it); the server refuses a body that does
    not match. A directory's tar is generated while it is sent, so it goes without one."""
    import httpx

    from .. import tarstream

    source = Path(source)
    if source.is_dir():
        body: Callable[[Callable[[int], None]], Iterator[bytes]] = (
            lambda p: _dir_body(source, p))
        try:
            size = tarstream.directory_size(source)
        except ValueError as exc:  # a device or fifo in the tree: the server refuses those
            raise UploadFailed(str(exc), 2) from exc
        unpack = True
    elif source.is_file():
        body = lambda p: _file_body(source, p)  # noqa: E731
        size = source.stat().st_size
    else:
        raise UploadFailed(f"{source}: no such file or directory", 2)
    name = name or source.resolve().name
    params: dict[str, str] = {"unpack": str(unpack).lower(), "overwrite": str(overwrite).lower()}
    if ttl_s is not None:
        params["ttl_s"] = str(ttl_s)
    if expire_in is not None:
        params["expire_in"] = expire_in
    if keep_last is not None:  # -- retention --
        params["keep_last"] = str(keep_last)
    if pin is not None:
        params["pin"] = str(pin).lower()
    headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
    if digest and source.is_file():
        if size <= DIGEST_PREPASS_LIMIT:
            headers["Content-Digest"] = file_digest(source)
        else:
            log(f"{source}: larger than {DIGEST_PREPASS_LIMIT} bytes, sent without a "
                "Content-Digest (see --no-digest)")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for key, value in (meta or {}).items():
        # httpx sends str headers as ASCII: UTF-8 values go as bytes
        headers[f"X-Artifact-Meta-{key}"] = value.encode("utf-8")  # type: ignore[assignment]
    endpoint = f"{url.rstrip('/')}/repos/{repo}/{_quote(name)}"
    attempt = 0
    with _Progress(size, name, progress) as bar, httpx.Client(timeout=timeout_s) as client:
        while True:
            attempt += 1
            bar.reset()
            try:
                resp = client.put(endpoint, params=params, headers=headers,
                                  content=body(bar.advance))
            except httpx.TransportError as exc:
                reason = f"connection failed: {exc}"
            else:
                if resp.status_code == 200:
                    return resp.json()
                detail = _detail(resp)
                if resp.status_code not in RETRY_STATUSES:
                    raise UploadFailed(f"upload refused ({resp.status_code}): "
                                       f"{explain_status(resp.status_code, detail)}")
                reason = f"server error {resp.status_code}: {detail}"
            if attempt > retries:
                raise UploadFailed(f"giving up after {attempt} attempts; last: {reason}")
            delay = backoff_s * 2 ** (attempt - 1)
            log(f"attempt {attempt} failed ({reason}); retrying in {delay:.0f} s")
            time.sleep(delay)


def _quote(name: str) -> str:
    """``team-a/app/pr-123`` as URL path segments. A ``.`` or ``..`` segment is sent encoded
    (``%2E``), so no HTTP library removes it on the way: the server refuses the name (400)
    instead of the upload landing in another namespace."""
    from urllib.parse import quote
    return "/".join(quote(seg, safe="") if seg not in (".", "..") else seg.replace(".", "%2E")
                    for seg in name.split("/"))


def _detail(resp: "httpx.Response") -> str:
    try:
        return str(resp.json().get("detail", resp.text))
    except ValueError:
        return resp.text.strip()[:200] or resp.reason_phrase


def served_revision(manifest_url: str, client: "httpx.Client") -> int | None:
    """Revision ``S`` of the manifest at ``manifest_url`` (unverified: only a progress probe)."""
    import httpx

    try:
        resp = client.get(manifest_url, headers={"Cache-Control": "no-cache"})
    except httpx.TransportError:
        return None
    if resp.status_code != 200:
        return None
    for line in resp.content.split(b"\n"):
        if line == b"--":
            break
        if line.startswith(b"S"):
            try:
                return int(line[1:])
            except ValueError:
                return None
    return None


def wait_visible(manifest_url: str, revision: int, *, timeout_s: float = 120.0,
                 interval_s: float = 0.5) -> int:
    """Poll until the served revision is at least ``revision``; return it."""
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=10.0) as client:
        while True:
            served = served_revision(manifest_url, client)
            if served is not None and served >= revision:
                return served
            if time.monotonic() >= deadline:
                raise UploadFailed(f"revision {revision} not visible at {manifest_url} after "
                                   f"{timeout_s:.0f} s (served: {served})")
            time.sleep(interval_s)


def _identity_token(provider: str, audience: str, variable: str) -> str:
    """The job's OIDC token (runtime/client/idtoken.py); a failure is a usage error (2)."""
    from . import idtoken

    try:
        return idtoken.obtain(provider, audience, variable=variable)  # type: ignore[arg-type]
    except idtoken.IdTokenError as exc:
        raise UploadFailed(str(exc), 2) from None


def register(app: typer.Typer) -> None:
    @app.command("upload")
    def upload_command(
        source: Path = typer.Argument(..., metavar="SOURCE",
                                      help="File, directory (sent as a tar) or image archive."),
        url: str = typer.Option(..., "--url", envvar="CVMFS_EPHEMERAL_URL", metavar="URL",
                                help="Base URL of the upload service, e.g. "
                                     "https://cvmfs.example.org or http://localhost:8080."),
        repo: str = typer.Option(..., "--repo", metavar="FQRN",
                                 help="Repository name, e.g. ci.example.org."),
        name: Optional[str] = typer.Option(None, "--name", metavar="NAME",
                                           help="Artifact name; team-a/app/pr-123 puts it in"
                                                " the namespace team-a/app.",
                                           show_default="the file or directory name"),
        as_: Optional[str] = typer.Option(None, "--as", hidden=True, help="Old name of --name."),
        ttl_s: Optional[int] = typer.Option(
            None, "--ttl-s", metavar="SECONDS", help="Artifact lifetime: expire after this "
            "many seconds.", show_default="the server's CVMFS_EPHEMERAL_DEFAULT_TTL_S, 7200"),
        expire_in: Optional[str] = typer.Option(
            None, "--expire-in", metavar="DURATION", help="Artifact lifetime in GitLab's "
            "syntax ('30 mins', '2 hrs 20 min', '1 week', 'never' where the server allows "
            "it); instead of --ttl-s.", show_default="--ttl-s"),
        no_digest: bool = typer.Option(False, "--no-digest", help="Do not send the file's "
                                       "SHA-256 (Content-Digest) for the server to verify "
                                       "(sent by default for files up to 1 GiB)."),
        unpack: bool = typer.Option(False, "--unpack", help="Unpack a tar or image archive "
                                    "into a directory artifact (implied for a directory)."),
        overwrite: bool = typer.Option(False, "--overwrite",
                                       help="Replace an artifact of the same name."),
        keep_last: Optional[int] = typer.Option(
            None, "--keep-last", metavar="N", min=1,
            help="Keep only the N newest artifacts of this one's parent namespace, this one "
                 "included (pinned ones aside); older ones go in the same revision.",
            show_default="keep all"),
        pin: Optional[bool] = typer.Option(
            None, "--pin/--no-pin", help="Pin the artifact (exempt from --keep-last, not from "
            "its lifetime), or unpin it.", show_default="an overwrite keeps its pin"),
        as_json: bool = typer.Option(False, "--json", help="Print the server's JSON answer."),
        wait: bool = typer.Option(False, "--wait-visible",
                                  help="Then wait until the stratum 0 serves the new revision."),
        public_url: Optional[str] = typer.Option(
            None, "--public-url", metavar="URL",
            help="Stratum-0 URL of the repository, polled by --wait-visible.",
            show_default="URL/cvmfs/FQRN"),
        retries: int = typer.Option(5, "--retries", metavar="N",
                                    help="Retries on connection errors and 5xx answers."),
        oidc: Optional[str] = typer.Option(
            None, "--oidc", metavar="PROVIDER",
            help="Authenticate with the CI job's identity token: github, gitlab or auto.",
            show_default="a static token"),
        audience: Optional[str] = typer.Option(
            None, "--audience", metavar="AUD", help="Audience of the identity token.",
            show_default="--url"),
        id_token_var: str = typer.Option(
            "CVMFS_EPHEMERAL_ID_TOKEN", "--id-token-var", metavar="VAR",
            help="GitLab: the id_tokens variable holding the token."),
        meta: List[str] = typer.Option(
            [], "--meta", metavar="KEY=VALUE",
            help="Metadata kept with the artifact (X-Artifact-Meta-KEY header); repeatable.",
            show_default="none, plus the CI job's commit-sha, pipeline-url and ref"),
        no_ci_meta: bool = typer.Option(
            False, "--no-ci-meta", help="Do not add commit-sha, pipeline-url and ref from the "
            "GitHub Actions or GitLab CI environment."),
    ) -> None:
        """Upload an artifact for a CI job (token from CVMFS_EPHEMERAL_TOKEN or
        CVMFS_EPHEMERAL_TOKEN_FILE, or the job's identity token with --oidc; never from the
        command line)."""
        check_url(url)
        if public_url is not None:
            check_url(public_url, "--public-url", served_tree=True)
        token = client_token()
        say = lambda m: typer.echo(m, err=True)  # noqa: E731
        try:
            metadata = {} if no_ci_meta else ci_metadata()
            metadata.update(parse_meta(meta))
            if oidc is not None:
                token = _identity_token(oidc, audience or url.rstrip("/"), id_token_var)
            result = upload(source, url=url, repo=repo, name=name or as_, ttl_s=ttl_s,
                            unpack=unpack, overwrite=overwrite, token=token, retries=retries,
                            progress=sys.stderr.isatty() and not as_json, log=say,
                            expire_in=expire_in, digest=not no_digest, meta=metadata,
                            keep_last=keep_last, pin=pin)
            if wait:
                base = public_url or f"{url.rstrip('/')}/cvmfs/{repo}"
                wait_visible(f"{base.rstrip('/')}/.cvmfspublished", int(result["revision"]))
        except UploadFailed as exc:
            say(f"error: {exc}")
            raise typer.Exit(exc.code)
        if as_json:
            import json

            typer.echo(json.dumps(result))
        else:
            typer.echo(f"{result['path']}  revision {result['revision']}  "
                       f"expires {result['expires_at']}")
