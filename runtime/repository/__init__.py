"""One CVMFS repository on disk, one concept per module:

- ``names``: what a name, path, symlink target, mode or mtime may be (checked when staged);
- ``errors``: the one-line errors callers show (each maps to an HTTP status);
- ``transaction``: staging changes and their content;
- ``markers``: staging markers and gc's cut-off;
- ``space``: the free-space reserve;
- ``state``: artifact rows and revisions in ``state.db``;
- ``commit``: the group commit, step by step, and what a crash at each step leaves;
- ``repository``: the :class:`Repository` tying them together.

Every name other modules import from ``runtime.repository`` is re-exported here.
"""

from .commit import Commit, PublishResult
from .errors import (ArtifactExists, ArtifactNotFound, InvalidPath, NotInitialized,
                     QuotaExceeded, RepositoryError, RepositoryLocked, StorageFull)
from .files import atomic_write, fsync_dir, utcnow
from .markers import TransactionAbandoned
from .names import (MARKER_NAME, NAME_MAX_BYTES, RESERVED_PREFIX, ValidPath, catalog_path,
                    parent_namespace, split_path, top_namespace, validate_artifact_name,
                    validate_name)
from .repository import DEFAULT_BODY_IDLE_TIMEOUT_S, REPLICA_MARKER, Repository
from .space import DEFAULT_MIN_FREE_BYTES
from .state import ArtifactInfo
from .transaction import StagedFile, Transaction

__all__ = [
    "ArtifactExists", "ArtifactInfo", "ArtifactNotFound", "Commit", "DEFAULT_BODY_IDLE_TIMEOUT_S",
    "DEFAULT_MIN_FREE_BYTES", "InvalidPath", "MARKER_NAME", "NAME_MAX_BYTES", "NotInitialized",
    "PublishResult", "QuotaExceeded", "REPLICA_MARKER", "RESERVED_PREFIX", "Repository",
    "RepositoryError", "RepositoryLocked", "StagedFile", "StorageFull", "Transaction", "TransactionAbandoned",
    "ValidPath", "atomic_write", "catalog_path", "fsync_dir", "parent_namespace",
    "split_path", "top_namespace", "utcnow", "validate_artifact_name", "validate_name",
]
