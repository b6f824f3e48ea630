"""What the repository accepts as a name, a path, a symlink target, a mode or an mtime.

Everything here runs while a transaction is *staged*, so that any input the catalog or the
client could not hold refuses its own upload (:class:`InvalidPath`, 400) and can never fail a
group commit shared with other uploads (``commit.py``).
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from .errors import InvalidPath

MARKER_NAME = ".cvmfscatalog"
#: Names the format or cvmfs tooling give meaning to (``.cvmfscatalog``, ``.cvmfsdirtab``,
#: ``.cvmfspublished`` …) all start with this; such names are refused for artifacts and entries.
RESERVED_PREFIX = ".cvmfs"
#: Longest name a FUSE client can show (NAME_MAX).
NAME_MAX_BYTES = 255
#: Longest symlink target the kernel accepts (PATH_MAX).
SYMLINK_MAX_BYTES = 4096
#: The catalog's ``mtime`` and ``size`` columns are SQLite INTEGERs (signed 64-bit), as is the
#: client's ``time_t``; a tar's PAX header can say anything.
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
#: Permission bits kept on ingest. setuid, setgid and sticky are dropped: every entry is owned
#: by root on a stratum 0, so a kept setuid bit would serve setuid-root binaries to clients.
PERMISSION_BITS = 0o777

# C0 and C1 controls (NEL U+0085 among them), DEL, and the characters that make a name display
# as something else: line/paragraph separators (U+2028/2029) and bidirectional controls
# (U+061C, U+200E/200F, U+202A-202E, U+2066-2069).
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DECEPTIVE_CHARS = re.compile("[\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def validate_name(name: str, *, what: str = "name") -> str:
    """One path component: non-empty, no ``/``, NUL or control characters, not ``.``/``..``.

    Runs for every entry of every upload, so it is written for speed (one regex per class of
    refused characters, one encode).
    """
    if not isinstance(name, str) or name in ("", ".", ".."):
        raise InvalidPath(f"invalid {what} {name!r}")
    if "/" in name:
        raise InvalidPath(f"invalid {what} {name!r}: must not contain '/'")
    if _CONTROL_CHARS.search(name):
        raise InvalidPath(f"invalid {what} {name!r}: control characters are not allowed")
    if _DECEPTIVE_CHARS.search(name):
        raise InvalidPath(f"invalid {what} {name!r}: line separators and bidirectional "
                          "controls are not allowed")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPath(f"invalid {what} {name!r}: not valid UTF-8") from exc
    if len(encoded) > NAME_MAX_BYTES:
        raise InvalidPath(f"invalid {what}: longer than {NAME_MAX_BYTES} bytes")
    if name.startswith(RESERVED_PREFIX):
        raise InvalidPath(f"invalid {what} {name!r}: names starting with '.cvmfs' are reserved")
    return name


#: Default of ``CVMFS_EPHEMERAL_MAX_NAME_DEPTH``: segments an artifact name may have.
DEFAULT_MAX_NAME_DEPTH = 4


#: Top-level names the upload API answers itself (``GET /repos/{repo}/usage``): an artifact so
#: named could be published but never downloaded through the API, so uploads refuse it.
ROUTE_NAMES = frozenset({"usage"})


def refuse_route_name(name: str) -> str:
    """``name`` unless it is one of :data:`ROUTE_NAMES` (an upload's new name)."""
    if name in ROUTE_NAMES:
        raise InvalidPath(f"invalid artifact name {name!r}: reserved for the route "
                          f"GET /repos/{{repo}}/{name}; use a namespace such as 'ci/{name}'")
    return name


def validate_artifact_name(name: str, max_depth: int = DEFAULT_MAX_NAME_DEPTH) -> str:
    """An artifact name: 1 to ``max_depth`` segments joined by ``/``, each a valid name.

    ``team-a/app/pr-123`` is the artifact ``pr-123`` in the namespace ``team-a/app``. Empty
    segments (a leading, trailing or doubled ``/``), ``.`` and ``..`` are refused rather than
    normalised, so a name means exactly one place and can never climb out of its namespace.
    """
    if not isinstance(name, str) or name == "":
        raise InvalidPath("invalid artifact name ''")
    if "\\" in name:
        # a separator on Windows runners and in some proxies' path normalisation: a name
        # that one tool reads as two segments and another as one is refused outright
        raise InvalidPath(f"invalid artifact name {name!r}: backslashes are not allowed")
    if "/" not in name:
        return validate_name(name, what="artifact name")
    segments = name.split("/")
    if "" in segments:
        raise InvalidPath(f"invalid artifact name {name!r}: empty segment (leading, trailing "
                          "or doubled '/')")
    if len(segments) > max_depth:
        raise InvalidPath(f"invalid artifact name {name!r}: {len(segments)} segments, at most "
                          f"{max_depth} allowed")
    for segment in segments:
        validate_name(segment, what="artifact name segment")
    return name


def parent_namespace(name: str) -> str:
    """'team-a/app' for 'team-a/app/pr-123'; '' for a top-level name."""
    return name.rpartition("/")[0]


def top_namespace(name: str) -> str:
    """'team-a' for 'team-a/app/pr-123'; the name itself for a top-level name."""
    return name.partition("/")[0]


def namespaces_of(name: str) -> list[str]:
    """Every namespace holding ``name``, outermost first: ['a', 'a/b'] for 'a/b/c'."""
    segments = name.split("/")
    return ["/".join(segments[:i]) for i in range(1, len(segments))]


def child_namespaces(artifacts: Iterable[tuple[str, int]],
                     prefix: str) -> list[dict[str, object]]:
    """The namespaces directly below ``prefix`` ('' = the top) that the ``(name, size)`` pairs
    lie in, with how many artifacts and bytes each holds (a listing's and the browser's tree)."""
    cut = len(prefix) + 1 if prefix else 0
    out: dict[str, dict[str, object]] = {}
    for name, size in artifacts:
        rest = name[cut:]
        if "/" not in rest:
            continue
        ns = name[:cut] + rest.partition("/")[0]
        row = out.setdefault(ns, {"name": ns, "artifacts": 0, "size": 0})
        row["artifacts"] += 1  # type: ignore[operator]
        row["size"] += size  # type: ignore[operator]
    return [out[k] for k in sorted(out)]


def validate_prefix(prefix: str, max_depth: int = DEFAULT_MAX_NAME_DEPTH) -> str:
    """A listing prefix: '' (everything) or a namespace, with or without its trailing '/'.

    Returned without the trailing '/'; matched at segment boundaries (``team-a`` lists
    ``team-a/...`` and the artifact ``team-a`` itself, never ``team-ab``).
    """
    if prefix in ("", "/"):
        return ""
    return validate_artifact_name(prefix[:-1] if prefix.endswith("/") else prefix, max_depth)


def validate_symlink_target(target: str, where: str) -> str:
    """A symlink target the catalog's TEXT column and the client can hold."""
    if not isinstance(target, str) or not target or "\0" in target:
        raise InvalidPath(f"invalid symlink target for {where!r}")
    try:
        encoded = target.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPath(f"invalid symlink target for {where!r}: not valid UTF-8") from None
    if len(encoded) > SYMLINK_MAX_BYTES:
        raise InvalidPath(f"invalid symlink target for {where!r}: longer than "
                          f"{SYMLINK_MAX_BYTES} bytes")
    return target


def validate_mtime(mtime: int, where: str) -> int:
    """An mtime as a signed 64-bit integer (a float from a PAX header is truncated)."""
    try:
        value = int(mtime)
    except (TypeError, ValueError, OverflowError):
        raise InvalidPath(f"invalid mtime for {where!r}") from None
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidPath(f"invalid mtime for {where!r}: outside the signed 64-bit range")
    return value


def permissions(mode: int) -> int:
    """The permission bits kept from ``mode`` (setuid, setgid and sticky stripped)."""
    return int(mode) & PERMISSION_BITS


def validate_size(size: int, where: str) -> int:
    if not 0 <= size <= INT64_MAX:
        raise InvalidPath(f"invalid size for {where!r}")
    return size


class ValidPath(tuple):
    """Path components that passed :func:`split_path`.

    The staging methods of :class:`Transaction` take a path either as a string (validated
    there) or as a ``ValidPath`` (taken as it is), so that an archive of 10,000 members in a few
    directories validates each directory once rather than once per member. Make one only with
    :func:`split_path` or :meth:`child`, which validate every component they add.
    """

    __slots__ = ()

    def child(self, name: str) -> "ValidPath":
        """This path plus one validated component."""
        return ValidPath((*self, validate_name(name, what="path component")))


def split_path(path: str) -> ValidPath:
    """A repository-relative path as validated components; refuses escapes and absolute paths."""
    if not isinstance(path, str) or path == "":
        raise InvalidPath("empty path")
    if path.startswith("/"):
        raise InvalidPath(f"invalid path {path!r}: absolute paths are not allowed")
    parts = [p for p in path.split("/") if p != ""]
    if not parts:
        raise InvalidPath(f"invalid path {path!r}")
    for i, part in enumerate(parts):
        validate_name(part, what="artifact name" if i == 0 else "path component")
    return ValidPath(parts)


def as_parts(path: "str | ValidPath") -> ValidPath:
    return path if isinstance(path, ValidPath) else split_path(path)


def catalog_path(parts: Sequence[str]) -> str:
    return "/" + "/".join(parts)
