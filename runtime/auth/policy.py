"""Trusted-publishing configuration: which CI identity issuers are trusted, and what each
identity may write (trust policies).

Read from ``CVMFS_EPHEMERAL_OIDC`` (JSON) or ``CVMFS_EPHEMERAL_OIDC_FILE`` (YAML or JSON)::

    issuers:
      - issuer: https://token.actions.githubusercontent.com
        audience: https://cvmfs.example.org
        policies:
          - name: app-main
            claims: {repository: octo-org/app, ref: "refs/heads/*"}
            repository: ci.example.org
            prefix: "gh+{repository_id}+"
            max_ttl_s: 86400

A policy matches when every claim matcher matches (exact string, a glob with ``* ? [``, or a
list of those, any of which may match; booleans compare as ``true``/``false``). The first policy
that matches and names the requested repository wins.

Prefix templates. ``{claim}`` is replaced by the claim's value, which must be one or more name
segments of ``A-Z a-z 0-9 . _ -`` separated by ``/`` (never ``.``/``..``, never empty); any
other value refuses the request. ``/`` in a value stays a segment separator: GitHub's
``repository`` ``octo-org/app`` in ``gh/{repository}/`` gives ``gh/octo-org/app/``, the
namespace ``gh/octo-org/app`` of hierarchical artifact names (the job then uploads
``gh/octo-org/app/pr-7``; mind ``CVMFS_EPHEMERAL_MAX_NAME_DEPTH``, 4 by default, which such a
prefix already uses 3 of). Mapping ``/`` to ``-`` was rejected:
``a-b/c`` and ``a/b-c`` would collide and one project could write into another's namespace. For
the same reason every placeholder must be followed by a character that no value can contain
(``/ + ~ @ : = ,``): ``gh-{repository_owner}-`` would let owner ``octo`` write ``gh-octo-org-x``.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import re
import string
import urllib.parse
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..settings import validate_fqrn

#: One segment of a templated value.
SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
#: Characters that may follow a placeholder: none of them can appear in a templated value.
SEPARATORS = "/+~@:=,"

Matcher = Union[str, bool, int, list[Union[str, bool, int]]]


class PolicyError(ValueError):
    """The trusted-publishing configuration is invalid (the service refuses to start)."""


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _fields(template: str) -> list[tuple[str, str | None]]:
    return [(lit, name) for lit, name, _spec, _conv in string.Formatter().parse(template)]


class Policy(BaseModel):
    """Claim matchers -> repository, namespace prefix, role, limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    claims: dict[str, Matcher] = Field(min_length=1)
    repository: str
    prefix: Optional[str] = None
    role: Literal["upload"] = "upload"
    max_ttl_s: Optional[int] = Field(None, ge=1)
    #: Recorded on the principal and in provenance; not enforced (no byte quotas yet).
    quota_bytes: Optional[int] = Field(None, ge=1)

    @field_validator("repository")
    @classmethod
    def _repo(cls, value: str) -> str:
        return validate_fqrn(value)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return None
        try:
            parts = _fields(value)
        except ValueError as exc:
            raise ValueError(f"prefix {value!r}: {exc}") from None
        for i, (_lit, field) in enumerate(parts):
            if field is None:
                continue
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", field):
                raise ValueError(f"prefix {value!r}: '{{{field}}}' is not a claim name")
            following = parts[i + 1][0] if i + 1 < len(parts) else ""
            if not following or following[0] not in SEPARATORS:
                raise ValueError(f"prefix {value!r}: '{{{field}}}' must be followed by one of "
                                 f"{SEPARATORS!r}, so that one value's namespace cannot be "
                                 "another value's prefix")
        if value.startswith(("/", ".cvmfs")):
            raise ValueError(f"prefix {value!r} must not start with '/' or '.cvmfs'")
        if any(seg in (".", "..") for seg in value.split("/")) or "//" in value:
            # no artifact name has such a segment, so the policy could grant nothing: a typo
            raise ValueError(f"prefix {value!r} must not hold '.' or '..' segments or '//'")
        return value

    @model_validator(mode="after")
    def _pin(self) -> "Policy":
        # A policy without any pinned claim would trust every job of the issuer (cvmfs-unpack-api's
        # weakness); the namespace alone is not a boundary when it is templated from the token.
        if all(m in ("*", ["*"]) for m in self.claims.values()):
            raise ValueError("a policy must pin at least one claim to something narrower than '*'")
        return self

    def mismatch(self, claims: Mapping[str, Any]) -> str | None:
        """The first claim matcher that the token fails, or None when all match."""
        for claim, matcher in self.claims.items():
            if claim not in claims:
                return claim
            have = _text(claims[claim])
            options = matcher if isinstance(matcher, list) else [matcher]
            if not any(fnmatch.fnmatchcase(have, _text(o)) for o in options):
                return claim
        return None

    def render_prefix(self, claims: Mapping[str, Any]) -> str | None:
        """The prefix with its claims filled in; raises ``ValueError`` naming a bad value."""
        if self.prefix is None:
            return None
        out = []
        for literal, field in _fields(self.prefix):
            out.append(literal)
            if field is None:
                continue
            if field not in claims:
                raise ValueError(f"the prefix needs claim {field!r}, which the token lacks")
            value = _text(claims[field])
            if not all(SEGMENT_RE.match(seg) and seg not in (".", "..")
                       for seg in value.split("/")):
                raise ValueError(f"claim {field!r} is not usable in a name (segments of "
                                 "A-Z a-z 0-9 . _ - separated by '/')")
            out.append(value)
        return "".join(out)


def _loopback(host: str | None) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> str:
    """https, or http on loopback only (tests, a local issuer): keys must not be spoofable."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and _loopback(parts.hostname):
        return url
    raise ValueError(f"{what} {url!r} must be an https URL (http only on loopback)")


class Issuer(BaseModel):
    """One trusted issuer (GitHub.com, a GitHub Enterprise Server, GitLab.com, a GitLab …)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str
    #: The ``aud`` tokens must carry (GitHub: what the job requests; GitLab: ``id_tokens.aud``).
    audience: str
    #: Short name used in labels (``github:repo:octo-org/app:ref:…``); default: the host.
    name: str = ""
    #: JWKS location; default: ``jwks_uri`` of the issuer's discovery document.
    jwks_uri: Optional[str] = None
    #: Base of run links in provenance (``https://github.com``); default derived from the issuer.
    web_url: Optional[str] = None
    policies: list[Policy] = Field(min_length=1)

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        # compared byte for byte with the token's ``iss``: never normalised
        return check_url(value, "issuer")

    @field_validator("jwks_uri")
    @classmethod
    def _jwks(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else check_url(value, "jwks_uri")

    @property
    def display(self) -> str:
        return self.name or (urllib.parse.urlsplit(self.issuer).hostname or self.issuer)

    def run_url(self, claims: Mapping[str, Any]) -> str | None:
        """Link to the run (GitHub) or job (GitLab) that the token was issued to."""
        base = self.web_url
        if "run_id" in claims and "repository" in claims:
            if base is None:
                base = ("https://github.com"
                        if self.issuer == "https://token.actions.githubusercontent.com"
                        else self.issuer.removesuffix("/_services/token"))
            return f"{base.rstrip('/')}/{claims['repository']}/actions/runs/{claims['run_id']}"
        if "job_id" in claims and "project_path" in claims:
            base = base or self.issuer
            return f"{base.rstrip('/')}/{claims['project_path']}/-/jobs/{claims['job_id']}"
        return None


class OidcConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    issuers: list[Issuer] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> "OidcConfig":
        names = [i.issuer for i in self.issuers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"issuer configured twice: {', '.join(dupes)}")
        return self

    def issuer(self, iss: str) -> Issuer | None:
        for item in self.issuers:
            if item.issuer == iss:
                return item
        return None


def parse_config(data: Any) -> OidcConfig:
    """Validate parsed JSON/YAML: ``{"issuers": [...]}`` or a bare list of issuers."""
    from pydantic import ValidationError

    if data is None:
        return OidcConfig()
    if isinstance(data, list):
        data = {"issuers": data}
    try:
        return OidcConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err.get("loc", ())) or "value"
        raise PolicyError(f"OIDC configuration: {key}: "
                          f"{err.get('msg', 'invalid').removeprefix('Value error, ')}") from None


def load_config(text: str = "", path: Path | None = None) -> OidcConfig:
    """The configuration from the JSON variable and/or the YAML file (issuers of both)."""
    issuers: list[Any] = []
    for source, raw in (("CVMFS_EPHEMERAL_OIDC", text), (str(path), None)):
        if source == "CVMFS_EPHEMERAL_OIDC":
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise PolicyError(f"CVMFS_EPHEMERAL_OIDC is not valid JSON ({exc.msg})") from None
        else:
            if path is None:
                continue
            import yaml

            try:
                data = yaml.safe_load(Path(path).read_text())
            except yaml.YAMLError as exc:
                raise PolicyError(f"{path}: not valid YAML ({exc})".splitlines()[0]) from None
        issuers += parse_config(data).issuers
    return parse_config({"issuers": [i.model_dump() for i in issuers]})
