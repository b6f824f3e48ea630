"""Runtime configuration, read from flags or from ``CVMFS_EPHEMERAL_*`` environment variables.

The Pulumi program deploys the runtime image and sets exactly these variables, so this module
is the contract between the two halves of the project. Local defaults put everything under
``./var`` so that ``python -m runtime serve`` works from a fresh checkout.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

#: fqrn rule: at least two dot-separated labels (the client splits it into organisation and
#: domain, docs/cvmfs-format.md "Conventions"), each a DNS-like label; lowercase, digits, '-' and '_'.
FQRN_RE = re.compile(r"^(?=.{3,253}$)[a-z0-9]([a-z0-9_-]{0,62})(\.[a-z0-9]([a-z0-9_-]{0,62}))+$")

Compression = Literal["none", "zlib"]
Role = Literal["all", "upload", "gateway"]

#: Fixed chunk size default: 8 MiB is the average chunk size cvmfs itself aims for
#: (cvmfs/server/cvmfs_server_coda.sh: min 4, avg 8, max 16 MiB). It keeps per-object overhead
#: negligible on multi-GiB files while giving enough independent chunks to compress on every
#: core and to let clients fetch a part of a large file.
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024


def validate_fqrn(fqrn: str) -> str:
    """Return ``fqrn`` if it is a valid repository name, else raise ``ValueError``."""
    if not isinstance(fqrn, str) or not FQRN_RE.match(fqrn):
        raise ValueError(
            f"invalid repository name {fqrn!r}: expected a lowercase dotted name such as "
            "'ci.example.org' (at least one dot)"
        )
    return fqrn


class RepositoryConfig(BaseModel):
    """Per-repository options; defaults follow the seed (volatile, garbage-collectable, TTL 60 s)."""

    fqrn: str
    ttl_s: int = Field(60, ge=1, description="catalog TTL: how often clients re-check the manifest")
    compression: Compression = "none"
    #: Deflate level of file content with ``compression: zlib`` (zlib-ng; runtime/cvmfs/deflate.py
    #: has the measured speed/size trade-off). Catalogs always use stock zlib level 6.
    compression_level: int = Field(4, ge=1, le=9)
    chunk_size: int = Field(DEFAULT_CHUNK_SIZE, ge=64 * 1024, le=256 * 1024 * 1024)
    volatile: bool = True
    garbage_collectable: bool = True
    # -- stratum-1 replication (site cache / replicas area) --
    #: gc grace of this repository; overrides CVMFS_EPHEMERAL_GC_GRACE_S. A stratum 1 that
    #: snapshots every N seconds needs objects of a superseded revision for longer than N.
    gc_grace_s: int | None = Field(None, ge=0, description="default: the global gc grace")
    # -- retention -- (runtime/server/retention.py; README "Retention")
    #: Lifetime of an artifact uploaded without ttl_s/expire_in; default: the global
    #: CVMFS_EPHEMERAL_DEFAULT_TTL_S.
    default_lifetime_s: int | None = Field(None, ge=1)
    #: Longest lifetime an upload (or the TTL route) may ask for; longer asks are refused
    #: with 422 naming this maximum (not clamped). Default: CVMFS_EPHEMERAL_MAX_TTL_S.
    max_lifetime_s: int | None = Field(None, ge=1)
    #: Whether ``expire_in=never`` is accepted here; default: CVMFS_EPHEMERAL_ALLOW_NEVER_EXPIRE.
    allow_never: bool | None = None
    #: Bytes (sum of file sizes) each top-level namespace may hold; None: no quota.
    quota_bytes: int | None = Field(None, ge=1)

    @field_validator("fqrn")
    @classmethod
    def _fqrn(cls, v: str) -> str:
        return validate_fqrn(v)

    @model_validator(mode="after")
    def _lifetimes(self) -> "RepositoryConfig":
        if (self.default_lifetime_s is not None and self.max_lifetime_s is not None
                and self.default_lifetime_s > self.max_lifetime_s):
            raise ValueError(f"default_lifetime_s ({self.default_lifetime_s}) exceeds "
                             f"max_lifetime_s ({self.max_lifetime_s})")
        return self


def _parse_repositories(value: Any) -> list[RepositoryConfig]:
    """Accept a comma list of fqrns, a JSON list of names/objects, or already-parsed objects."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") or text.startswith("{"):
            value = json.loads(text)
            if isinstance(value, dict):
                value = [value]
        else:
            value = [part.strip() for part in text.split(",") if part.strip()]
    out = []
    for index, item in enumerate(value):
        try:
            if isinstance(item, RepositoryConfig):
                out.append(item)
            elif isinstance(item, str):
                out.append(RepositoryConfig(fqrn=item))
            else:
                out.append(RepositoryConfig.model_validate(item))
        except ValueError as exc:  # one line naming the item and its field, not pydantic's block
            raise ValueError(f"[{index}] {_item_error(exc)}") from None
    return out


def _item_error(exc: ValueError) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())) or 'value'}: "
                         f"{e.get('msg', 'invalid').removeprefix('Value error, ')}"
                         for e in exc.errors())
    return str(exc).splitlines()[0]


@dataclass(frozen=True)
class Lifetimes:
    """A repository's retention rules once its settings and the global ones are merged."""

    default_s: int
    max_s: int
    allow_never: bool
    quota_bytes: int | None


class Settings(BaseSettings):
    """Everything the runtime reads from its environment (prefix ``CVMFS_EPHEMERAL_``)."""

    model_config = SettingsConfigDict(env_prefix="CVMFS_EPHEMERAL_", extra="ignore")

    data_dir: Path = Path("var/data")
    keys_dir: Path = Path("var/keys")
    repositories: Annotated[list[RepositoryConfig], NoDecode] = Field(default_factory=list)

    host: str = "127.0.0.1"
    port: int = 8080
    role: Role = "all"
    #: Base URL of the notification API (``http://gateway:4929/api/v1``) that the upload role
    #: posts to after every publish. Empty: notify the in-process gateway (embedded default).
    gateway_url: str = ""
    #: URL clients use to reach this stratum 0 (printed in client configs); empty: derived.
    public_url: str = ""
    #: Where the gateway role reads the current manifests from when it does not share the data
    #: directory (``http://stratum0:8000/cvmfs``); empty: read ``data_dir`` directly.
    stratum0_url: str = ""

    tokens: str = Field("", description="comma list of 'token' or 'token:repo' entries")
    tokens_file: Path | None = None
    #: The token that the CLI sends (``upload``, and maintenance commands given ``--url``),
    #: or a file holding it (how the Docker and Kubernetes targets mount it).
    token: str = Field("", repr=False)
    token_file: Path | None = None
    # --- authentication (runtime/auth): trusted publishing with CI identity tokens ---------
    #: Trusted issuers and their policies, JSON (see runtime/auth/policy.py and README).
    oidc: str = ""
    #: The same as a YAML (or JSON) file; issuers of both are used.
    oidc_file: Path | None = None
    #: Clock skew accepted on exp/nbf/iat, seconds.
    oidc_leeway_s: float = Field(60.0, ge=0, le=300)
    #: Keys are fetched again when older than this.
    oidc_jwks_cache_s: float = Field(300.0, ge=0)
    #: An unknown key id refreshes the keys at most this often (per issuer).
    oidc_jwks_refresh_s: float = Field(60.0, ge=0)
    #: Cached keys stay usable this long after the last successful fetch when fetches fail.
    oidc_jwks_stale_s: float = Field(3600.0, ge=0)
    oidc_http_timeout_s: float = Field(5.0, gt=0, le=60)
    #: Larger identity tokens are refused unread (GitHub's are about 1.5 KiB).
    oidc_max_token_bytes: int = Field(8192, ge=1024, le=16384)
    # --- end of authentication ---------------------------------------------------------------
    max_artifact_bytes: int = Field(4 * 1024**3, ge=1)
    default_ttl_s: int = Field(7200, ge=1)
    max_ttl_s: int = Field(30 * 24 * 3600, ge=1)
    # --- retention: expire_in ---------------------------------------------------------------
    #: Whether ``expire_in=never`` is accepted (an artifact that never expires stays until it
    #: is deleted: off by default, as this store is for short-lived builds).
    allow_never_expire: bool = False
    # --- end of retention: expire_in ---------------------------------------------------------

    gc_grace_s: int | None = Field(None, ge=0, description="default: 2 x repository TTL + 300 s")
    whitelist_validity_days: int = Field(30, ge=1, le=365)
    resign_below_days: int = Field(20, ge=0)
    clean_interval_s: int = Field(60, ge=0, description="0 disables the job in the scheduler")
    gc_interval_s: int = Field(3600, ge=0)
    resign_interval_s: int = Field(86400, ge=0)
    scheduler: bool = True

    # --- HTTP edge: connection limits, body timeout, downloads, logging (runtime/server/
    # connection.py, bodytimeout.py, downloads.py, requestlog.py, runtime/logs.py) ---
    #: Seconds without a byte of a request body before the request is abandoned (408; an
    #: upload publishes nothing).
    body_idle_timeout_s: int = Field(60, ge=1)
    #: Largest request head (request line + headers) in bytes; beyond it 431.
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    #: Seconds a request head may take to arrive (from connect, or from its first byte on a
    #: kept-alive connection); beyond it 408.
    header_timeout_s: float = Field(30.0, gt=0)
    #: Open connections served at once; those beyond get 503 (lowered at start to what the
    #: file-descriptor limit allows). Default: 20,000 for the gateway role (each notification
    #: subscriber holds one connection and one descriptor), 1,000 for the others.
    max_connections: int | None = Field(None, ge=1)
    #: Directory downloads (tar streams) at once, per client address and in total; beyond
    #: them 429 / 503.
    max_downloads_per_client: int = Field(2, ge=1)
    max_downloads: int = Field(8, ge=1)
    #: Accepted for existing deployments, no longer used: a download streams from its nested
    #: catalog in constant memory, so the entries in flight need no budget.
    max_download_entries: int = Field(500_000, ge=1)
    log_level: str = "info"
    #: ``human`` (default) or ``json`` (one JSON object per line).
    log_format: Literal["human", "json"] = "human"
    #: ``api`` (default): access lines for the upload, admin and notification routes;
    #: ``all``: also stratum 0 files, /healthz and /metrics; ``off``: refusals only.
    access_log: Literal["api", "all", "off"] = "api"

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, v: str) -> str:
        from .logs import level_number

        level_number(v)
        return v.strip().lower()

    # --- notification gateway (runtime/gateway/) ---
    #: Seconds between keep-alives on an idle notification stream (the current message sent
    #: again; the CVMFS subscriber ignores a revision it already has). Below the 30 s idle
    #: timeout of common load balancers; 0 disables.
    gateway_keepalive_s: float = Field(20.0, ge=0)
    #: A subscriber whose stream cannot take a new event within this many seconds (it stopped
    #: reading and its buffers are full) is disconnected; it reconnects and gets the latest.
    gateway_send_timeout_s: float = Field(10.0, gt=0)
    #: Bytes a subscriber may have unread: kernel send buffer and in-process write buffer each.
    gateway_subscriber_buffer_bytes: int = Field(64 * 1024, ge=4096, le=16 * 1024 * 1024)
    #: Split layout: re-read the stratum 0's manifest at most this often (on new subscriptions).
    gateway_refresh_s: float = Field(5.0, ge=0)

    # -- ingest limits (archive unpacking, runtime/ingest; README "Limits and failure behaviour")
    #: Largest single tar header, PAX extended header or GNU long name/link (checked before it
    #: is read into memory).
    max_tar_header_bytes: int = Field(1024 * 1024, ge=512)
    #: Non-layer members of one image archive (manifest, config, index JSON) together.
    max_image_metadata_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    #: Members of one archive (all layers of an image counted).
    max_archive_entries: int = Field(1_000_000, ge=1)
    #: Components of one member's path, and bytes of its path (or symlink target).
    max_path_depth: int = Field(256, ge=1)
    max_path_bytes: int = Field(4096, ge=255)
    #: Threads parsing archives at once, and how many of them one tenant (a repository, or a
    #: token) may hold: one tenant's stalled uploads cannot take every slot.
    unpack_workers: int = Field(16, ge=1)
    unpack_workers_per_tenant: int = Field(4, ge=1)
    #: parsers one repository may hold (its tokens share it, each up to the per-tenant cap)
    unpack_workers_per_repository: int = Field(8, ge=1)

    # -- repository: staging, commits, full disk (runtime/repository/) --------------------
    #: Free space kept in reserve on the data directory's filesystem: uploads are refused with
    #: 507 below it, so deletes, expiry, gc and state.db always have room (0 disables it).
    min_free_bytes: int = Field(256 * 1024 * 1024, ge=0)
    #: A body that sends no byte for this long is abandoned (upload API), and a staging marker
    #: untouched for this long no longer holds back gc's cut-off.
    body_idle_timeout_s: int = Field(60, ge=1)

    # -- names --------------------------------------------------------------------------
    #: Segments an artifact name may have: ``team-a/app/pr-123`` is 3. Parent segments are
    #: namespaces (plain directories of the root catalog); the leaf is the artifact.
    max_name_depth: int = Field(4, ge=1, le=32)

    def repository_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Repository(...)`` taken from these settings."""
        return {"min_free_bytes": self.min_free_bytes,
                "body_idle_timeout_s": self.body_idle_timeout_s,
                "max_name_depth": self.max_name_depth}

    @field_validator("repositories", mode="before")
    @classmethod
    def _repos(cls, v: Any) -> list[RepositoryConfig]:
        return _parse_repositories(v)

    @model_validator(mode="after")
    def _unique(self) -> "Settings":
        names = [r.fqrn for r in self.repositories]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"repository configured twice: {', '.join(dupes)}")
        return self

    # -- retention: each repository's lifetimes checked against the global ones at start --
    @model_validator(mode="after")
    def _retention(self) -> "Settings":
        if self.default_ttl_s > self.max_ttl_s:
            raise ValueError(f"{ENV_PREFIX}DEFAULT_TTL_S ({self.default_ttl_s}) exceeds "
                             f"{ENV_PREFIX}MAX_TTL_S ({self.max_ttl_s})")
        for index, repo in enumerate(self.repositories):
            policy = self.lifetimes(repo.fqrn)
            if policy.default_s > policy.max_s:
                raise ValueError(
                    f"{ENV_PREFIX}REPOSITORIES[{index}] ({repo.fqrn}): default lifetime "
                    f"{policy.default_s} s exceeds the maximum lifetime {policy.max_s} s "
                    "(set default_lifetime_s or max_lifetime_s)")
        return self

    def lifetimes(self, fqrn: str) -> "Lifetimes":
        """The lifetime rules in force for ``fqrn``: its own, else the global ones."""
        repo = self.repository(fqrn)
        return Lifetimes(
            default_s=repo.default_lifetime_s if repo.default_lifetime_s is not None
            else self.default_ttl_s,
            max_s=repo.max_lifetime_s if repo.max_lifetime_s is not None else self.max_ttl_s,
            allow_never=repo.allow_never if repo.allow_never is not None
            else self.allow_never_expire,
            quota_bytes=repo.quota_bytes)

    def client_token(self) -> str:
        """The token the CLI sends: ``token``, else the contents of ``token_file``, else ''."""
        if self.token.strip():
            return self.token.strip()
        if self.token_file is not None:
            return Path(self.token_file).read_text().strip()
        return ""

    def repository(self, fqrn: str) -> RepositoryConfig:
        """The configuration of ``fqrn``; an unconfigured name gets the defaults."""
        for repo in self.repositories:
            if repo.fqrn == fqrn:
                return repo
        return RepositoryConfig(fqrn=fqrn)


ENV_PREFIX = "CVMFS_EPHEMERAL_"


def _error_key(model: str, loc: tuple) -> str:
    """Where a validation error sits, named the way the user set it: a Settings field is the
    environment variable (``CVMFS_EPHEMERAL_PORT``), an item of the repository list is
    ``CVMFS_EPHEMERAL_REPOSITORIES[0].ttl_s``; other models keep the dotted field path."""
    if model != "Settings" or not loc:
        return ".".join(str(p) for p in loc) or "value"
    key = f"{ENV_PREFIX}{str(loc[0]).upper()}"
    for part in loc[1:]:
        key += f"[{part}]" if isinstance(part, int) else f".{part}"
    return key


def describe_error(exc: Exception) -> str:
    """One line naming the offending key, for a CLI or HTTP error message."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            msg = err.get("msg", "invalid").removeprefix("Value error, ")
            # a check across fields (no location) names its variables in its own message
            parts.append(f"{_error_key(exc.title, loc)}: {msg}" if loc else msg)
        return "; ".join(parts)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# --- packaging/CLI area: ``python -m runtime config`` ---------------------------------------

#: Fields whose values are credentials: printed masked, never in clear.
SECRET_FIELDS = frozenset({"tokens", "token"})


def _mask(value: str) -> str:
    """``***`` per secret (so the operator sees how many are set), '' when unset."""
    entries = [e for e in value.split(",") if e.strip()]
    masked = []
    for entry in entries:
        scope = entry.strip().split(":", 1)[1] if ":" in entry else ""
        masked.append(f"***:{scope}" if scope else "***")
    return ",".join(masked)


def effective_config(settings: Settings) -> dict[str, Any]:
    """Every setting as ``CVMFS_EPHEMERAL_<NAME>`` -> the value in force (environment, else
    default), secrets masked; repositories as the JSON the variable accepts."""
    out: dict[str, Any] = {}
    for field in type(settings).model_fields:
        value = getattr(settings, field)
        if field in SECRET_FIELDS:
            value = _mask(str(value))
        elif field == "repositories":
            value = json.dumps([r.model_dump() for r in value])
        elif value is None:
            value = ""
        elif isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, Path):
            value = str(value)
        out[f"{ENV_PREFIX}{field.upper()}"] = value
    return out
