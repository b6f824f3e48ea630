"""End-to-end integrity of an upload: the digest a client expects, checked while the body streams.

A client names the SHA-256 of the bytes it sends, either as RFC 9530's ``Content-Digest:
sha-256=:<base64>:`` header or as ``?sha256=<hex>``. The server hashes the body's pieces as
they pass on their way to the stager (no second read of the staged file) and, at the end,
compares: a mismatch aborts the transaction before it reaches the committer, so nothing is
published (400). A digest the client got wrong in form (not base64, wrong length) is refused
before the body is read (400).

``Content-Digest`` is a structured-field dictionary (RFC 8941): other algorithms may be listed
beside ``sha-256`` and are ignored, as RFC 9530 lets a recipient do; a header naming no
algorithm we know is ignored as a whole (nothing to check against).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import AsyncIterator

from fastapi import HTTPException

_MEMBER = re.compile(r"^([a-z*][a-z0-9_\-.*]*)\s*=\s*:([A-Za-z0-9+/=]*):\s*(;.*)?$")
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
#: Longer headers are refused unread (one sha-512 member is under 100 bytes).
MAX_HEADER = 1024


def _bad(detail: str) -> HTTPException:
    return HTTPException(400, detail)


def from_header(value: str) -> bytes | None:
    """The SHA-256 named by a ``Content-Digest`` header (None if it names none); 400 if the
    header is malformed."""
    if len(value) > MAX_HEADER:
        raise _bad(f"malformed Content-Digest header: longer than {MAX_HEADER} bytes")
    found: bytes | None = None
    for member in value.split(","):
        match = _MEMBER.match(member.strip())
        if match is None:
            raise _bad("malformed Content-Digest header: expected e.g. "
                       "'sha-256=:<base64 of the 32-byte digest>:' (RFC 9530)")
        algorithm, encoded = match.group(1), match.group(2)
        if algorithm != "sha-256":
            continue
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise _bad("malformed Content-Digest header: sha-256 value is not base64") from None
        if len(raw) != 32:
            raise _bad(f"malformed Content-Digest header: sha-256 value has {len(raw)} bytes, "
                       "expected 32")
        found = raw
    return found


def from_query(value: str) -> bytes:
    """The SHA-256 named by ``?sha256=<hex>``; 400 unless it is 64 hex digits."""
    if not _HEX.match(value):
        raise _bad("malformed sha256 parameter: expected 64 hexadecimal digits")
    return bytes.fromhex(value)


def expected(header: str | None, query: str | None) -> bytes | None:
    """The digest the client expects, from either place (both must then agree)."""
    by_header = from_header(header) if header is not None else None
    by_query = from_query(query) if query is not None else None
    if by_header is not None and by_query is not None and by_header != by_query:
        raise _bad("the Content-Digest header and the sha256 parameter name different digests")
    return by_header if by_header is not None else by_query


class HashingBody:
    """Wraps the body's pieces: hashes each one as it passes to the stager."""

    def __init__(self, chunks: AsyncIterator[bytes], want: bytes | None):
        self._chunks = chunks
        self.want = want
        self._hash = hashlib.sha256()

    async def pieces(self) -> AsyncIterator[bytes]:
        """The body's pieces, unchanged, each hashed on its way."""
        async for chunk in self._chunks:
            self._hash.update(chunk)
            yield chunk

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def verify(self) -> None:
        """400 when the client named a digest and the bytes received have another one."""
        if self.want is not None and self._hash.digest() != self.want:
            raise _bad(f"content digest mismatch: expected sha-256 {self.want.hex()}, "
                       f"received {self.hexdigest()}; nothing was published")


def header_value(data_digest: bytes) -> str:
    """``Content-Digest`` value for a SHA-256 (what a client sends)."""
    return f"sha-256=:{base64.b64encode(data_digest).decode()}:"


__all__ = ["HashingBody", "expected", "from_header", "from_query", "header_value"]
