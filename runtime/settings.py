"""Runtime configuration, read from flags or from ``CVMFS_EPHEMERAL_*`` environment variables.

The Pulumi program deploys the runtime image and sets exactly these variables, so this module
is the contract between the two halves of the project. Local defaults put everything under
``./var`` so that ``python -m runtime serve`` works from a fresh checkout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

#: fqrn rule: at least two dot-separated labels (the client splits it into organisation and
#: domain, FORMAT.md "Conventions"), each a DNS-like label; lowercase, digits, '-' and '_'.
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
    chunk_size: int = Field(DEFAULT_CHUNK_SIZE, ge=64 * 1024, le=256 * 1024 * 1024)
    volatile: bool = True
    garbage_collectable: bool = True

    @field_validator("fqrn")
    @classmethod
    def _fqrn(cls, v: str) -> str:
        return validate_fqrn(v)


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
    for item in value:
        if isinstance(item, RepositoryConfig):
            out.append(item)
        elif isinstance(item, str):
            out.append(RepositoryConfig(fqrn=item))
        else:
            out.append(RepositoryConfig.model_validate(item))
    return out


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
    max_artifact_bytes: int = Field(4 * 1024**3, ge=1)
    default_ttl_s: int = Field(7200, ge=1)
    max_ttl_s: int = Field(30 * 24 * 3600, ge=1)

    gc_grace_s: int | None = Field(None, ge=0, description="default: 2 x repository TTL + 300 s")
    whitelist_validity_days: int = Field(30, ge=1, le=365)
    resign_below_days: int = Field(20, ge=0)
    clean_interval_s: int = Field(60, ge=0, description="0 disables the job in the scheduler")
    gc_interval_s: int = Field(3600, ge=0)
    resign_interval_s: int = Field(86400, ge=0)
    scheduler: bool = True
    log_level: str = "info"

    # -- repository: staging, commits, full disk (runtime/repository/) --------------------
    #: Free space kept in reserve on the data directory's filesystem: uploads are refused with
    #: 507 below it, so deletes, expiry, gc and state.db always have room (0 disables it).
    min_free_bytes: int = Field(256 * 1024 * 1024, ge=0)
    #: A body that sends no byte for this long is abandoned (upload API), and a staging marker
    #: untouched for this long no longer holds back gc's cut-off.
    body_idle_timeout_s: int = Field(60, ge=1)

    def repository_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Repository(...)`` taken from these settings."""
        return {"min_free_bytes": self.min_free_bytes,
                "body_idle_timeout_s": self.body_idle_timeout_s}

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


def describe_error(exc: Exception) -> str:
    """One line naming the offending key, for a CLI or HTTP error message."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err.get("loc", ())) or "value"
            msg = err.get("msg", "invalid").removeprefix("Value error, ")
            parts.append(f"{key}: {msg}")
        return "; ".join(parts)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
