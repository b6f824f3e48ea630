"""``Authorization: Bearer …`` on write routes: a static token or a CI identity token (JWT).

``await authorizer.check(request, repository, name=…, role=…)`` returns the
:class:`~runtime.auth.principal.Principal` or raises: 401 when the credential is missing or an
identity token does not verify, 403 when a static token is unknown or the request is out of
scope (wrong repository, name outside the prefix, admin route for an upload identity).
Details are one line and never contain the credential. Every grant is logged with the
principal's provenance (label, never the secret).
"""

from __future__ import annotations

import json
import logging

from fastapi import Request

from ..settings import Settings
from .oidc import KeyCache, Verifier, looks_like_jwt
from .policy import OidcConfig, load_config
from .principal import Principal, Role, forbidden, unauthorized
from .tokens import Token, load_tokens, match

log = logging.getLogger("runtime.auth")

#: Longest Authorization header value read at all (a JWT from GitHub is ~1.5 KiB).
MAX_CREDENTIAL_BYTES = 16 * 1024


class Authorizer:
    """Checks the bearer credential of a write request against tokens and trusted issuers."""

    def __init__(self, tokens: list[Token], oidc: Verifier | None = None):
        self.tokens = tokens
        self.oidc = oidc

    @classmethod
    def from_settings(cls, settings: Settings) -> "Authorizer":
        """Tokens and OIDC issuers from the settings (raises on a bad configuration)."""
        config = load_config(settings.oidc, settings.oidc_file)
        verifier = None
        if config.issuers:
            cache = KeyCache(cache_s=settings.oidc_jwks_cache_s,
                             refresh_s=settings.oidc_jwks_refresh_s,
                             stale_s=settings.oidc_jwks_stale_s,
                             timeout_s=settings.oidc_http_timeout_s)
            verifier = Verifier(config, cache, leeway_s=settings.oidc_leeway_s,
                                max_token_bytes=settings.oidc_max_token_bytes)
        return cls(load_tokens(settings), verifier)

    @property
    def oidc_config(self) -> OidcConfig:
        return self.oidc.config if self.oidc is not None else OidcConfig()

    async def check(self, request: Request, repository: str | None, *, name: str | None = None,
                    role: Role = "upload", ttl_s: int | None = None) -> Principal:
        """The principal of ``request`` if it may do ``role`` on ``repository``/``name``."""
        header = request.headers.get("authorization", "")
        if len(header) > MAX_CREDENTIAL_BYTES:
            raise unauthorized(f"credential larger than {MAX_CREDENTIAL_BYTES} bytes")
        scheme, _, presented = header.partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise unauthorized("missing bearer token")
        if self.oidc is not None and looks_like_jwt(presented):
            principal = await self.oidc.principal(presented, repository, role)
        else:
            token = match(self.tokens, presented)
            if token is None:
                if looks_like_jwt(presented):
                    raise unauthorized("identity tokens are not accepted here (no issuer configured)")
                raise forbidden("invalid token")
            principal = token.principal()
        principal.authorize(repository, name=name, ttl_s=ttl_s, role=role)
        if log.isEnabledFor(logging.INFO):
            log.info("%s %s authorised: %s", request.method, request.url.path,
                     json.dumps(principal.provenance(), sort_keys=True))
        return principal
