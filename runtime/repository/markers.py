"""Staging markers: one file per transaction in flight, read by gc to choose its cut-off.

``private/<fqrn>/staging/<id>`` holds ``<pid> <process start> <transaction start>``. gc never
deletes an object younger than the oldest *live* marker's transaction start (objects a
transaction staged are unreferenced until it commits). A marker stops counting, and gc removes
it, when

- its process is dead (pid gone, or reused by a process started at another time), or
- it is *idle*: not touched for longer than the body idle timeout
  (``CVMFS_EPHEMERAL_BODY_IDLE_TIMEOUT_S``). The markers of a process's open transactions are
  touched by a heartbeat (:class:`Heartbeat`); a stalled upload (a half-sent body) is aborted
  by the upload API after that same timeout, which removes its marker, and a transaction
  leaked without being aborted, or one of a frozen process, is no longer touched. One
  half-sent PUT can no longer hold back gc for as long as its connection stays open.

A transaction whose marker went idle or was removed can never publish: a marker older than half
the idle timeout is never touched again, a commit must find its marker present and younger than
half the timeout right before its commit point (:meth:`Marker.check_alive`), and gc removes a
marker only once it is idle for the full timeout, so a commit that passed the check is recorded
long before any gc could give up on its objects. Its upload fails (nothing
published), and the objects it wrote are reclaimed by a later gc.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from pathlib import Path

from .errors import RepositoryError


class TransactionAbandoned(RepositoryError):
    """The transaction made no progress for longer than the idle timeout; nothing published."""


def _process_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (field 22 of /proc/<pid>/stat), '' if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return ""
    fields = data[data.rfind(b")") + 2:].split()
    return fields[19].decode() if len(fields) > 19 else ""


_SELF_START = _process_start(os.getpid())


def process_alive(pid: int, start: str = "") -> bool:
    """``pid`` runs, and (when ``start`` is known) is the process that wrote the marker."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if start:
        current = _process_start(pid)
        if current and current != start:
            return False
    return True


class Marker:
    """The marker of one transaction (created by :meth:`create`, touched, then released)."""

    def __init__(self, path: Path, started_at: float):
        self.path = path
        self.started_at = started_at

    @classmethod
    def create(cls, directory: Path, tx_id: str) -> "Marker":
        """Write the marker whole or not at all (a full disk leaves no empty marker).

        The start recorded is the new file's mtime: the filesystem's (coarse) clock, the one
        that stamps the objects gc compares with it.
        """
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / tx_id
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                started_at = os.fstat(fd).st_mtime
                data = f"{os.getpid()} {_SELF_START or '-'} {started_at!r}\n".encode()
                if os.write(fd, data) != len(data):
                    raise OSError("short write of staging marker")
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return cls(path, started_at)

    def touch(self, idle_timeout_s: float) -> bool:
        """Record progress, unless the marker is already past half the idle timeout.

        A marker past half the timeout is never touched again: it may be on its way out (gc
        removes it at the full timeout), and reviving it could let a transaction commit objects
        gc has started to delete. False: the transaction can no longer publish.
        """
        try:
            if time.time() - self.path.stat().st_mtime > idle_timeout_s / 2:
                return False
            os.utime(self.path)
        except FileNotFoundError:
            return False
        except OSError:
            return True  # e.g. a read-only remount: the marker still counts as it is
        return True

    def check_alive(self, idle_timeout_s: float, what: str) -> None:
        """Refuse to commit a transaction gc may have given up on (module docstring)."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            raise TransactionAbandoned(
                f"{what}: abandoned after more than {idle_timeout_s:g} s without progress;"
                " nothing was published") from None
        if age > idle_timeout_s / 2:
            raise TransactionAbandoned(
                f"{what}: no progress for {age:.0f} s (idle timeout {idle_timeout_s:g} s);"
                " nothing was published")

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _read(path: Path) -> tuple[int, str, float | None]:
    fields = path.read_text().split()
    pid = int(fields[0])
    start = fields[1] if len(fields) > 1 and fields[1] != "-" else ""
    started = float(fields[2]) if len(fields) > 2 else None
    return pid, start, started


def oldest_live_start(directory: Path, idle_timeout_s: float,
                      now: float | None = None) -> float | None:
    """Start of the oldest transaction that still counts; removes markers that do not."""
    if not directory.is_dir():
        return None
    now = time.time() if now is None else now
    oldest = None
    for path in directory.iterdir():
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        try:
            pid, start, started = _read(path)
        except (OSError, ValueError, IndexError):
            if now - mtime > idle_timeout_s:  # empty or torn marker of a dead writer
                with contextlib.suppress(OSError):
                    path.unlink()
            continue
        if not process_alive(pid, start) or now - mtime > idle_timeout_s:
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        began = mtime if started is None else min(started, mtime)
        oldest = began if oldest is None else min(oldest, began)
    return oldest


class Heartbeat:
    """Touches the markers of a repository's open transactions, every ``idle timeout / 8``.

    One daemon thread per repository, running while it has open transactions. It holds them
    weakly: a transaction dropped without ``abort``/``publish`` (a leaked, abandoned one) stops
    being touched, goes idle and stops counting for gc. A transaction streaming a file
    (``open_file``, the raw upload body) is not touched once no byte arrived for half the idle
    timeout: a half-sent body stops holding gc back, and fails when (if ever) it resumes. An
    archive being unpacked is touched while open (its stall is the upload API's body idle
    timeout to catch, same setting, which aborts it and so releases the marker). A frozen or
    killed process stops touching, and its markers stop counting after the idle timeout (or at
    once, when the process is gone).
    """

    def __init__(self, idle_timeout_s: float):
        self.idle_timeout_s = float(idle_timeout_s)
        self._txs: "weakref.WeakValueDictionary[str, object]" = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def period_s(self) -> float:
        return max(0.05, min(5.0, self.idle_timeout_s / 8))

    def add(self, tx) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self._txs[tx.id] = tx
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="staging-heartbeat",
                                                daemon=True)
                self._thread.start()

    def discard(self, tx) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self._txs.pop(tx.id, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.period_s)
            with self._lock:
                txs = list(self._txs.values())
                if not txs:
                    self._thread = None
                    return
            now = time.monotonic()
            for tx in txs:
                if tx.closed or tx.marker is None:  # type: ignore[attr-defined]
                    continue
                if tx.open_files and now - tx.last_activity > self.idle_timeout_s / 2:  # type: ignore[attr-defined]
                    continue  # a body that stopped sending: let the marker go idle
                tx.marker.touch(self.idle_timeout_s)  # type: ignore[attr-defined]
            del txs
