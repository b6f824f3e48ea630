"""Deflate for file content: zlib-ng's zlib-compatible API, stock zlib where it is missing.

A CVMFS client inflates objects with its own zlib (cvmfs/compression/compression.cc,
``DecompressZlib2Sink`` and friends), which accepts any valid RFC 1950 stream whichever library
made it. So file content may be compressed by a faster deflate than the one ``cvmfs_server``
links, as long as the stream is standard; the tests read every object back with Python's stock
zlib to prove it.

Why zlib-ng at level 4 (bench/publish.py ``--only deflate`` measures the candidates on this
machine, 8 MiB chunks of a source tree and of shared libraries, against stock zlib level 6,
the level cvmfs_server uses):

==========  ===============  ==========================
candidate   speed vs zlib-6  size vs zlib-6
==========  ===============  ==========================
zlib-ng 3   3.6-4.2x         +4.0 to +7.6 %
zlib-ng 4   2.8-3.6x         +2.9 to +4.0 %  (default)
zlib-ng 6   1.9-2.9x         +0.7 to +1.8 %
ISA-L 3     7.6-11.7x        +7.7 to +13.4 % (over the 10 % size bound on source trees)
ISA-L 1/2   12-17x           +9.5 to +20.6 %
==========  ===============  ==========================

Catalogs, histories and the certificate go through the same backend at level 4
(:func:`runtime.cvmfs.objects.compress`). Object names depend on the compressor's output, so
the library is pinned; a different version or level only changes the names of newly written
objects, never what a client reads.
"""

from __future__ import annotations

import zlib
from types import ModuleType

try:  # the fast path: pinned in runtime/requirements.txt
    from zlib_ng import zlib_ng as _backend
    BACKEND = "zlib-ng"
except ImportError:  # pragma: no cover - exercised only where the wheel is unavailable
    _backend = zlib
    BACKEND = "zlib"

#: Default level for file content (see the table above); per repository ``compression_level``.
DEFAULT_LEVEL = 4
MIN_LEVEL, MAX_LEVEL = 1, 9


def compress(data: bytes, level: int = DEFAULT_LEVEL, backend: ModuleType | None = None) -> bytes:
    """A standard zlib stream of ``data`` (what clients inflate), from the fast backend."""
    return (backend or _backend).compress(data, level)


def compressobj(level: int = DEFAULT_LEVEL, backend: ModuleType | None = None) -> "zlib._Compress":
    """A streaming compressor of the fast backend (what :func:`compress` makes, fed in pieces)."""
    return (backend or _backend).compressobj(level)


def compress_pieces(pieces: "list[bytes] | tuple[bytes, ...]", level: int = DEFAULT_LEVEL,
                    backend: ModuleType | None = None) -> list[bytes]:
    """The stream :func:`compress` makes of the pieces joined, as pieces, without joining them.

    A chunk arrives as the pieces the network delivered; joining them first cost one more
    chunk-sized buffer per chunk being compressed (8 MiB each, four at a time on two cores).
    Deflate's output does not depend on how its input is split when it is fed without
    flushes (tests/test_deflate.py pins this for the backend in use), so the object's name is
    the same as if the chunk had been compressed whole.
    """
    compressor = (backend or _backend).compressobj(level)
    out = [compressor.compress(piece) for piece in pieces]
    out.append(compressor.flush())
    return [piece for piece in out if piece]
