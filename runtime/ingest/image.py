"""Container images (``docker save`` and OCI image layout archives) flattened into one tree.

An image archive is recognised by its layout (``manifest.json``/``index.json``/``oci-layout``,
``blobs/sha256/…``, ``<id>/layer.tar``). Its layers are read as they stream past (objects are
stored at once) and kept as compact records; once the manifest has said in which order they
apply, they are flattened into one root filesystem the way Docker applies layers
(moby ``pkg/archive`` ``UnpackLayer``, which joins each member name to the root and lets the
kernel resolve it, chrooted):

- ``.wh.<name>`` removes ``<name>`` from the layers below; ``.wh..wh..opq`` empties its
  directory of what the layers below put there;
- a member below a directory that a lower layer made a *symbolic link* is written through
  the link (``a -> b`` below, ``a/x`` above: the file lands in ``b/x`` and ``a`` stays a
  link), resolved inside the image root like the chrooted kernel does; a link that leads
  nowhere or to a non-directory refuses the upload (400), as applying the layer fails in
  Docker. An explicit directory entry ``a/`` over the link replaces it (Docker removes a
  non-directory before creating a directory);
- a member below a regular file refuses the upload (400; Docker fails with ENOTDIR).

The tree is bounded by the entry limit (every layer's members count). An archive holding
several images yields the first one of its manifest. Metadata members (JSON) are read into
memory, bounded per member and in total (``max_image_metadata_bytes``); JSON of a wrong
shape, or nested too deeply, is refused with 400.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import dataclass, field

from ..cvmfs.chunking import FileContent
from ..repository import Transaction
from .content import ContentStore, Stored, UnpackStats, resolve
from .errors import ArchiveError, ArtifactTooLarge, one_line
from .limits import EntryBudget, IngestLimits, check_link_target, check_mtime, check_path
from .streams import BZIP2_MAGIC, GZIP_MAGIC, XZ_MAGIC, ZSTD_MAGIC, PeekReader
from .tar import drain, iter_members, member_parts, open_tar, read_blob

#: One metadata member (manifest, config, index) is read into memory up to this size.
MAX_METADATA_MEMBER = 16 * 1024 * 1024
#: Symbolic links followed while resolving one path (Linux's own limit, ELOOP).
MAX_SYMLINK_HOPS = 40
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

_HEX64 = r"[0-9a-f]{64}"
IMAGE_MEMBER_RE = re.compile(
    rf"^(oci-layout|index\.json|manifest\.json|repositories|blobs/sha\d+/[0-9a-f]+"
    rf"|{_HEX64}(/(VERSION|json|layer\.tar))?|{_HEX64}\.(tar|json))$")


def looks_like_tar(head: bytes) -> bool:
    """A tar header (ustar magic), or a compressed stream that may hold one."""
    return (head[257:262] == b"ustar" or head.startswith((GZIP_MAGIC, ZSTD_MAGIC, BZIP2_MAGIC,
                                                          XZ_MAGIC)))


def is_image_member(name: str) -> bool:
    return IMAGE_MEMBER_RE.match(name) is not None


@dataclass(slots=True)
class _Record:
    kind: str  # file | dir | symlink | hardlink | whiteout | opaque
    parts: tuple[str, ...]
    mode: int = 0o755
    mtime: int = 0
    content: Stored | FileContent | None = None
    target: str = ""  # symlink target, or hardlink target path


@dataclass(slots=True)
class _Node:
    record: _Record | None = None  # None: a directory only implied by its children
    children: dict[str, "_Node"] = field(default_factory=dict)

    def is_dir(self) -> bool:
        return self.record is None or self.record.kind == "dir"


def _read_layer(tar: tarfile.TarFile, store: ContentStore, limits: IngestLimits,
                budget: EntryBudget) -> list[_Record]:
    records = []
    for info in iter_members(tar):
        budget.take()
        parts = tuple(member_parts(info.name))
        if not parts:
            continue
        check_path(info.name, list(parts), limits)
        base = parts[-1]
        mode, mtime = info.mode & 0o7777, check_mtime(info.name, info.mtime)
        if base == OPAQUE:
            records.append(_Record("opaque", parts[:-1]))
        elif base.startswith(WHITEOUT):
            records.append(_Record("whiteout", parts[:-1] + (base[len(WHITEOUT):],)))
        elif info.isdir():
            records.append(_Record("dir", parts, mode, mtime))
        elif info.isreg():
            records.append(_Record("file", parts, mode, mtime, store.store_member(tar, info)))
        elif info.issym():
            target = check_link_target(info.name, info.linkname, limits)
            records.append(_Record("symlink", parts, 0o777, mtime, target=target))
        elif info.islnk():
            records.append(_Record("hardlink", parts, mode, mtime,
                                   target="/".join(member_parts(info.linkname))))
        else:
            store.stats.skipped += 1
    return records


def _loads(name: str, data: bytes | bytearray) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ArchiveError(f"image archive: {name} is not JSON: {one_line(exc)}") from None


class ImageReader:
    """Collects the members of an image archive: layers parsed, metadata kept in memory."""

    def __init__(self, store: ContentStore, limits: IngestLimits, budget: EntryBudget):
        self.store, self.limits, self.budget = store, limits, budget
        self.layers: dict[str, list[_Record]] = {}
        self.blobs: dict[str, bytearray] = {}
        self.metadata_bytes = 0

    def add(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        self.budget.take()
        name = "/".join(member_parts(info.name))
        if info.isdir():
            return
        if not is_image_member(name) or not info.isreg():
            raise ArchiveError(f"unexpected member {info.name[:200]!r} in an image archive")
        src = tar.extractfile(info)
        assert src is not None
        reader = PeekReader(src)
        if looks_like_tar(reader.peek(512)):
            self.layers[name] = _read_layer(open_tar(reader, self.limits), self.store,
                                            self.limits, self.budget)
            drain(reader)
            return
        if info.size > MAX_METADATA_MEMBER:
            raise ArchiveError(f"image member {info.name!r} is neither a layer nor metadata")
        self.metadata_bytes += info.size
        if self.metadata_bytes > self.limits.max_image_metadata_bytes:
            raise ArtifactTooLarge("image metadata (manifests, configs, index) exceeds the "
                                   f"limit of {self.limits.max_image_metadata_bytes} bytes")
        self.blobs[name] = read_blob(reader, info.size, info.name)

    def _json(self, name: str) -> object:
        if name not in self.blobs:
            raise ArchiveError(f"image archive lacks {name!r}")
        return _loads(name, self.blobs[name])

    @staticmethod
    def _blob(desc: object, what: str) -> str:
        digest = desc.get("digest") if isinstance(desc, dict) else None
        if not isinstance(digest, str) or not re.fullmatch(r"sha\d+:[0-9a-f]+", digest):
            raise ArchiveError(f"image archive: {what} has no valid digest")
        algo, _, hexd = digest.partition(":")
        return f"blobs/{algo}/{hexd}"

    def layer_order(self) -> list[str]:
        """Layer member names, bottom first, from ``manifest.json`` (docker) or ``index.json``."""
        if "manifest.json" in self.blobs:
            manifest = self._json("manifest.json")
            first = manifest[0] if isinstance(manifest, list) and manifest else None
            layers = first.get("Layers") if isinstance(first, dict) else None
            if not isinstance(layers, list) or not all(isinstance(p, str) for p in layers):
                raise ArchiveError("image archive: manifest.json has no list of Layers")
            return ["/".join(member_parts(p)) for p in layers]
        if "index.json" in self.blobs:
            doc = self._json("index.json")
            for _depth in range(4):
                if not isinstance(doc, dict):
                    raise ArchiveError("image archive: an index or manifest is not an object")
                if "layers" in doc:
                    layers = doc["layers"]
                    if not isinstance(layers, list):
                        raise ArchiveError("image archive: a manifest's layers is not a list")
                    return [self._blob(layer, "a layer") for layer in layers]
                manifests = doc.get("manifests")
                if not isinstance(manifests, list) or not manifests:
                    raise ArchiveError("image archive: index.json names no manifest")
                doc = self._json(self._blob(manifests[0], "a manifest"))
            raise ArchiveError("image archive: index nesting too deep")
        raise ArchiveError("image archive without manifest.json or index.json")

    def layer(self, name: str) -> list[_Record]:
        if name in self.layers:
            return self.layers[name]
        if name in self.blobs:  # a tiny layer that did not look like a tar (e.g. all zeros)
            return _read_layer(open_tar(io.BytesIO(self.blobs[name]), self.limits), self.store,
                               self.limits, self.budget)
        raise ArchiveError(f"image archive: layer {name!r} not found")


# --------------------------------------------------------------------------------------------
# flattening


class _Resolver:
    """Path lookups in the tree being built, symbolic links followed inside the image root
    (``..`` at the root stays at the root, an absolute target starts from the root)."""

    def __init__(self, root: _Node):
        self.root = root

    def directory(self, parts: tuple[str, ...] | list[str], *, create: bool, what: str,
                  hops: int = 0) -> _Node | None:
        """The directory node at ``parts`` (every component followed); with ``create``,
        missing directories are implied (Docker's ``MkdirAll``); None if missing otherwise."""
        node, path = self.root, []  # type: ignore[var-annotated]
        # (component, named by a symlink target): what a link names must exist (the kernel
        # does not create it); what the member names below it is created like MkdirAll does
        stack = [(p, False) for p in reversed(parts)]
        while stack:
            p, linked = stack.pop()
            if p in ("", "."):
                continue
            if p == "..":
                path = path[:-1]
                node = self._at(path)
                continue
            child = node.children.get(p)
            if child is not None and child.record is not None and child.record.kind == "symlink":
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise ArchiveError(f"image layer member {what!r}: too many symbolic links")
                target = child.record.target
                if target.startswith("/"):
                    node, path = self.root, []
                stack.extend((c, True) for c in reversed(target.split("/")))
                continue
            if child is None:
                if not create or linked:
                    return None
                child = node.children[p] = _Node()
            elif not child.is_dir():
                if not create:
                    return None
                raise ArchiveError(f"image layer member {what!r} lies below a non-directory "
                                   f"({'/'.join(path + [p])!r})")
            node, path = child, path + [p]
        return node

    def _at(self, path: list[str]) -> _Node:
        node = self.root
        for p in path:
            node = node.children[p]
        return node


def _flatten(layers: list[list[_Record]]) -> _Node:
    """Apply layers bottom-up: whiteouts and opaque markers first (they hide lower layers)."""
    root = _Node(_Record("dir", (), 0o755, 0))
    look = _Resolver(root)
    for records in layers:
        for rec in records:
            if rec.kind == "whiteout":
                parent = look.directory(rec.parts[:-1], create=False, what="/".join(rec.parts))
                if parent is not None:
                    parent.children.pop(rec.parts[-1], None)
            elif rec.kind == "opaque":
                node = look.directory(rec.parts, create=False, what="/".join(rec.parts))
                if node is not None:
                    node.children.clear()
        for rec in records:
            if rec.kind in ("whiteout", "opaque"):
                continue
            what = "/".join(rec.parts)
            if rec.kind == "hardlink":
                tparts = tuple(rec.target.split("/")) if rec.target else ()
                holder = look.directory(tparts[:-1], create=False, what=what) if tparts else None
                target = holder.children.get(tparts[-1]) if holder is not None else None
                if target is None or target.record is None or target.record.kind != "file":
                    raise ArchiveError(f"hard link {what!r} -> {rec.target!r}: "
                                       "target is not a regular file")
                rec = _Record("file", rec.parts, target.record.mode, target.record.mtime,
                              target.record.content)
            parent = look.directory(rec.parts[:-1], create=True, what=what)
            if parent is None:
                raise ArchiveError(f"image layer member {what!r} is written through a "
                                   "symbolic link that leads nowhere")
            existing = parent.children.get(rec.parts[-1])
            if rec.kind == "dir" and existing is not None and existing.is_dir():
                existing.record = rec
            else:
                parent.children[rec.parts[-1]] = _Node(rec)
    return root


def stage_tree(tx: Transaction, name: str, root: _Node, stats: UnpackStats) -> None:
    """Stage the flattened tree below the artifact ``name`` (parents before children)."""
    stack: list[tuple[tuple[str, ...], _Node]] = [((), root)]
    while stack:
        parts, node = stack.pop()
        path = "/".join((name,) + parts)
        rec = node.record
        if rec is None or rec.kind == "dir":
            if parts:
                tx.add_directory(path, mode=rec.mode if rec else 0o755,
                                 mtime=rec.mtime if rec else None)
                stats.directories += 1
            for child_name, child in sorted(node.children.items(), reverse=True):
                stack.append((parts + (child_name,), child))
            node.children = {}
        elif rec.kind == "file":
            assert rec.content is not None
            tx.add_content(path, resolve(rec.content), mode=rec.mode, mtime=rec.mtime)
            stats.files += 1
        elif rec.kind == "symlink":
            tx.add_symlink(path, rec.target, mtime=rec.mtime)
            stats.symlinks += 1


def stage_image(tx: Transaction, name: str, reader: ImageReader, stats: UnpackStats) -> None:
    order = reader.layer_order()
    stats.image, stats.layers = True, len(order)
    root = _flatten([reader.layer(layer) for layer in order])
    reader.layers.clear()
    reader.store.drain()
    stage_tree(tx, name, root, stats)
