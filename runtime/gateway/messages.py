"""Notification messages (docs/cvmfs-format.md, "Notifications"): building them like the real publisher, checking
them like the real subscriber, and framing them as server-sent events.

The real publisher (``cvmfs/notify/messages.cc``) hand-builds the JSON with spaces around
``:`` and after ``,`` and a timestamp without zone (UTC); messages built here are byte-for-byte
of the same shape, so a stored message looks the same whoever published it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass

from ..cvmfs import manifest as manifest_mod

TIME_FORMAT = "%d %b %Y %H:%M:%S"
VERSION = 1


class MessageError(ValueError):
    """A publish request body that is not a valid notification message (HTTP 400)."""


@dataclass(frozen=True)
class Message:
    repository: str
    manifest: bytes  # the complete signed .cvmfspublished
    revision: int
    raw: bytes  # the one-line JSON stored and sent to subscribers

    def event(self) -> bytes:
        """The SSE frame: ``data: <json>`` LF LF (sent in one write)."""
        return b"data: " + self.raw + b"\n\n"


def make(fqrn: str, manifest_blob: bytes, now: dt.datetime | None = None) -> Message:
    """A message exactly as ``cvmfs_swissknife notify -p`` would send it."""
    now = now or dt.datetime.now(dt.timezone.utc)
    stamp = now.astimezone(dt.timezone.utc).strftime(TIME_FORMAT)
    encoded = base64.b64encode(manifest_blob).decode("ascii")
    raw = ('{ "version" : %d, "timestamp" : %s, "type" : "activity", "repository" : %s, '
           '"manifest" : %s}' % (VERSION, json.dumps(stamp), json.dumps(fqrn),
                                 json.dumps(encoded))).encode("utf-8")
    revision = manifest_mod.parse(manifest_blob).revision
    return Message(fqrn, manifest_blob, revision, raw)


def parse(body: bytes) -> Message:
    """Check a published body like the client will (§10.2) and parse its manifest.

    The body is kept byte-for-byte when it is already one line; a body spread over several
    lines is re-serialized on one line, since a subscriber reads one line per event.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"body is not JSON: {str(exc).splitlines()[0]}") from exc
    if not isinstance(doc, dict):
        raise MessageError("body must be a JSON object")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version != VERSION:
        raise MessageError(f"'version' must be the integer {VERSION}")
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
    raw = body.strip()
    if b"\n" in raw or b"\r" in raw:
        raw = json.dumps(doc).encode("utf-8")
    return Message(doc["repository"], blob, revision, raw)
