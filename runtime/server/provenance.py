"""Provenance of an upload: who authorised it, and the metadata its uploader sent.

The uploader describes its artifact with ``X-Artifact-Meta-<Key>: <value>`` headers (a CI
client sends ``commit-sha``, ``pipeline-url``, ``ref``). They are a stranger's input kept for
the artifact's whole life in ``state.db`` and shown in every listing, so they are bounded before
any byte of the body is staged: at most :data:`MAX_KEYS` keys of ``[A-Za-z0-9-]{1,64}``
(compared lower-case, as HTTP header names are), values of at most :data:`MAX_VALUE_BYTES`
printable UTF-8 bytes, :data:`MAX_TOTAL_BYTES` in all. A violation refuses the upload (400,
nothing published).

The identity comes from :meth:`runtime.auth.principal.Principal.provenance`: a static token's
label, or the OIDC issuer, subject and claims; never a secret or a raw token.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from ..auth.principal import Principal

PREFIX = b"x-artifact-meta-"
MAX_KEYS = 16
MAX_KEY_CHARS = 64
MAX_VALUE_BYTES = 512
MAX_TOTAL_BYTES = 4096
_KEY = re.compile(r"[A-Za-z0-9-]{1,%d}" % MAX_KEY_CHARS)


class InvalidMetadata(ValueError):
    """An ``X-Artifact-Meta-*`` header out of bounds (the upload answers 400)."""


def metadata_from_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The ``X-Artifact-Meta-*`` headers as ``{key: value}``, checked against the bounds."""
    meta: dict[str, str] = {}
    total = 0
    for field, raw in raw_headers:
        field = field.lower()
        if not field.startswith(PREFIX):
            continue
        key = field[len(PREFIX):].decode("latin-1")
        if not _KEY.fullmatch(key):
            raise InvalidMetadata(f"metadata header X-Artifact-Meta-{key[:MAX_KEY_CHARS]!r}: "
                                  f"the key must be 1 to {MAX_KEY_CHARS} of A-Z a-z 0-9 -")
        key = key.lower()
        if key in meta:
            raise InvalidMetadata(f"metadata key {key!r} is sent more than once")
        if len(meta) == MAX_KEYS:
            raise InvalidMetadata(f"more than {MAX_KEYS} X-Artifact-Meta-* headers")
        if len(raw) > MAX_VALUE_BYTES:
            raise InvalidMetadata(f"metadata {key!r}: the value is longer than "
                                  f"{MAX_VALUE_BYTES} bytes")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidMetadata(f"metadata {key!r}: the value is not UTF-8") from None
        if not value.isprintable():
            raise InvalidMetadata(f"metadata {key!r}: the value has control or invisible "
                                  "characters")
        total += len(key) + len(raw)
        if total > MAX_TOTAL_BYTES:
            raise InvalidMetadata(f"X-Artifact-Meta-* headers larger than {MAX_TOTAL_BYTES} "
                                  "bytes in all")
        meta[key] = value
    return meta


def record(principal: Principal, meta: Mapping[str, str]) -> dict[str, object]:
    """What ``state.db`` keeps about an upload (``Transaction.set_provenance``)."""
    return {"uploaded_by": principal.provenance(), "meta": dict(meta)}
