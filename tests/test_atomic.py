"""Atomic writes: the permissions a plain write gives, and the temp files a killed writer
leaves are recognised and removed only when their writer is gone."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from retrieval_app.atomic import STALE_TEMP_AGE_S, atomic_numpy_save, atomic_write_bytes, atomic_write_json, atomic_write_text, remove_stale_temp_files


@pytest.fixture
def umask():
    """`umask(value)` sets the process umask for one test; it is restored afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("value, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_the_mode_a_plain_write_gives(tmp_path, umask, value, expected):
    umask(value)
    written = [
        atomic_write_text(tmp_path / "a.txt", "x"),
        atomic_write_bytes(tmp_path / "b.bin", b"x"),
        atomic_write_json(tmp_path / "c.json", {"x": 1}),
        atomic_numpy_save(tmp_path / "d.npz", x=np.zeros(3)),
    ]
    with open(tmp_path / "plain.txt", "w") as handle:  # the reference
        handle.write("x")
    assert mode(tmp_path / "plain.txt") == expected
    assert [mode(path) for path in written] == [expected] * len(written)


def test_an_existing_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    target = atomic_write_text(tmp_path / "kept.txt", "first")
    os.chmod(target, 0o640)
    atomic_write_text(target, "second")
    assert target.read_text() == "second" and mode(target) == 0o640


def test_no_temp_file_stays_after_a_write_or_a_failed_one(tmp_path):
    atomic_write_text(tmp_path / "ok.txt", "x")

    def explode(handle):
        handle.write(b"half")
        raise RuntimeError("disk on fire")

    from retrieval_app.atomic import _atomic_write

    with pytest.raises(RuntimeError):
        _atomic_write(tmp_path / "failed.txt", explode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.txt"]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temp_files_are_removed_only_when_their_writer_is_gone(tmp_path):
    dead, old_time = dead_pid(), time.time() - STALE_TEMP_AGE_S - 60
    files = {
        "dead_writer": f".store.npz.{dead}-0123abcd.tmp",
        "live_writer": f".store.npz.{os.getpid()}-0123abcd.tmp",  # this process may be writing it now
        "old_unknown": ".store.npz.k3j_x9q2.tmp",  # an older naming scheme: age decides
        "young_unknown": ".part-1.npz.k3j_x9q2.tmp",
        "old_live_writer": f".other.npz.{os.getpid()}-feedbeef.tmp",
        "not_ours": "notes.tmp",
        "hidden_not_tmp": ".keep",
        "store": "store.npz",
    }
    for name in files.values():
        (tmp_path / name).write_bytes(b"x")
    for key in ("old_unknown", "old_live_writer"):
        os.utime(tmp_path / files[key], (old_time, old_time))
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(files[k] for k in ("dead_writer", "old_unknown", "old_live_writer"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files[k] for k in ("live_writer", "young_unknown", "not_ours", "hidden_not_tmp", "store"))
    assert remove_stale_temp_files(tmp_path / "missing") == []


KILLED_MID_WRITE = """
import sys, time
from retrieval_app.atomic import _atomic_write

def write_slowly(handle):
    handle.write(b"new, but only half")
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)

_atomic_write(sys.argv[1], write_slowly)
"""


def test_sigkill_mid_write_leaves_the_old_file_and_a_temp_file_the_next_open_removes(tmp_path):
    target = atomic_write_text(tmp_path / "store.npz", "old and whole")
    writer = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        writer.kill()  # SIGKILL: no cleanup runs
    finally:
        writer.wait(timeout=30)
    left = [p for p in tmp_path.iterdir() if p != target]
    assert target.read_text() == "old and whole"
    assert len(left) == 1 and left[0].name.startswith(".store.npz.") and left[0].read_bytes() == b"new, but only half"
    assert remove_stale_temp_files(tmp_path) == left and not left[0].exists()
