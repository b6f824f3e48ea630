"""Archive ingestion: uploaded tar archives and container images staged into a transaction.

Archives are read as a stream, never spooled: file content goes straight into the object
store as it is read, so memory stays bounded whatever the archive size. The modules:

- :mod:`.streams`: compression detected from the first bytes (gzip, bzip2, xz, zstd),
  decompressed with bounded output, read to the end with checksums and trailers verified;
- :mod:`.tar`: tar members one at a time, headers bounded, a proper end required;
- :mod:`.limits`: the per-upload bounds (header size, entries, path depth/length, metadata);
- :mod:`.content`: member content stored while reading (batches of small files);
- :mod:`.plain` and :mod:`.image`: a plain tar, or an image flattened from its layers;
- :mod:`.stage`: the synchronous entry point; :mod:`.bridge`: the async one, fed by an
  upload's body; :mod:`.pool`: the parser threads, shared fairly between tenants.

What becomes of each member (the tree is always confined to the artifact):

- regular files, directories and symbolic links are kept (modes and mtimes too; owners are
  not: every entry belongs to uid 0/gid 0 as on any cvmfs stratum 0). Symlink *targets* are
  kept verbatim, like cvmfs does: they are resolved on the client, inside the mount; a target
  that is not UTF-8 refuses the upload;
- hard links become independent regular files with the same content (the content is stored
  once anyway);
- character/block devices and FIFOs are skipped (counted in ``UnpackStats.skipped``);
- a member with an absolute name or a ``..`` component is refused (:class:`ArchiveError`), and
  so is the whole upload: nothing is published.

A process dying in the middle leaves stored-but-unreferenced objects (gc removes them) and
nothing published: the staged tree only reaches a catalog when the transaction is committed.
"""

from .bridge import BodyPipe, ClientGone, stage_archive_async
from .content import UnpackStats
from .errors import ArchiveError, ArtifactTooLarge
from .limits import IngestLimits
from .pool import UnpackPool
from .stage import stage_archive

__all__ = ["ArchiveError", "ArtifactTooLarge", "BodyPipe", "ClientGone", "IngestLimits",
           "UnpackPool", "UnpackStats", "stage_archive", "stage_archive_async"]
