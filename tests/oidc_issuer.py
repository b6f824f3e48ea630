"""A real OIDC issuer on loopback for the trusted-publishing tests.

It serves the discovery document and the JWKS over HTTP (ThreadingHTTPServer), signs tokens
with its own RSA and EC keys, can rotate keys and go down, counts JWKS fetches, and plays
GitHub's runner token endpoint (``ACTIONS_ID_TOKEN_REQUEST_URL``). Claims are shaped like the
real ones GitHub Actions and GitLab CI issue.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.parse
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

AUDIENCE = "https://cvmfs.test"
REQUEST_TOKEN = "runner-request-token-0123456789"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SigningKey:
    """A private key and its public JWK."""

    def __init__(self, kid: str, alg: str = "RS256"):
        self.kid, self.alg = kid, alg
        if alg == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk.update(kid=kid, use="sig", alg=alg)


class Issuer:
    def __init__(self) -> None:
        self.keys: list[SigningKey] = [SigningKey("key-1")]
        self.down = False
        self.jwks_fetches = 0
        self.refused_while_down = 0
        #: Misbehaviours: a discovery document naming another issuer, a JWKS padded past 1 MiB.
        self.claimed_issuer: str | None = None
        self.jwks_padding = 0
        self.stall_s = 0.0  # a hung issuer: answer after this long
        self.token_requests: list[dict[str, str]] = []
        self.runner_claims: dict[str, Any] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ---------------------------------------------------------------------------- serving
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _json(self, status: int, obj: object) -> None:
                body = json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a stalled answer after its timeout)

            def do_GET(self) -> None:  # noqa: N802
                path, _, query = self.path.partition("?")
                if issuer.stall_s and path != "/token":
                    time.sleep(issuer.stall_s)
                if issuer.down and path != "/token":
                    issuer.refused_while_down += 1
                    return self._json(503, {"message": "unavailable"})
                if path == "/.well-known/openid-configuration":
                    return self._json(200, {"issuer": issuer.claimed_issuer or issuer.url,
                                            "jwks_uri": f"{issuer.url}/jwks",
                                            "id_token_signing_alg_values_supported": ["RS256"]})
                if path == "/jwks":
                    issuer.jwks_fetches += 1
                    doc = {"keys": [k.jwk for k in issuer.keys]}
                    if issuer.jwks_padding:
                        doc["padding"] = "x" * issuer.jwks_padding
                    return self._json(200, doc)
                if path == "/token":  # GitHub's runner endpoint
                    params = dict(urllib.parse.parse_qsl(query))
                    issuer.token_requests.append(params)
                    if self.headers.get("Authorization") != f"bearer {REQUEST_TOKEN}":
                        return self._json(401, {"message": "bad request token"})
                    claims = github_claims(issuer.url, params.get("audience", ""),
                                           **issuer.runner_claims)
                    return self._json(200, {"count": 1, "value": issuer.sign(claims)})
                self._json(404, {"message": "not found"})

        return Handler

    def start(self) -> "Issuer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---------------------------------------------------------------------------- tokens
    def rotate(self, alg: str = "RS256") -> SigningKey:
        """Publish a new key (new kid) and drop the old ones, as issuers do."""
        key = SigningKey(f"key-{len(self.keys) + 1}-{int(time.time() * 1000)}", alg)
        self.keys = [key]
        return key

    def sign(self, claims: dict[str, Any], key: SigningKey | None = None,
             headers: dict[str, Any] | None = None) -> str:
        key = key or self.keys[0]
        return jwt.encode(claims, key.private, algorithm=key.alg,
                          headers={"kid": key.kid, **(headers or {})})


def github_claims(iss: str, aud: str = AUDIENCE, **over: Any) -> dict[str, Any]:
    """Claims as GitHub Actions issues them (docs: 'About security hardening with OIDC')."""
    now = int(time.time())
    claims = {
        "jti": "example-id", "sub": "repo:octo-org/app:ref:refs/heads/main",
        "aud": aud, "ref": "refs/heads/main", "sha": "d6f2f5a4c1b0e9e8d7c6b5a4f3e2d1c0b9a8f7e6",
        "repository": "octo-org/app", "repository_owner": "octo-org",
        "repository_owner_id": "5", "run_id": "9876543210", "run_number": "42",
        "run_attempt": "1", "repository_visibility": "private", "repository_id": "123456",
        "actor_id": "12", "actor": "octocat", "workflow": "CI", "head_ref": "", "base_ref": "",
        "event_name": "push", "ref_type": "branch", "ref_protected": "true",
        "workflow_ref": "octo-org/app/.github/workflows/ci.yml@refs/heads/main",
        "workflow_sha": "d6f2f5a4c1b0e9e8d7c6b5a4f3e2d1c0b9a8f7e6",
        "job_workflow_ref": "octo-org/app/.github/workflows/ci.yml@refs/heads/main",
        "runner_environment": "github-hosted", "iss": iss,
        "nbf": now - 5, "exp": now + 300, "iat": now - 5,
    }
    claims.update(over)
    return claims


def gitlab_claims(iss: str, aud: str = AUDIENCE, **over: Any) -> dict[str, Any]:
    """Claims of a GitLab CI ``id_tokens:`` token (docs: 'OpenID Connect (OIDC) ID tokens')."""
    now = int(time.time())
    claims = {
        "namespace_id": "72", "namespace_path": "group/sub", "project_id": "4242",
        "project_path": "group/sub/app", "user_id": "7", "user_login": "dev",
        "user_email": "dev@example.org", "user_access_level": "developer",
        "pipeline_id": "1001", "pipeline_source": "push", "job_id": "55501",
        "ref": "main", "ref_type": "branch", "ref_path": "refs/heads/main",
        "ref_protected": "true", "runner_id": 3, "runner_environment": "gitlab-hosted",
        "sha": "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567", "project_visibility": "private",
        "ci_config_ref_uri": "gitlab.example.org/group/sub/app//.gitlab-ci.yml@refs/heads/main",
        "ci_config_sha": "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567",
        "jti": "a7d3b8b2-0000-4f6e-9d3c-aaaaaaaaaaaa", "iss": iss, "aud": aud,
        "sub": "project_path:group/sub/app:ref_type:branch:ref:main",
        "iat": now - 5, "nbf": now - 5, "exp": now + 300,
    }
    claims.update(over)
    return claims


def unsigned(claims: dict[str, Any], kid: str = "key-1") -> str:
    """``alg: none``: no signature at all."""
    header = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}."


def hs256_with_public_key(claims: dict[str, Any], key: SigningKey) -> str:
    """The algorithm-confusion attack: HMAC keyed with the issuer's *public* key (PEM)."""
    from cryptography.hazmat.primitives import serialization

    pem = key.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    payload = b64url(json.dumps(claims).encode())
    sig = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(sig)}"


def tampered(token: str, **over: Any) -> str:
    """The same header and signature over a changed payload."""
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(over)
    return f"{header}.{b64url(json.dumps(claims).encode())}.{sig}"


@contextmanager
def running_issuer() -> Iterator[Issuer]:
    issuer = Issuer().start()
    try:
        yield issuer
    finally:
        issuer.stop()
