"""The start-up warning about ext4 without a journal (runtime/repository/filesystem.py).

Why it exists is measured in that module's docstring; the kernel behaviour is
``find_inode_bit`` in Linux ``fs/ext4/ialloc.c``, which checks ``recently_deleted`` only when
``EXT4_SB(sb)->s_journal == NULL``. Detection reads ``/proc/fs/ext4/<dev>`` and
``/proc/fs/jbd2/<dev>-<inode>``: the tests build those trees for the data directory's real
device, and check the real machine against ``/proc/self/mountinfo``, an independent source.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from runtime.repository.filesystem import ext4_of, object_store_warnings
from runtime.server.app import create_app
from runtime.settings import Settings


def kernel_trees(tmp_path: Path, data: Path, device: str, *, ext4: bool,
                 journals: list[str] | None) -> dict[str, Path]:
    """``/sys/dev/block``, ``/proc/fs/ext4`` and ``/proc/fs/jbd2`` as the kernel lays them out,
    for the real device of ``data`` (``journals`` None: jbd2 not loaded at all)."""
    st = os.stat(data)
    sys_block = tmp_path / "sys" / "dev" / "block"
    sys_block.mkdir(parents=True)
    (sys_block / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}").symlink_to(
        f"../../devices/pci0000:00/virtio1/block/{device}")
    proc_ext4 = tmp_path / "proc" / "fs" / "ext4"
    proc_ext4.mkdir(parents=True)
    (proc_ext4 / "other").mkdir()
    if ext4:
        (proc_ext4 / device).mkdir()
    proc_jbd2 = tmp_path / "proc" / "fs" / "jbd2"
    if journals is not None:
        proc_jbd2.mkdir()
        for name in journals:
            (proc_jbd2 / name).mkdir()
    return {"proc_ext4": proc_ext4, "proc_jbd2": proc_jbd2, "sys_dev_block": sys_block}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


def test_ext4_without_a_journal_is_warned_about(tmp_path: Path, data: Path) -> None:
    roots = kernel_trees(tmp_path, data, "vda", ext4=True, journals=["loop0-8"])
    assert ext4_of(data, **roots).journal is False
    [warning] = object_store_warnings(data, **roots)
    assert "ext4 without a journal (/dev/vda)" in warning and str(data) in warning


def test_no_jbd2_at_all_means_no_journal(tmp_path: Path, data: Path) -> None:
    roots = kernel_trees(tmp_path, data, "sdb1", ext4=True, journals=None)
    assert ext4_of(data, **roots).journal is False
    assert len(object_store_warnings(data, **roots)) == 1


def test_a_journaled_ext4_is_fine(tmp_path: Path, data: Path) -> None:
    # a journal is named after its device and inode: vda-8, never a prefix of another device
    roots = kernel_trees(tmp_path, data, "vda", ext4=True, journals=["vda-8", "vdb-8"])
    assert ext4_of(data, **roots).journal is True
    assert object_store_warnings(data, **roots) == []
    roots = kernel_trees(tmp_path / "b", data, "vd", ext4=True, journals=["vda-8"])
    assert ext4_of(data, **roots).journal is False  # vda-8 is not the journal of "vd"


def test_other_filesystems_and_hidden_proc_get_no_warning(tmp_path: Path, data: Path) -> None:
    roots = kernel_trees(tmp_path, data, "nvme0n1", ext4=False, journals=[])
    assert ext4_of(data, **roots) is None
    assert object_store_warnings(data, **roots) == []
    hidden = {**roots, "sys_dev_block": tmp_path / "absent"}  # a container without /sys
    assert ext4_of(data, **hidden) is None


def test_a_data_directory_not_created_yet_is_probed_through_its_parent(
        tmp_path: Path, data: Path) -> None:
    roots = kernel_trees(tmp_path, data, "vda", ext4=True, journals=[])
    assert ext4_of(data / "not" / "yet", **roots) == ext4_of(data, **roots)


def _mount_of(path: Path) -> tuple[str, str]:
    """(mount point, filesystem type) of ``path`` from /proc/self/mountinfo."""
    best = ("", "")
    real = os.path.realpath(path)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        point = left.split()[4].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, right.split()[0])
    return best


def test_this_machine_agrees_with_mountinfo(data: Path) -> None:
    if not Path("/proc/fs").is_dir() or not Path("/sys/dev/block").is_dir():
        pytest.skip("no /proc/fs or /sys/dev/block here")
    _point, fstype = _mount_of(data)
    mount = ext4_of(data)
    assert (mount is not None) == (fstype == "ext4"), (fstype, mount)


def test_the_server_logs_the_warning_at_start(tmp_path: Path, data: Path,
                                              caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An upload server whose data directory is on ext4 without a journal says so at start;
    one on a journaled ext4 says nothing."""
    from runtime.repository import filesystem

    settings = Settings(data_dir=data, keys_dir=tmp_path / "keys",
                        repositories="ci.example.org", scheduler=False)
    for journals, expected in (([], 1), (["vda-8"], 0)):
        roots = kernel_trees(tmp_path / str(expected), data, "vda", ext4=True,
                             journals=journals)
        monkeypatch.setattr(filesystem, "PROC_EXT4", roots["proc_ext4"])
        monkeypatch.setattr(filesystem, "PROC_JBD2", roots["proc_jbd2"])
        monkeypatch.setattr(filesystem, "SYS_DEV_BLOCK", roots["sys_dev_block"])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="runtime.server.app"):
            create_app(settings)
        said = [r for r in caplog.records if "without a journal" in r.getMessage()]
        assert len(said) == expected, journals
        assert all(r.levelno == logging.WARNING and str(data) in r.getMessage() for r in said)
