"""Verifying CI identity tokens (OIDC JWTs) against the configured issuers' published keys.

Order of checks, each refusing with 401 and one line that never echoes the token:

1. size (``oidc_max_token_bytes``) and shape (a compact JWS);
2. the header's ``alg``: RS256 or ES256 only (``none`` and every HMAC algorithm are refused, so
   a public key can never be used as an HMAC secret), and a ``kid``;
3. the (still unverified) ``iss`` must be a configured issuer, byte for byte;
4. the key with that ``kid`` from the issuer's JWKS (see :class:`KeyCache`); its ``kty``/``crv``
   must fit ``alg`` (RSA for RS256, EC P-256 for ES256) and its ``alg``, if given, must equal it;
5. PyJWT verifies the signature with that key and algorithm only, then ``iss``, ``aud``,
   ``exp``, ``nbf`` and ``iat`` with a small leeway (``exp``, ``iat`` and ``sub`` required).

Only then are the claims trusted; :mod:`runtime.auth.policy` maps them to a scope (403 when no
policy matches).

Keys. The JWKS is found through the issuer's discovery document and cached per issuer. It is
fetched again when older than ``oidc_jwks_cache_s``, and when a token names an unknown ``kid``
(key rotation), at most once per ``oidc_jwks_refresh_s`` so that made-up ``kid`` values cannot
make the server hammer the issuer. A failed fetch keeps the cached keys in use until
``oidc_jwks_stale_s`` after the last successful fetch, then tokens are refused (503: the
issuer is unreachable, the client may retry) until a fetch succeeds. Fetches are bounded in
time (``oidc_http_timeout_s`` per operation, twice that in all) and size (1 MiB), and
concurrent requests share one fetch. While a fetch hangs only identity-token requests of that
issuer wait; static tokens and other issuers are served.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import jwt
from fastapi import HTTPException

from .policy import Issuer, OidcConfig, check_url
from .principal import Principal, forbidden, unauthorized

log = logging.getLogger(__name__)

ALGORITHMS = {"RS256": ("RSA", None), "ES256": ("EC", "P-256")}
MAX_DOCUMENT_BYTES = 1024 * 1024
#: Claims copied into provenance when present (GitHub Actions and GitLab CI names).
PROVENANCE_CLAIMS = (
    "repository", "repository_id", "repository_owner", "ref", "ref_type", "sha", "workflow_ref",
    "job_workflow_ref", "environment", "event_name", "run_id", "run_attempt", "actor",
    "project_path", "project_id", "namespace_path", "ref_protected", "pipeline_id", "job_id",
    "user_login",
)


class KeysUnavailable(Exception):
    """The issuer's keys could not be fetched and no cached keys are fresh enough."""


@dataclass
class _IssuerKeys:
    keys: dict[str, dict[str, Any]] | None = None
    fetched_at: float = float("-inf")  # last successful fetch
    failed_at: float = float("-inf")  # last failed fetch
    kid_refresh_at: float = float("-inf")  # last refresh caused by an unknown kid
    lock: asyncio.Lock | None = None


@dataclass
class KeyCache:
    """Per-issuer JWKS, fetched with httpx; see the module docstring for the timing rules."""

    cache_s: float = 300.0
    refresh_s: float = 60.0
    stale_s: float = 3600.0
    timeout_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _state: dict[str, _IssuerKeys] = field(default_factory=dict)
    #: Fetches made (both documents count as one); for metrics and tests.
    fetches: int = 0

    async def key(self, issuer: Issuer, kid: str) -> dict[str, Any] | None:
        """The JWK ``kid`` of ``issuer`` (None if the issuer does not publish it)."""
        state = self._state.setdefault(issuer.issuer, _IssuerKeys())
        if state.lock is None:
            state.lock = asyncio.Lock()
        fetched = False
        if state.keys is None or self.clock() - state.fetched_at > self.cache_s:
            async with state.lock:
                if state.keys is None or self.clock() - state.fetched_at > self.cache_s:
                    fetched = await self._refresh(issuer, state, periodic=True)
        # an unknown kid: the issuer may have rotated its keys. Not when this request just
        # fetched them, nor when there are none (the issuer is failing: no bypass of its limit)
        if not fetched and state.keys is not None and kid not in state.keys and \
                self.clock() - state.kid_refresh_at >= self.refresh_s:
            async with state.lock:
                if kid not in (state.keys or {}) and \
                        self.clock() - state.kid_refresh_at >= self.refresh_s:
                    state.kid_refresh_at = self.clock()
                    await self._refresh(issuer, state, periodic=False)
        if state.keys is None or self.clock() - state.fetched_at > self.stale_s:
            raise KeysUnavailable(f"the keys of issuer {issuer.issuer} could not be fetched")
        return state.keys.get(kid)

    async def _refresh(self, issuer: Issuer, state: _IssuerKeys, *, periodic: bool) -> bool:
        """Fetch the keys again; False when skipped (a fetch failed moments ago)."""
        # a refresh that just failed is not retried by every request of a burst (they queue on
        # the lock): after a failure, at most one attempt per min(refresh_s, 5 s)
        if periodic and self.clock() - state.failed_at < min(self.refresh_s, 5.0):
            return False
        try:
            # httpx's timeout is per operation; a server dripping bytes is cut by the total
            keys = await asyncio.wait_for(self._fetch(issuer), 2 * self.timeout_s)
        except (httpx.HTTPError, ValueError, TimeoutError) as exc:
            state.failed_at = self.clock()
            age = self.clock() - state.fetched_at
            log.warning("fetching the keys of %s failed (%s); cached keys are %s", issuer.issuer,
                        type(exc).__name__ if isinstance(exc, httpx.TimeoutException)
                        or not str(exc) else str(exc).splitlines()[0],
                        f"{age:.0f} s old" if state.keys is not None else "absent")
            return True
        state.keys, state.fetched_at = keys, self.clock()
        return True

    async def _fetch(self, issuer: Issuer) -> dict[str, dict[str, Any]]:
        self.fetches += 1
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as client:
            jwks_uri = issuer.jwks_uri
            if jwks_uri is None:
                doc = await _get_json(client, issuer.issuer.rstrip("/")
                                      + "/.well-known/openid-configuration")
                if doc.get("issuer") != issuer.issuer:
                    raise ValueError("the discovery document names another issuer")
                jwks_uri = check_url(str(doc.get("jwks_uri", "")), "jwks_uri")
            jwks = await _get_json(client, jwks_uri)
        out: dict[str, dict[str, Any]] = {}
        for jwk in jwks.get("keys", []) if isinstance(jwks.get("keys"), list) else []:
            if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str) and \
                    jwk.get("use", "sig") == "sig":
                out[jwk["kid"]] = jwk
        if not out:
            raise ValueError("the JWKS holds no signing key")
        return out


async def _get_json(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """GET a JSON object of at most 1 MiB."""
    async with client.stream("GET", url, headers={"Accept": "application/json"}) as resp:
        if resp.status_code != 200:
            raise ValueError(f"{url} answered {resp.status_code}")
        body = bytearray()
        async for piece in resp.aiter_bytes():
            body += piece
            if len(body) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"{url} sent more than {MAX_DOCUMENT_BYTES} bytes")
    data = json.loads(bytes(body))
    if not isinstance(data, dict):
        raise ValueError(f"{url} did not send a JSON object")
    return data


def looks_like_jwt(presented: str) -> bool:
    """A compact JWS: three base64url parts, the header a JSON object (``eyJ``)."""
    return presented.startswith("eyJ") and presented.count(".") == 2


@dataclass
class Verifier:
    """Turns a presented JWT into a :class:`Principal` for the requested repository."""

    config: OidcConfig
    keys: KeyCache
    leeway_s: float = 60.0
    max_token_bytes: int = 8192
    _parsed: dict[tuple[str, str, str, str], Any] = field(default_factory=dict, repr=False)

    async def principal(self, presented: str, repository: str | None,
                        role: str = "upload") -> Principal:
        issuer, claims = await self.verify(presented)
        if role != "upload":
            raise forbidden("CI identity tokens have role upload; this route needs an admin token")
        return self.match(issuer, claims, repository)

    async def verify(self, presented: str) -> tuple[Issuer, dict[str, Any]]:
        """Verified claims, or 401 (503 when the issuer's keys are unavailable)."""
        if len(presented) > self.max_token_bytes:
            raise unauthorized(f"identity token larger than {self.max_token_bytes} bytes")
        try:
            parsed = jwt.decode_complete(presented, options={"verify_signature": False})
            header, unverified = parsed["header"], parsed["payload"]
        except jwt.PyJWTError:
            raise unauthorized("malformed identity token") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise unauthorized(f"identity token algorithm {str(alg)[:16]!r} is not accepted "
                               "(RS256 or ES256 only)")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise unauthorized("identity token has no key id (kid)")
        iss = unverified.get("iss")
        issuer = self.config.issuer(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise unauthorized("identity token issuer is not trusted here")
        try:
            jwk = await self.keys.key(issuer, kid)
        except KeysUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        if jwk is None:
            raise unauthorized(f"identity token key id is not published by {issuer.issuer}")
        kty, crv = ALGORITHMS[alg]
        if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv) or \
                jwk.get("alg", alg) != alg:
            raise unauthorized(f"identity token algorithm {alg} does not fit its key")
        try:
            key = self._key(issuer, kid, jwk, alg)
            claims = jwt.decode(
                presented, key, algorithms=[alg], audience=issuer.audience, issuer=issuer.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iat", "iss", "aud", "sub"], "verify_iat": True})
        except jwt.ExpiredSignatureError:
            raise unauthorized("identity token has expired") from None
        except jwt.ImmatureSignatureError:
            raise unauthorized("identity token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise unauthorized(f"identity token audience is not {issuer.audience!r}") from None
        except jwt.InvalidSignatureError:
            raise unauthorized("identity token signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise unauthorized(f"identity token refused: {type(exc).__name__}") from None
        if float(claims["iat"]) > time.time() + self.leeway_s:
            raise unauthorized("identity token is not valid yet (issued in the future)")
        return issuer, claims

    def _key(self, issuer: Issuer, kid: str, jwk: dict[str, Any], alg: str) -> Any:
        """The public key object of ``jwk``, parsed once (parsing costs more than verifying)."""
        ident = (issuer.issuer, kid, json.dumps(jwk, sort_keys=True), alg)
        key = self._parsed.get(ident)
        if key is None:
            if len(self._parsed) >= 64:  # rotation leaves old entries behind: start afresh
                self._parsed.clear()
            key = self._parsed[ident] = jwt.PyJWK(jwk, algorithm=alg).key
        return key

    def match(self, issuer: Issuer, claims: dict[str, Any], repository: str | None) -> Principal:
        """The first policy whose claims match and that names ``repository``; 403 otherwise."""
        best: tuple[int, str] | None = None
        matched_other_repo = False
        for policy in issuer.policies:
            failed = policy.mismatch(claims)
            if failed is not None:
                score = list(policy.claims).index(failed)
                if best is None or score > best[0]:
                    best = (score, f"policy {policy.name or '#'}: claim {failed!r} does not match")
                continue
            if policy.repository != repository:
                matched_other_repo = True
                continue
            try:
                prefix = policy.render_prefix(claims)
            except ValueError as exc:
                raise forbidden(str(exc)) from None
            used = {k: str(claims[k]) for k in PROVENANCE_CLAIMS if k in claims}
            return Principal(
                label=f"{issuer.display}:{claims['sub']}"[:256], role=policy.role,
                repository=policy.repository, prefix=prefix, kind="oidc",
                issuer=issuer.issuer, subject=str(claims["sub"]), policy=policy.name or None,
                claims=used, run_url=issuer.run_url(claims), max_ttl_s=policy.max_ttl_s,
                quota_bytes=policy.quota_bytes)
        if matched_other_repo:
            raise forbidden("this identity may not write to this repository")
        assert best is not None  # issuers have at least one policy
        raise forbidden(f"no trust policy matches this identity ({best[1]})")
