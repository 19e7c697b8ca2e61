"""sde_base.fileio: the atomic writer, stale temporary files, the workdir lock."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sde_base.fileio import (WorkdirLock, WorkdirLockedError, atomic_write, remove_stale_temps,
                            save_torch, stale_temps, temp_name, write_json, write_text)

REPO = Path(__file__).resolve().parents[1]


def _temps(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "out.json"
    write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    with atomic_write(path, "w") as f:
        f.write("partial")
        assert json.loads(path.read_text()) == {"a": 1}  # the old file until the block ends
        assert len(_temps(path.parent)) == 1
    assert path.read_text() == "partial" and _temps(path.parent) == []


def test_atomic_write_leaves_nothing_on_an_exception(tmp_path):
    path = tmp_path / "out.txt"
    write_text(path, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(path, "w") as f:
            f.write("new, half written")
            raise RuntimeError("boom")
    assert path.read_text() == "old" and _temps(tmp_path) == []
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(path, "a"):
            pass


def test_temp_names_are_unique_and_hidden(tmp_path):
    a, b = temp_name(tmp_path / "x.pth"), temp_name(tmp_path / "x.pth")
    assert a != b and os.path.dirname(a) == str(tmp_path)
    name = os.path.basename(a)
    assert name.startswith(".x.pth.") and name.endswith(".tmp") and f".{os.getpid()}." in name
    assert len(os.path.basename(temp_name(tmp_path / ("n" * 300)))) <= 255


def test_save_torch_returns_the_file_digest(tmp_path):
    import hashlib

    import torch
    digest = save_torch({"w": torch.arange(5.0)}, tmp_path / "t.pt")
    assert digest == hashlib.sha256((tmp_path / "t.pt").read_bytes()).hexdigest()
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["w"], torch.arange(5.0))


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temps_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getpid()
    mine = Path(temp_name(tmp_path / "checkpoint.pth"))  # a live writer: this process
    stale = Path(str(mine).replace(f".{live}.", f".{dead}."))
    old_style = tmp_path / f".checkpoint.pth.{dead}.0123abcd.tmp"  # the earlier writer's names
    rand = mine.name.split(".")[-2]
    other_host = "0000" if rand[:4] != "0000" else "ffff"
    foreign = tmp_path / f".log.jsonl.{dead}.{other_host}{rand[4:]}.tmp"
    foreign_old = tmp_path / f".x.json.{dead}.{other_host}{rand[4:]}.tmp"
    other = tmp_path / "notes.tmp"  # not the writer's pattern: never touched
    for p in (stale, mine, old_style, foreign, foreign_old, other):
        p.write_bytes(b"x")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(foreign_old, (day_ago, day_ago))
    # another host's pid means nothing here: its file goes only once it is a day old
    expect = sorted(str(p) for p in (stale, old_style, foreign_old))
    assert stale_temps(tmp_path) == expect
    assert remove_stale_temps(tmp_path, tmp_path / "missing") == expect
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, foreign.name,
                                                                  other.name])


def _hold_lock(workdir):
    """A separate process holding the lock until killed; returns it once it holds it."""
    code = ("import sys, time; from sde_base.fileio import WorkdirLock; "
            "WorkdirLock(sys.argv[1], what='test holder').acquire(); print('held', flush=True); "
            "time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(workdir)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_workdir_lock_refuses_a_second_holder_and_names_it(tmp_path):
    proc = _hold_lock(tmp_path)
    try:
        t0 = time.monotonic()
        with pytest.raises(WorkdirLockedError) as err:
            WorkdirLock(tmp_path).acquire()
        assert time.monotonic() - t0 < 5  # fails at once, does not wait
        msg = str(err.value)
        assert f"pid {proc.pid}" in msg and f"host {socket.gethostname()}" in msg
        assert "test holder" in msg and str(tmp_path) in msg
        assert err.value.holder["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The holder died without releasing: the kernel dropped its lock, the next run gets it.
    with WorkdirLock(tmp_path) as lock:
        assert lock.held
        holder = json.loads((tmp_path / ".lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert (tmp_path / ".lock").read_text() == ""  # released: record cleared, file kept


def test_workdir_lock_nests_within_one_process(tmp_path):
    outer = WorkdirLock(tmp_path).acquire()
    with WorkdirLock(tmp_path / ".") as inner:  # the same workdir by another spelling
        assert inner.held
    assert outer.held and json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    outer.release()
    assert not outer.held
    proc = _hold_lock(tmp_path)  # fully released: another process can take it
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_numpy_file_never_unpickles_nor_suggests_it(tmp_path):
    """Plain arrays are read; a pickle, an object array or a broken archive is a ValueError
    naming the file, without numpy's advice to load it unsafely."""
    import pickle
    import numpy as np
    from sde_base.fileio import numpy_file
    np.savez(tmp_path / "plain.npz", a=np.arange(3))
    with numpy_file(tmp_path / "plain.npz") as z:
        assert z["a"].tolist() == [0, 1, 2]
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    np.save(tmp_path / "objects.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "pickle.npz").write_bytes(pickle.dumps({"x": 1}))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04" + b"garbage" * 20)
    for name in ("objects.npz", "objects.npy", "pickle.npz", "broken.npz"):
        path = tmp_path / name
        with pytest.raises(ValueError) as e:
            with numpy_file(path) as z:
                for key in getattr(z, "files", []):
                    z[key]
        text = str(e.value)
        assert str(path) in text and "allow_pickle" not in text and "unsafe" not in text, text


def test_workdir_lock_never_follows_a_link_named_like_the_lock_file(tmp_path):
    """A `.lock` that is a symbolic link (or not a regular file) is refused by name, and the
    file it points to is left as it was (the lock truncates and writes its file)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "out"
    folder.mkdir()
    os.symlink(victim, folder / WorkdirLock.NAME)
    with pytest.raises(OSError, match="not a lock file of this toolkit"):
        WorkdirLock(str(folder)).acquire()
    assert victim.read_text() == "precious"
    other = tmp_path / "other"
    (other / WorkdirLock.NAME).mkdir(parents=True)
    with pytest.raises(OSError, match="not a lock file of this toolkit"):
        WorkdirLock(str(other)).acquire()
