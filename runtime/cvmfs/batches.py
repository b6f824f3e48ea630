"""Batches of small objects stored by a helper process, beside the process that reads them.

Unpacking a tarball of small files is two jobs of about equal cost: parsing the tar (Python,
holding the GIL) and creating one object file per member (three system calls each). On threads
of one process they barely overlap: a writer thread must take the GIL back after every system
call, and a parse loop that never blocks hands it over only every switch interval, so the
writes piled up until parsing ended. A helper process has its own GIL: with the writes there,
staging 10,000 small files took ~20% less time on 2 cores (bench/upload.py).

The helpers (one per two cores, at least two: :func:`default_processes`) are shared by every
repository of the process, started with the ``forkserver`` method (the server has threads, so
it must not ``fork`` itself) on the first batch or by :func:`start_helpers`, and receive each
batch's bytes over a pipe. They only hash and write; objects are named by content, so a helper
needs nothing but the store's directory. A local publish of a large tree (``add_tree``) hands
them batches of *paths* instead (:meth:`BatchWriter.submit_files`): a helper reads, hashes and
stores each file and returns its status, once :func:`start_helpers_in_background` has them up.

Failure handling: where a helper cannot be started (no ``/dev/shm``, no writable temp dir),
batches run on the caller's thread pool instead, with one warning. A helper that dies (killed,
out of memory) fails nothing: its batch is stored again on the thread pool (``put`` is
idempotent) and the next batch starts a new helper. What a killed helper leaves behind is what
any killed writer leaves (see :mod:`runtime.cvmfs.objects`).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import stat
import threading
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, TypeVar

from .deflate import DEFAULT_LEVEL
from .objects import FILE, ObjectStore

log = logging.getLogger(__name__)
T = TypeVar("T")

_stores: dict[str, ObjectStore] = {}


def store_blobs(store: ObjectStore, compressed: bool, blobs: list[bytes],
                level: int = DEFAULT_LEVEL) -> list[tuple[str, int]]:
    """Store each blob as a whole-file object; ``(hex, stored size)`` each, in order."""
    out = []
    for data in blobs:
        obj = store.put_content(data, FILE, compressed, level)
        out.append((obj.hex, obj.stored_size))
    return out


def read_small_file(path: str, limit: int) -> tuple[os.stat_result, bytes | None]:
    """The status and bytes of the local file ``path``; bytes None when it holds more than
    ``limit`` bytes or is not a regular file (the caller decides what that means).

    Four system calls (open, fstat, read, close) where ``lstat`` + ``open(path).read()`` made
    nine, and the status comes from the file actually read, so what the walk saw cannot
    differ from what is stored. ``O_NOFOLLOW``: a symlink put in place meanwhile is refused,
    not followed; ``O_NONBLOCK``: a FIFO put in place meanwhile does not hang the publish.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return st, None
        data = os.read(fd, st.st_size + 1)
        if len(data) > st.st_size:  # growing while read: read on up to the limit
            pieces = [data]
            total = len(data)
            while total <= limit:
                piece = os.read(fd, limit + 1 - total)
                if not piece:
                    break
                pieces.append(piece)
                total += len(piece)
            if total > limit:
                return st, None
            data = b"".join(pieces)
        return st, data
    finally:
        os.close(fd)


def store_files(store: ObjectStore, compressed: bool, paths: list[str], limit: int,
                level: int = DEFAULT_LEVEL) -> list[tuple[os.stat_result, str, int, int]]:
    """Read each local file of at most ``limit`` bytes and store it as a whole-file object:
    ``(status, hex, stored size, size)`` each, in order; hex ``""`` (nothing stored) for a
    file that is larger or not a regular file."""
    out = []
    for path in paths:
        st, data = read_small_file(path, limit)
        if data is None:
            out.append((st, "", 0, 0))
            continue
        obj = store.put_content(data, FILE, compressed, level)
        out.append((st, obj.hex, obj.stored_size, len(data)))
    return out


def _store_at(root: str) -> ObjectStore:
    store = _stores.get(root)
    if store is None:
        store = _stores[root] = ObjectStore(Path(root))
    return store


def store_batch(root: str, compressed: bool, blobs: list[bytes],
                level: int = DEFAULT_LEVEL) -> list[tuple[str, int]]:
    """In the helper: :func:`store_blobs` into the store at ``root`` (opened once)."""
    if not blobs:
        return []
    return store_blobs(_store_at(root), compressed, blobs, level)


def store_file_batch(root: str, compressed: bool, paths: list[str], limit: int,
                     level: int = DEFAULT_LEVEL) -> list[tuple[os.stat_result, str, int, int]]:
    """In the helper: :func:`store_files` into the store at ``root`` (opened once)."""
    return store_files(_store_at(root), compressed, paths, limit, level)


#: How often a helper checks that the server that started it is still alive.
WATCHDOG_INTERVAL_S = 0.5
_PR_SET_PDEATHSIG = 1


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (None: gone or a zombie), so that a pid reused by
    another process after the server died is not taken for the server."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()
    except OSError:
        return None
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


def die_with_server(server_pid: int) -> None:
    """In each helper, at start: exit when the server dies, however it dies (SIGKILL included).

    Two guards. The kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``) fires
    when the helper's parent exits; with ``forkserver`` that parent is the fork server, not
    the server. So a watchdog thread also polls the server's pid and exits the helper once the
    server is gone (or the parent changed); the fork server and the resource tracker then see
    their last client gone and exit too. Without this, every SIGKILL of the server left its
    helpers running forever.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watchdog alone
        pass
    parent = os.getppid()
    started = _start_time(server_pid)

    def watch() -> None:
        while True:
            if os.getppid() != parent or _start_time(server_pid) != started:
                os._exit(0)
            time.sleep(WATCHDOG_INTERVAL_S)

    if started is None:
        os._exit(0)
    threading.Thread(target=watch, name="server-watchdog", daemon=True).start()


class _Helpers:
    """The helper processes, shared by every repository of this process (created lazily)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool: ProcessPoolExecutor | None = None
        self.unavailable = False
        #: start_helpers() saw every helper answer (reset when the pool goes)
        self.ready = False

    def get(self) -> ProcessPoolExecutor | None:
        with self.lock:
            if self.pool is None and not self.unavailable:
                try:
                    ctx = multiprocessing.get_context("forkserver")
                    # The fork server imports this module once and every helper forks with it
                    # loaded; by default each helper imported it itself (~45 ms of CPU each,
                    # while the first large publish of a CLI call waited for them).
                    ctx.set_forkserver_preload(["__main__", __name__])
                    self.pool = ProcessPoolExecutor(default_processes(), mp_context=ctx,
                                                    initializer=die_with_server,
                                                    initargs=(os.getpid(),))
                except (OSError, ValueError, ImportError, NotImplementedError) as exc:
                    self._give_up_locked(exc)
            return self.pool

    def _give_up_locked(self, exc: BaseException) -> None:
        if not self.unavailable:
            text = str(exc).strip()
            log.warning("no helper process for object batches (%s); using threads",
                        text.splitlines()[0] if text else type(exc).__name__)
        self.unavailable = True

    def give_up(self, pool: ProcessPoolExecutor, exc: BaseException) -> None:
        """``pool`` refused a batch. If it is still the current pool, no helper can be started
        here: threads from now on, said once. If it was stopped meanwhile (a server shutting
        down), only this batch goes to threads."""
        with self.lock:
            if self.pool is pool:
                self._give_up_locked(exc)
                self.pool = None
                self.ready = False
        pool.shutdown(wait=False)

    def restart(self, broken: ProcessPoolExecutor) -> None:
        """A helper died: the next batch starts a new one."""
        with self.lock:
            if self.pool is broken:
                self.pool = None
                self.ready = False
        broken.shutdown(wait=False)

    def stop(self) -> None:
        with self.lock:
            pool, self.pool = self.pool, None
            self.ready = False
        if pool is not None:
            pool.shutdown(wait=True)


_helpers = _Helpers()


def start_helpers() -> list[int]:
    """Start the helper processes now rather than on the first archive (the server does, so
    that its first unpack does not pay for it); their process ids, [] when unavailable."""
    pool = _helpers.get()
    if pool is None:
        return []
    try:
        # one task per helper, submitted at once: the pool starts a process for each task
        # that finds no idle one, so every helper is up before the first archive arrives
        warmups = [pool.submit(store_batch, "", False, []) for _ in range(default_processes())]
        for warmup in warmups:
            warmup.result(timeout=60)
    except Exception as exc:  # noqa: BLE001 - any failure here means: use threads
        _helpers.give_up(pool, exc)
        return []
    _helpers.ready = True
    return helper_pids()


_warming = threading.Lock()


def start_helpers_in_background() -> None:
    """:func:`start_helpers` on a thread of its own, once: the caller goes on meanwhile
    (with threads, until :func:`helpers_ready`)."""
    if helpers_ready() or not _warming.acquire(blocking=False):
        return

    def run() -> None:
        try:
            start_helpers()
        finally:
            _warming.release()

    threading.Thread(target=run, name="helpers-start", daemon=True).start()


def helpers_ready() -> bool:
    """The helpers are running and have answered (:func:`start_helpers` finished)."""
    return _helpers.ready and _helpers.pool is not None


def helper_pids() -> list[int]:
    """Process ids of the running helpers (for tests and diagnostics)."""
    pool = _helpers.pool
    return sorted(pool._processes) if pool is not None and pool._processes else []  # noqa: SLF001


def stop_helpers() -> None:
    """Stop the helpers (after a background start has finished: it would start them anew)."""
    with _warming:
        _helpers.stop()


class BatchWriter:
    """Stores batches of small objects of one store in a helper process, or on ``threads``."""

    def __init__(self, store: ObjectStore, compressed: bool, threads: Executor,
                 use_helpers: bool = True, level: int = DEFAULT_LEVEL):
        self.store = store
        self.compressed = compressed
        self.level = level
        self.threads = threads
        self.use_helpers = use_helpers

    def submit(self, blobs: list[bytes],
               convert: Callable[[list[tuple[str, int]]], T]) -> "Future[T]":
        """Store ``blobs`` as whole-file objects; the future yields ``convert`` of their
        ``(hex, stored size)`` pairs, in order."""
        return self._dispatch(store_batch, store_blobs, blobs, (), convert)

    def submit_files(self, paths: list[str], limit: int,
                     convert: Callable[[list[tuple[os.stat_result, str, int, int]]], T]
                     ) -> "Future[T]":
        """Read and store local files (:func:`store_files`, at most ``limit`` bytes each);
        the future yields ``convert`` of their ``(status, hex, stored size, size)``.
        A batch stored again after its helper died reads its files again: harmless."""
        return self._dispatch(store_file_batch, store_files, paths, (limit,), convert)

    def _dispatch(self, in_helper: Callable, locally: Callable, items: list, extra: tuple,
                  convert: Callable[[list], T]) -> "Future[T]":
        """Run ``in_helper(root, compressed, items, *extra, level)`` in a helper process, or
        ``locally(store, compressed, items, *extra, level)`` on the threads where no helper
        can run or the helper died (see the module docstring)."""
        out: Future = Future()

        def run_locally() -> None:
            inner = self.threads.submit(locally, self.store, self.compressed, items, *extra,
                                        self.level)
            inner.add_done_callback(lambda f: _relay(f, out, convert))

        pool = _helpers.get() if self.use_helpers else None
        if pool is None:
            run_locally()
            return out
        try:
            inner = pool.submit(in_helper, str(self.store.root), self.compressed, items, *extra,
                                self.level)
        except BrokenProcessPool:  # a helper died since the last batch: start a new one later
            log.warning("object batch helper died; storing the batch on threads")
            _helpers.restart(pool)
            run_locally()
            return out
        except (RuntimeError, OSError) as exc:  # no process can be started here
            _helpers.give_up(pool, exc)
            run_locally()
            return out

        def done(f: Future) -> None:
            if isinstance(f.exception(), BrokenProcessPool):
                log.warning("object batch helper died; storing its batch again on threads")
                _helpers.restart(pool)
                run_locally()
            else:
                _relay(f, out, convert)

        inner.add_done_callback(done)
        return out


def _relay(inner: Future, out: Future, convert: Callable[[list[tuple[str, int]]], T]) -> None:
    exc = inner.exception()
    if exc is not None:
        out.set_exception(exc)
        return
    try:
        out.set_result(convert(inner.result()))
    except Exception as err:  # noqa: BLE001 - the waiter must hear of it
        out.set_exception(err)


def default_processes() -> int:
    """One helper per two cores, and at least two.

    Creating an object file is kernel time, mostly ext4 choosing its inode: each create scans
    the directory's block group from its first free inode and, on a filesystem without a
    journal, skips (one buffer-cache lookup each) every inode freed in the last 30-60 s, so
    right after a large deletion nearby (gc, a removed tree) one create cost ~400 us instead of
    ~40. With one helper on two cores that work had one core; with two, both cores share it
    while the parser waits for its batches: 10,000-file unpacks ~1.2x faster in steady state
    and ~1.7x faster right after such a deletion (bench/upload.py, A/B in the same run).
    """
    return max(2, (os.cpu_count() or 2) // 2)
