"""GC racing concurrent uploads loses nothing.

Eight threads stage and publish through the Repository API while gc runs back to back with no
grace period and no clock slack, the harshest settings: every object not referenced by the
current revision and written before a run started is fair game. Uploads draw their files from
a small shared pool of contents that other uploads keep publishing and removing, so they
constantly re-use objects that have just become garbage (the check-then-delete race gc must
win without a lock). Afterwards every artifact that was published and not removed must read
back byte for byte through the independent reader.
"""

from __future__ import annotations

import os
import random
import threading
import time

from runtime.maintenance.gc import collect
from tests.served import object_files, served_repository
from tests.test_maintenance_clean_gc import read_everything

THREADS = 8
UPLOADS_PER_THREAD = 14
POOL = [os.urandom(random.Random(i).randint(1, 3000)) for i in range(24)]


def test_gc_racing_eight_concurrent_uploads_loses_nothing(tmp_path):
    with served_repository(tmp_path) as s:
        repo = s.repo
        expected: dict[str, dict[str, bytes]] = {}
        lock = threading.Lock()
        uploads_done = threading.Event()
        errors: list[BaseException] = []

        def uploader(worker: int) -> None:
            rnd = random.Random(worker)
            mine: list[str] = []
            try:
                for i in range(UPLOADS_PER_THREAD):
                    name = f"w{worker}-{i}"
                    files = {f"pool{k}": POOL[rnd.randrange(len(POOL))] for k in range(4)}
                    files["own"] = f"{name} {rnd.random()}".encode()
                    tx = repo.begin()
                    for rel, data in files.items():
                        tx.add_file(f"{name}/{rel}", data)
                        time.sleep(rnd.random() * 0.002)  # uploads take time
                    tx.publish()
                    with lock:
                        expected[name] = files
                    mine.append(name)
                    if i % 2 and len(mine) > 1:  # remove an older one: its objects go stale
                        victim = mine.pop(rnd.randrange(len(mine) - 1))
                        tx = repo.begin()
                        tx.remove(victim)
                        tx.publish()
                        with lock:
                            del expected[victim]
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        runs = []

        def collector() -> None:
            try:
                while not uploads_done.is_set():
                    runs.append(collect(repo, grace_s=0, slack_s=0))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        gc_thread = threading.Thread(target=collector)
        workers = [threading.Thread(target=uploader, args=(w,)) for w in range(THREADS)]
        gc_thread.start()
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        uploads_done.set()
        gc_thread.join()

        assert not errors, errors
        assert len(runs) >= 5, "gc should have run many times during the uploads"
        assert sum(r.objects_deleted for r in runs) > 0, "gc should have collected garbage"

        reader = s.reader()
        want = {f"/{name}/{rel}": data for name, files in expected.items()
                for rel, data in files.items()}
        assert read_everything(reader) == want
        reader.check()

        final = collect(repo, grace_s=0, slack_s=0)
        reader = s.reader()
        assert read_everything(reader) == want
        assert object_files(repo) == reader.referenced_objects()
        assert final.retained_revisions == 1
