"""Bearer-token authorisation for write routes (reads are public, like any stratum 0).

Tokens come from ``CVMFS_EPHEMERAL_TOKENS`` (comma list of ``token`` or ``token:repo``) and
``CVMFS_EPHEMERAL_TOKENS_FILE`` (one per line: ``token`` or ``token repo``; ``#`` comments).
A token with a repository scope is valid for that repository only; one without a scope is valid
for every repository and for the global admin routes. Comparison is constant-time and tokens are
never logged or echoed.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request

from ..settings import Settings


@dataclass(frozen=True)
class Token:
    secret: str
    repository: str | None  # None: every repository
    #: What logs and provenance name this token by; never the secret.
    label: str = "token"


def load_tokens(settings: Settings) -> list[Token]:
    """All configured tokens (file read at start; restart the service to rotate)."""
    out: list[Token] = []
    for item in settings.tokens.split(","):
        item = item.strip()
        if item:
            secret, _, scope = item.partition(":")
            out.append(Token(secret, scope or None, f"env-{len(out) + 1}"))
    if settings.tokens_file is not None:
        for line in Path(settings.tokens_file).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                parts = line.split()
                out.append(Token(parts[0], parts[1] if len(parts) > 1 else None,
                                 f"file-{len(out) + 1}"))
    return out


class Authorizer:
    """Checks ``Authorization: Bearer <token>``: 401 when missing, 403 when wrong or out of scope."""

    def __init__(self, tokens: list[Token]):
        self.tokens = tokens

    def check(self, request: Request, repository: str | None) -> Token:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise HTTPException(401, "missing bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        presented_b = presented.strip().encode()
        match: Token | None = None
        for token in self.tokens:  # compare against every token: timing does not reveal which
            if hmac.compare_digest(presented_b, token.secret.encode()):
                match = token
        if match is None:
            raise HTTPException(403, "invalid token")
        if match.repository is not None and match.repository != repository:
            raise HTTPException(403, "token is not valid for this repository")
        return match
