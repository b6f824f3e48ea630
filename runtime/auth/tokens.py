"""Static bearer tokens: labelled, with a role and optional repository and prefix scopes.

Sources:

- ``CVMFS_EPHEMERAL_TOKENS_FILE``: one token per line, ``#`` comments. The current format is
  one JSON object per line, storing only the SHA-256 of the secret::

      {"label": "ci-team-a", "role": "upload", "repository": "ci.example.org",
       "prefix": "team-a-", "sha256": "9f86d0…"}

  ``python -m runtime token new`` prints a fresh secret and its line. ``"secret": "<plain>"``
  instead of ``sha256`` is accepted with a warning. Legacy lines ``token [repository]`` keep
  working, with a warning and their old meaning: admin, on one repository or on all.
- ``CVMFS_EPHEMERAL_TOKENS`` (comma list of ``token`` or ``token:repo``): legacy, same meaning.

Why hashes: whoever reads the file (a backup, a debug dump of a Secret) learns no credential.
Why SHA-256 and not a slow password hash: the secrets are 256-bit random strings, so a fast
hash loses nothing, and every request can afford it. A presented secret is hashed once and
compared, in constant time, with every configured hash (the loop does not stop at a match,
so timing does not tell which token or how many bytes matched).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..settings import Settings, validate_fqrn
from .principal import ROLES, Principal, Role

log = logging.getLogger(__name__)

LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,127}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
#: What ``token new`` secrets start with: easy to spot for secret scanners and never a JWT.
SECRET_PREFIX = "cvmfse_"
FIELDS = {"label", "role", "repository", "prefix", "sha256", "secret"}


class TokenConfigError(ValueError):
    """A tokens file or variable the service cannot start with (one line, names the place)."""


def digest(secret: str) -> str:
    """Hex SHA-256 of a secret, as stored in the tokens file."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Token:
    """One configured token. ``secret`` is kept only for plain (legacy) entries."""

    secret: str
    repository: str | None  # None: every repository
    #: What logs and provenance name this token by; never the secret.
    label: str = "token"
    role: Role = "admin"
    prefix: str | None = None
    sha256: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not self.sha256:
            object.__setattr__(self, "sha256", digest(self.secret))

    def principal(self) -> Principal:
        return Principal(label=self.label, role=self.role, repository=self.repository,
                         prefix=self.prefix, kind="token")


def validate_prefix(prefix: str) -> str:
    """A namespace prefix: non-empty, printable, no ``..`` segment, not ``.cvmfs``."""
    if not prefix or len(prefix.encode()) > 200 or any(ord(c) < 32 or c == "\x7f" for c in prefix):
        raise ValueError(f"invalid prefix {prefix!r}: 1 to 200 printable characters")
    if prefix.startswith(("/", ".cvmfs")) or ".." in prefix.split("/"):
        raise ValueError(f"invalid prefix {prefix!r}: must not start with '/' or '.cvmfs' "
                         "nor contain a '..' segment")
    return prefix


def parse_entry(obj: Any, where: str) -> tuple[Token, bool]:
    """A JSON tokens-file entry -> (token, stored in plain text)."""
    if not isinstance(obj, dict):
        raise TokenConfigError(f"{where}: expected a JSON object")
    unknown = sorted(set(obj) - FIELDS)
    if unknown:
        raise TokenConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(FIELDS))})")
    label = obj.get("label")
    if not isinstance(label, str) or not LABEL_RE.match(label):
        raise TokenConfigError(f"{where}: 'label' must be 1-128 characters of A-Z a-z 0-9 ._:@+/-")
    role = obj.get("role", "upload")
    if role not in ROLES:
        raise TokenConfigError(f"{where}: 'role' must be one of {', '.join(ROLES)}")
    repo = obj.get("repository")
    prefix = obj.get("prefix")
    try:
        if repo is not None:
            validate_fqrn(repo)
        if prefix is not None:
            validate_prefix(prefix)
    except (ValueError, TypeError) as exc:
        raise TokenConfigError(f"{where}: {exc}") from None
    if prefix is not None and role == "admin":
        raise TokenConfigError(f"{where}: an admin token cannot have a prefix scope")
    has_hash, has_secret = "sha256" in obj, "secret" in obj
    if has_hash == has_secret:
        raise TokenConfigError(f"{where}: give exactly one of 'sha256' and 'secret'")
    if has_hash:
        value = str(obj["sha256"]).lower()
        if not HEX64_RE.match(value):
            raise TokenConfigError(f"{where}: 'sha256' must be 64 hex digits")
        return Token("", repo, label, role, prefix, value), False
    secret = obj["secret"]
    if not isinstance(secret, str) or len(secret) < 16 or any(c.isspace() for c in secret):
        raise TokenConfigError(f"{where}: 'secret' must be at least 16 characters, no whitespace")
    return Token(secret, repo, label, role, prefix), True


def _legacy(secret: str, repo: str | None, label: str) -> Token:
    """``token [repo]``: the old meaning, admin of one repository or of all of them."""
    return Token(secret, repo or None, label, "admin", None)


def load_tokens(settings: Settings) -> list[Token]:
    """All configured tokens (the file is read at start; restart the service to rotate).

    Raises :class:`TokenConfigError` on a malformed entry or a secret configured twice.
    """
    out: list[Token] = []
    env_count = 0
    for item in settings.tokens.split(","):
        item = item.strip()
        if item:
            secret, _, scope = item.partition(":")
            env_count += 1
            out.append(_legacy(secret, scope, f"env-{len(out) + 1}"))
    if env_count:
        log.warning("CVMFS_EPHEMERAL_TOKENS holds %d plain-text token(s) with the legacy "
                    "meaning (admin); prefer a hashed tokens file (python -m runtime token new)",
                    env_count)
    if settings.tokens_file is not None:
        out += _read_file(Path(settings.tokens_file), len(out))
    seen: dict[str, str] = {}
    for token in out:
        if token.sha256 in seen:
            raise TokenConfigError(f"tokens '{seen[token.sha256]}' and '{token.label}' have the "
                                   "same secret")
        seen[token.sha256] = token.label
    return out


def _read_file(path: Path, start: int) -> list[Token]:
    out: list[Token] = []
    plain: list[str] = []
    legacy = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TokenConfigError(f"{where}: not valid JSON ({exc.msg})") from None
            token, is_plain = parse_entry(obj, where)
            if is_plain:
                plain.append(token.label)
        else:
            parts = line.split("#", 1)[0].split()
            if len(parts) > 2:
                raise TokenConfigError(f"{where}: expected 'token [repository]' or a JSON object")
            repo = parts[1] if len(parts) > 1 else None
            if repo is not None:
                try:
                    validate_fqrn(repo)
                except ValueError as exc:
                    raise TokenConfigError(f"{where}: {exc}") from None
            token = _legacy(parts[0], repo, f"file-{start + len(out) + 1}")
            legacy += 1
        out.append(token)
    if plain:
        log.warning("%s stores plain-text secrets for %s; store their sha256 instead "
                    "(python -m runtime token hash)", path, ", ".join(plain))
    if legacy:
        log.warning("%s has %d legacy 'token [repository]' line(s): plain-text admin tokens; "
                    "replace them with labelled, hashed entries (python -m runtime token new)",
                    path, legacy)
    return out


def match(tokens: list[Token], presented: str) -> Token | None:
    """The token whose hash equals the presented secret's; compares against every token."""
    want = hashlib.sha256(presented.encode()).digest()
    found: Token | None = None
    for token in tokens:
        if hmac.compare_digest(want, bytes.fromhex(token.sha256)):
            found = token
    return found


def new_token(label: str, role: Role = "upload", repository: str | None = None,
              prefix: str | None = None) -> tuple[str, str]:
    """A fresh secret and the tokens-file line that grants it (checked like a loaded line)."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    entry: dict[str, str] = {"label": label, "role": role}
    if repository is not None:
        entry["repository"] = repository
    if prefix is not None:
        entry["prefix"] = prefix
    entry["sha256"] = digest(secret)
    parse_entry(entry, "new token")
    return secret, json.dumps(entry, separators=(", ", ": "))
