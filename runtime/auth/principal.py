"""Who a write request acts as, and what it may write: the result of authorisation.

A :class:`Principal` comes from a static token (:mod:`runtime.auth.tokens`) or from a verified
CI identity token (:mod:`runtime.auth.oidc`). Routes ask it whether a write is in scope, and
logs and provenance name it by ``label`` (never by the secret or the raw token).

Scopes, from coarse to fine:

- ``role``: ``upload`` (publish, delete, set TTL, notify) or ``admin`` (also the maintenance
  routes); ``admin`` includes ``upload``.
- ``repository``: the one repository it may write, or ``None`` for every repository (only an
  unscoped ``admin`` may call the global maintenance routes).
- ``prefix``: a namespace prefix the full artifact name must start with (``team-a/`` grants
  ``team-a/x/y``, never ``team-b/...`` nor the name ``team-a`` itself; ``team-a-`` also works).
  Matching is on the whole name as a string, which cannot be escaped because artifact names
  are validated, never normalised (no ``.``/``..``/empty segment, no backslash:
  ``runtime/repository/names.py``); a prefix is expected to end with a separator so that
  ``team-a-`` never grants ``team-ab``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

from fastapi import HTTPException

Role = Literal["upload", "admin"]
ROLES: tuple[Role, ...] = ("upload", "admin")


def forbidden(reason: str) -> HTTPException:
    """403 with a one-line reason (the request was authenticated but is out of scope)."""
    return HTTPException(403, reason.splitlines()[0])


def unauthorized(reason: str) -> HTTPException:
    """401 with a one-line reason: no credential, or one that does not verify."""
    return HTTPException(401, reason.splitlines()[0], headers={"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True)
class Principal:
    """An authenticated identity and its scope."""

    #: What logs and provenance call it: a token's label, or ``<issuer name>:<sub>``.
    label: str
    role: Role
    repository: str | None = None
    prefix: str | None = None
    kind: Literal["token", "oidc"] = "token"
    issuer: str | None = None
    subject: str | None = None
    #: The name of the trust policy that matched (OIDC).
    policy: str | None = None
    #: The claims that identify the CI run (repository, ref, sha, run id …), verified.
    claims: Mapping[str, str] = field(default_factory=dict)
    #: Link to the CI run or job, derived from the claims (OIDC).
    run_url: str | None = None
    #: Longest TTL this identity may give an artifact (None: the server's maximum).
    max_ttl_s: int | None = None
    #: Byte quota of the policy. Recorded only: byte quotas are not enforced yet.
    quota_bytes: int | None = None

    def refusal(self, repository: str | None, role: Role, name: str | None = None) -> str | None:
        """Why this principal may not do ``role`` on ``repository``/``name``; None if it may."""
        if role == "admin" and self.role != "admin":
            return f"{self.kind} '{self.label}' has role {self.role}; this route needs an admin token"
        if self.repository is not None and self.repository != repository:
            if repository is None:
                return "a token scoped to one repository cannot call the global admin routes"
            return "token is not valid for this repository"
        if name is not None and self.prefix is not None and not name.startswith(self.prefix):
            return f"artifact name must start with {self.prefix!r} for '{self.label}'"
        return None

    def authorize(self, repository: str | None, *, name: str | None = None,
                  ttl_s: int | None = None, role: Role = "upload") -> None:
        """Raise 403 unless the write is in scope; routes call it again once the artifact
        name or the TTL is known (a multipart upload names its artifact inside the body)."""
        reason = self.refusal(repository, role, name)
        if reason is None and ttl_s is not None and self.max_ttl_s is not None \
                and ttl_s > self.max_ttl_s:
            reason = (f"ttl_s {ttl_s} exceeds the maximum of {self.max_ttl_s} s allowed for "
                      f"'{self.label}'")
        if reason is not None:
            raise forbidden(reason)

    def cap_ttl(self, ttl_s: int) -> int:
        """A default TTL lowered to this identity's maximum (an explicit one above it is
        refused by :meth:`authorize` instead)."""
        return ttl_s if self.max_ttl_s is None else min(ttl_s, self.max_ttl_s)

    def provenance(self) -> dict[str, object]:
        """What an upload records about who authorised it: never a secret or a raw token."""
        out: dict[str, object] = {"kind": self.kind, "label": self.label, "role": self.role}
        if self.repository is not None:
            out["repository_scope"] = self.repository
        if self.prefix is not None:
            out["prefix"] = self.prefix
        if self.kind == "oidc":
            out.update(issuer=self.issuer, subject=self.subject, policy=self.policy,
                       claims=dict(self.claims))
            if self.run_url:
                out["run_url"] = self.run_url
            if self.quota_bytes is not None:
                out["quota_bytes"] = self.quota_bytes
        return out
