"""Notification messages (docs/cvmfs-format.md, "Notifications"): reading a publish request strictly, and building
the one canonical message per manifest that subscribers are sent.

The gateway never stores or forwards a publisher's bytes. A request body only *carries* a
manifest; once that manifest verifies, the message subscribers get is re-serialized here
(:func:`canonical`) in the shape the real publisher (``cvmfs/notify/messages.cc``) writes:
hand-built JSON with spaces around ``:`` and after ``,``, keys in its order, and a UTC
timestamp without zone. The timestamp is the manifest's own signed ``T`` field, so the message
is a pure function of the manifest: whoever publishes a revision, and however often, every
subscriber sees the same bytes, and nothing a publisher adds (extra keys, odd whitespace,
duplicate keys) can reach a client whose JSON parser might choke on it.

Request bodies are parsed strictly (:func:`load_strict`): bounded size and nesting depth, no
duplicate keys, no NaN/Infinity, so lenient input is a clear 400 instead of a guess.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..cvmfs import manifest as manifest_mod

TIME_FORMAT = "%d %b %Y %H:%M:%S"
VERSION = 1
#: A publish body is ~1 KB (a base64 manifest); 64 KiB leaves room for any real manifest.
MAX_PUBLISH_BODY = 64 * 1024
#: A subscribe body is ``{"version":1,"repository":"<fqrn>"}``: at most ~300 bytes.
MAX_SUBSCRIBE_BODY = 4 * 1024
#: Both messages are flat objects (depth 1); anything deeper than this is not one of them.
MAX_DEPTH = 8

#: A string, or an unterminated one running to the end: the optional closing quote means the
#: match never fails, so the regex never backtracks and a scan is linear in the body size.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


class MessageError(ValueError):
    """A request body that is not a valid notification message (HTTP 400)."""


@dataclass(frozen=True)
class Message:
    repository: str
    manifest: bytes  # the complete signed .cvmfspublished
    revision: int
    raw: bytes  # the canonical one-line JSON sent to subscribers
    _event: bytes = field(default=b"", repr=False, compare=False)

    def event(self) -> bytes:
        """The SSE frame: ``data: <json>`` LF LF (sent in one write, one HTTP chunk)."""
        return self._event or b"data: " + self.raw + b"\n\n"

    def chunk(self) -> bytes:
        """The event framed as one HTTP/1.1 chunk (``<hex size>`` CRLF event CRLF), byte for
        byte what the server writes for a body part: ready to be written to many sockets."""
        event = self.event()
        return b"%x\r\n%s\r\n" % (len(event), event)


def canonical(fqrn: str, manifest_blob: bytes) -> Message:
    """The message for a manifest, byte-for-byte as ``cvmfs_swissknife notify -p`` writes one,
    stamped with the manifest's signed timestamp (see the module docstring for why)."""
    parsed = manifest_mod.parse(manifest_blob)
    stamp = dt.datetime.fromtimestamp(max(parsed.timestamp, 0), dt.timezone.utc)
    encoded = base64.b64encode(manifest_blob).decode("ascii")
    raw = ('{ "version" : %d, "timestamp" : %s, "type" : "activity", "repository" : %s, '
           '"manifest" : %s}' % (VERSION, json.dumps(stamp.strftime(TIME_FORMAT)),
                                 json.dumps(fqrn), json.dumps(encoded))).encode("ascii")
    return Message(fqrn, manifest_blob, parsed.revision, raw, b"data: " + raw + b"\n\n")


def _depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit`` (linear, no recursion, so
    neither a deep nor a quote-laden body can make it slow or overflow)."""
    outside = _STRING.sub(b"", body)
    if outside.count(b"[") + outside.count(b"{") <= limit:
        return False  # every real message: one object
    depth = 0
    for m in _BRACKET.finditer(outside):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise MessageError(f"duplicate key {key!r} in JSON object")
        doc[key] = value
    return doc


def _no_constant(name: str) -> Any:
    raise MessageError(f"{name} is not valid JSON")


def load_strict(body: bytes, limit: int) -> Any:
    """RFC 8259 JSON only: bounded size and depth, unique keys, no NaN/Infinity."""
    if len(body) > limit:
        raise MessageError(f"body larger than {limit} bytes")
    if _depth_exceeds(body, MAX_DEPTH):
        raise MessageError(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(body, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except MessageError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MessageError(f"body is not JSON: {first}") from exc


def _version(doc: dict[str, Any]) -> None:
    version = doc.get("version")
    if type(version) is not int or version != VERSION:
        raise MessageError(f"'version' must be the integer {VERSION}")


@dataclass(frozen=True)
class PublishRequest:
    """What a publish body claims: a repository and a manifest (not yet verified)."""

    repository: str
    manifest: bytes
    revision: int


def parse(body: bytes) -> PublishRequest:
    """Check a publish body like the client checks a message (§10.2) and decode its manifest."""
    doc = load_strict(body, MAX_PUBLISH_BODY)
    if not isinstance(doc, dict):
        raise MessageError("body must be a JSON object")
    _version(doc)
    if doc.get("type") != "activity":
        raise MessageError("'type' must be \"activity\"")
    for key in ("timestamp", "repository", "manifest"):
        if not isinstance(doc.get(key), str):
            raise MessageError(f"'{key}' must be a string")
    try:
        blob = base64.b64decode(doc["manifest"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MessageError("'manifest' is not valid base64") from exc
    try:
        revision = manifest_mod.parse(blob).revision
    except manifest_mod.ManifestError as exc:
        raise MessageError(f"'manifest' is not a signed manifest: {exc}") from exc
    return PublishRequest(doc["repository"], blob, revision)


def parse_subscription(body: bytes) -> str:
    """The repository a subscribe body ``{"version":1,"repository":"<fqrn>"}`` names."""
    doc = load_strict(body, MAX_SUBSCRIBE_BODY)
    if not isinstance(doc, dict) or not isinstance(doc.get("repository"), str):
        raise MessageError('expected a JSON body {"version":1,"repository":"<fqrn>"}')
    if "version" in doc:
        _version(doc)
    return doc["repository"]
