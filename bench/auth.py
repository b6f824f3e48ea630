"""Cost of authorising one write request, beside the cost of the cryptography it cannot avoid.

Prints medians (over ``--repeat`` rounds of ``--n`` checks each) of:

- a static token among ``--tokens`` hashed tokens: ``Authorizer.check``, and the baseline of one
  SHA-256 of the secret plus one constant-time comparison per configured token;
- a GitHub-shaped identity token (RS256, keys cached from a real issuer on loopback):
  ``Authorizer.check`` including policy matching, and the baseline of PyJWT's own
  ``jwt.decode`` (signature + claims) of the same token with the same key.

Usage: ``python bench/auth.py [--n 2000] [--repeat 5] [--tokens 100]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jwt  # noqa: E402
from starlette.requests import Request  # noqa: E402

from runtime.auth import Authorizer  # noqa: E402
from runtime.auth.tokens import digest, load_tokens  # noqa: E402
from runtime.settings import Settings  # noqa: E402
from tests.oidc_issuer import AUDIENCE, github_claims, running_issuer  # noqa: E402

FQRN = "ci.example.org"


def request(token: str) -> Request:
    return Request({"type": "http", "method": "PUT", "path": f"/repos/{FQRN}/gh+123456+x",
                    "headers": [(b"authorization", f"Bearer {token}".encode())],
                    "query_string": b""})


async def per_check_us(authorizer: Authorizer, token: str, n: int) -> float:
    req = request(token)
    started = time.perf_counter()
    for _ in range(n):
        await authorizer.check(req, FQRN, name="gh+123456+x")
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=100)
    args = ap.parse_args()
    import logging
    logging.disable(logging.INFO)  # the grant log line is not what is measured

    tmp = Path(__import__("tempfile").mkdtemp(prefix="bench-auth-"))
    secrets_ = [f"cvmfse_bench-secret-{i:04d}-0123456789" for i in range(args.tokens)]
    (tmp / "tokens").write_text("".join(
        json.dumps({"label": f"t{i}", "role": "upload", "repository": FQRN,
                    "sha256": digest(s)}) + "\n" for i, s in enumerate(secrets_)))
    with running_issuer() as gh:
        oidc = json.dumps([{"issuer": gh.url, "audience": AUDIENCE, "policies": [
            {"claims": {"repository": "octo-org/app", "ref": "refs/heads/*"},
             "repository": FQRN, "prefix": "gh+{repository_id}+"}]}])
        settings = Settings(tokens_file=tmp / "tokens", oidc=oidc)
        authorizer = Authorizer.from_settings(settings)
        claims = github_claims(gh.url)
        claims["exp"] += 3600
        token = gh.sign(claims)
        public = gh.keys[0].private.public_key()
        hashes = [bytes.fromhex(t.sha256) for t in load_tokens(settings)]

        def baseline_static(n: int) -> float:
            started = time.perf_counter()
            for _ in range(n):
                want = hashlib.sha256(secrets_[-1].encode()).digest()
                for h in hashes:
                    hmac.compare_digest(want, h)
            return (time.perf_counter() - started) / n * 1e6

        def baseline_jwt(n: int) -> float:
            started = time.perf_counter()
            for _ in range(n):
                jwt.decode(token, public, algorithms=["RS256"], audience=AUDIENCE, issuer=gh.url)
            return (time.perf_counter() - started) / n * 1e6

        rows: dict[str, list[float]] = {k: [] for k in ("static", "static_base", "oidc", "oidc_base")}
        loop = asyncio.new_event_loop()
        loop.run_until_complete(per_check_us(authorizer, token, 1))  # fetch the keys once
        for _ in range(args.repeat):
            rows["static"].append(loop.run_until_complete(
                per_check_us(authorizer, secrets_[-1], args.n)))
            rows["static_base"].append(baseline_static(args.n))
            rows["oidc"].append(loop.run_until_complete(per_check_us(authorizer, token, args.n)))
            rows["oidc_base"].append(baseline_jwt(args.n))
        med = {k: statistics.median(v) for k, v in rows.items()}
        print(f"static token among {args.tokens}: {med['static']:.1f} us/check; baseline "
              f"sha256 + {args.tokens} compare_digest {med['static_base']:.1f} us "
              f"({med['static'] / med['static_base']:.2f}x)")
        print(f"identity token (RS256, cached keys): {med['oidc']:.1f} us/check; baseline "
              f"jwt.decode {med['oidc_base']:.1f} us ({med['oidc'] / med['oidc_base']:.2f}x)")
        print(f"JWKS fetches during the run: {gh.jwks_fetches}")


if __name__ == "__main__":
    main()
