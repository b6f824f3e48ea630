"""DataStoreGuard: stop ``pulumi preview`` with a clear message before a change replaces the data.

Why: the repository data lives in one Docker volume or PersistentVolumeClaim, and some inputs of
those force a replace (a volume's name or driver options, a claim's namespace, name, storage
class or access mode). A replace deletes every published artifact. The store is also
``protect``ed, but the engine's refusal names a resource URN and advises removing ``protect``
from the program; this guard names the configuration keys that changed and the one switch that
allows the loss (``storage.allowReplace``).

How: a tiny dynamic resource whose inputs are the store's identity. Its provider's ``diff`` runs
during ``pulumi preview``, before the store's own step (the store depends on the guard), and
refuses a changed identity of a persistent store unless ``allowReplace`` is set. It holds no
cloud object: creating, replacing or deleting it touches nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import pulumi
import pulumi.dynamic as dynamic


class DataStoreReplaceRefused(Exception):
    """A configuration change would replace the persistent data store."""


def refusal(store: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> Optional[str]:
    """The message refusing ``old`` → ``new``, or None when the change loses no data."""
    keys = sorted(set(old) | set(new))
    changed = [k for k in keys if old.get(k) != new.get(k)]
    if not changed or old.get("kind") != "persistent":
        return None
    details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
    return (
        f"cvmfs-ephemeral:storage: this change would replace the data store {store} and delete "
        f"every published artifact ({details}). Revert it, or set "
        "cvmfs-ephemeral:storage.allowReplace to true for one `pulumi up` to start from an "
        "empty store (and remove the store's protection: pulumi state unprotect)."
    )


class _GuardProvider(dynamic.ResourceProvider):
    """Diff-only provider: nothing outside the state is created, read or deleted."""

    def create(self, props: dict) -> dynamic.CreateResult:
        return dynamic.CreateResult(id_=props["store"], outs=props)

    def diff(self, _id: str, olds: dict, news: dict) -> dynamic.DiffResult:
        old, new = olds.get("identity") or {}, news.get("identity") or {}
        if old == new:
            return dynamic.DiffResult(changes=olds.get("allowReplace") != news.get("allowReplace"))
        # Named as it is now: the store that would be lost.
        message = refusal(olds.get("store") or news["store"], old, new)
        if message is not None and not news.get("allowReplace"):
            raise DataStoreReplaceRefused(message)
        return dynamic.DiffResult(changes=True, replaces=["identity"], delete_before_replace=True)

    def update(self, _id: str, _olds: dict, news: dict) -> dynamic.UpdateResult:
        return dynamic.UpdateResult(outs=news)


@dataclass(frozen=True)
class DataStoreGuardArgs:
    """Inputs of DataStoreGuard."""

    #: The store's name (volume or claim), for the message.
    store: str
    #: Every input whose change replaces the store, plus ``kind``; plain values only.
    identity: Mapping[str, Any]
    allow_replace: bool


class DataStoreGuard(dynamic.Resource):
    """Refuses, at preview, a change of the data store's identity (see the module docstring)."""

    def __init__(
        self, name: str, args: DataStoreGuardArgs, opts: Optional[pulumi.ResourceOptions] = None
    ) -> None:
        super().__init__(
            _GuardProvider(),
            name,
            {
                "store": args.store,
                "identity": dict(args.identity),
                "allowReplace": args.allow_replace,
            },
            opts,
        )
