"""Files written whole or not at all, and one run per workdir.

`atomic_write(path)` is the one writer for every file the toolkit writes: the data goes to a
temporary file in the same directory, named `.<name>.<pid>.<random>.tmp`, which is flushed,
fsync'ed and renamed over `path` (`os.replace`, atomic on POSIX), after which the directory is
fsync'ed so the rename itself survives a power loss. A reader sees the old file or the new one,
never a half-written one; on an exception the temporary file is removed. A writer killed
outright (SIGKILL, power loss) can leave its temporary file behind: `remove_stale_temps`
deletes those whose writer process is gone (it keeps those of live processes). The random part
starts with a tag of the writer's host, so on a filesystem shared by several machines a temp
file of another host (whose pids cannot be checked here) is only removed after a day.

`WorkdirLock(workdir)` holds an OS file lock (`fcntl.flock`, exclusive, non-blocking) on
`<workdir>/.lock` for as long as a run writes into the workdir. The kernel releases it when the
process exits in any way, so a lock left by a dead process is never in the way; the file
records the holder's pid and host, and a second run fails at once with an error naming them.
"""

import contextlib
import errno
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid

_TEMP_RE = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<rand>[0-9a-f]{8,32})\.tmp")
_NAME_MAX = 255
_HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:4]
FOREIGN_TEMP_AGE = 24 * 3600.0  # seconds before another host's temp file counts as stale


def temp_name(path):
    """The temporary file `atomic_write` uses for `path`: `.<name>.<pid>.<random>.tmp` in the
    same directory (a long name is shortened to fit the file-name limit)."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    suffix = f".{os.getpid()}.{_HOST_TAG}{uuid.uuid4().hex[:10]}.tmp"
    name = name[:_NAME_MAX - 1 - len(suffix)]
    return os.path.join(folder, f".{name}{suffix}")


def fsync_directory(folder):
    """fsync a directory so a rename inside it is durable (a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None, fsync=True):
    """Context manager giving a file object whose contents replace `path` atomically when the
    block ends without an exception (temp file in the same directory, flush + fsync, os.replace,
    directory fsync). On an exception the temp file is removed and `path` is untouched. `mode`
    is 'wb' or 'w' (text, `encoding` default utf-8). The parent directory is created."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        if mode == "w":
            f = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
        else:
            f = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        _remove_quietly(tmp)
        raise
    try:
        with f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    if fsync:
        fsync_directory(folder)


def _remove_quietly(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


class HashingWriter:
    """A write-only file wrapper that also computes a digest (sha256 by default) of what passes
    through it: `with atomic_write(p) as f: w = HashingWriter(f); torch.save(obj, w)`."""

    def __init__(self, f, algorithm="sha256"):
        self.f = f
        self.hash = hashlib.new(algorithm)
        self.size = 0

    def write(self, data):
        self.hash.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self):
        self.f.flush()

    def hexdigest(self):
        return self.hash.hexdigest()


def write_bytes(path, data):
    """Write `data` (bytes) to `path` atomically. Returns the path."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return os.fspath(path)


def write_text(path, text, encoding="utf-8"):
    """Write `text` to `path` atomically. Returns the path."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)
    return os.fspath(path)


def json_ready(obj):
    """`obj` with every NaN or infinite float (at any depth of dicts, lists and tuples) as None:
    JSON has no NaN, and `json.dumps` would otherwise write the invalid token `NaN`."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def write_json(path, obj, indent=2, **kwargs):
    """Write `obj` as valid JSON (a NaN or inf is null, `json_ready`; a final newline) to `path`
    atomically. Returns the path."""
    text = json.dumps(json_ready(obj), indent=indent, allow_nan=False, **kwargs)
    return write_text(path, text + "\n")


def write_jsonl(path, records):
    """Write records as JSON lines (valid JSON, `json_ready`) to `path` atomically (replacing
    it). Returns the path."""
    return write_text(path, "".join(json.dumps(json_ready(r), allow_nan=False) + "\n"
                                    for r in records))


def read_json(path, format=None, what=None):
    """The JSON data of `path`, or None when there is no such file. A file that cannot be read
    or parsed, or (with `format`) is not a dict whose 'format' is `format`, is a ValueError
    naming it (`what` says what it should have been)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is unreadable ({e})") from None
    if format is not None and (not isinstance(data, dict) or data.get("format") != format):
        raise ValueError(f"{path} is not {what or 'a file'} (format {format!r})")
    return data


def json_object_matches(path, test):
    """True when `path` holds a JSON object for which `test(data)` is true; False when it does
    not (unreadable, not JSON, not an object, or `test` says no). Used to tell a result file
    the toolkit wrote from any other file before replacing it."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and bool(test(data))


def save_torch(obj, path):
    """`torch.save(obj)` to `path` atomically. Returns the sha256 hex digest of the file."""
    import torch
    with atomic_write(path, "wb") as f:
        w = HashingWriter(f)
        torch.save(obj, w)
    return w.hexdigest()


def move_into_new_folder(folder, names, prefix, stamp_format="%Y%m%dT%H%M%SZ"):
    """Move the entries `names` of `folder` (in that order) into a new sub-folder
    `<prefix>-<UTC time>[-k]`, never deleting anything. Returns the new folder, or None when
    `names` is empty."""
    if not names:
        return None
    stamp = time.strftime(stamp_format, time.gmtime())
    dest, k = os.path.join(folder, f"{prefix}-{stamp}"), 1
    while os.path.lexists(dest):
        k += 1
        dest = os.path.join(folder, f"{prefix}-{stamp}-{k}")
    os.makedirs(dest)
    for name in names:
        os.replace(os.path.join(folder, name), os.path.join(dest, name))
    return dest


@contextlib.contextmanager
def numpy_file(path):
    """`np.load(path, allow_pickle=False)` (an .npz archive, or one .npy array), open inside the
    block. Pickled objects are never loaded, and numpy's advice to load them unsafely is never
    passed on: a file numpy cannot read without unpickling, an object array read inside the
    block, or a broken archive is a ValueError naming the file."""
    import zipfile
    import numpy as np
    try:
        arrays = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _unreadable_arrays(path, e) from None
    try:
        yield arrays
    except (ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _unreadable_arrays(path, e) from None
    finally:
        if hasattr(arrays, "close"):
            arrays.close()


def _unreadable_arrays(path, error):
    if "pickle" in str(error):
        return ValueError(f"{path}: reading it would unpickle Python objects, which is never "
                          f"done (only .npz/.npy arrays of numbers are read)")
    if isinstance(error, ValueError) and not isinstance(error, EOFError):
        return error
    return ValueError(f"{path} is not a readable .npz/.npy file ({type(error).__name__}: "
                      f"{error})")


def file_digest(path, algorithm="sha256", chunk=1 << 20):
    """The hex digest of a file's contents."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def pid_alive(pid):
    """True if process `pid` exists on this host (or might: no permission to signal it)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as e:
        return e.errno != errno.ESRCH
    return True


def _stale(path, pid, rand):
    if len(rand) != 14 or rand[:4] == _HOST_TAG:  # written on this host (or an older name)
        return not pid_alive(pid)
    try:
        return time.time() - os.path.getmtime(path) > FOREIGN_TEMP_AGE
    except OSError:
        return False


def stale_temps(directory):
    """The temporary files of `atomic_write` in `directory` whose writer process is gone (for
    another host's files: untouched for FOREIGN_TEMP_AGE seconds)."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in sorted(names):
        m = _TEMP_RE.fullmatch(name)
        if m:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and _stale(path, int(m.group("pid")), m.group("rand")):
                out.append(path)
    return out


def remove_stale_temps(*directories):
    """Delete the temporary files left in `directories` by `atomic_write` writers that died
    (pid no longer running on this host); those of live writers are kept. Returns the removed
    paths."""
    removed = []
    for d in directories:
        for path in stale_temps(d):
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


class WorkdirLockedError(RuntimeError):
    """Another live process holds the workdir's lock."""

    def __init__(self, workdir, holder):
        self.workdir, self.holder = workdir, holder
        pid, host = holder.get("pid", "?"), holder.get("host", "?")
        what = f" ({holder['what']})" if holder.get("what") else ""
        since = ""
        if isinstance(holder.get("time"), (int, float)):
            since = time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(holder["time"]))
        super().__init__(
            f"workdir {workdir!r} is in use by another run: pid {pid} on host {host}{what}{since} "
            f"holds its lock {os.path.join(workdir, WorkdirLock.NAME)!r}. Wait for that run to "
            f"finish or stop it, or use another workdir (two runs writing one workdir would mix "
            f"their checkpoints and logs)")


# Locks this process holds, by real path of the lock file: [lock object, nesting count].
_HELD = {}
_HELD_GUARD = threading.Lock()


class WorkdirLock:
    """Exclusive lock on a workdir for the duration of a run (context manager, or
    acquire()/release()).

    `fcntl.flock(LOCK_EX | LOCK_NB)` on `<workdir>/.lock`: released by the kernel when the
    process exits in any way (so a dead holder never blocks anyone), and a second process gets
    `WorkdirLockedError` naming the holder's pid and host at once. Nested acquisition in the
    same process (a command that locks, then calls `train`, which locks) is allowed. The lock
    file is never deleted (deleting it would let two processes lock two different files); its
    contents are cleared on release. On network filesystems flock works where the filesystem
    supports locks (Linux NFS maps it to POSIX byte-range locks)."""

    NAME = ".lock"

    def __init__(self, workdir, what=None):
        self.workdir = os.fspath(workdir)
        self.path = os.path.join(self.workdir, self.NAME)
        self.what = what
        self._fd = None
        self._key = None

    def acquire(self):
        import fcntl
        os.makedirs(self.workdir, exist_ok=True)
        key = os.path.realpath(self.path)
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is not None:
                held[1] += 1
                self._key = key
                return self
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise WorkdirLockedError(self.workdir, self._read_holder()) from None
                raise
            info = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
            if self.what:
                info["what"] = str(self.what)
            data = (json.dumps(info) + "\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
            self._fd, self._key = fd, key
            _HELD[key] = [self, 1]
        return self

    def _open(self):
        """The lock file, opened without following a symbolic link: a link or another kind of
        file named like it is refused, so the lock never truncates a file elsewhere."""
        import stat
        not_ours = OSError(f"{self.path} is not a lock file of this toolkit (a symbolic link or "
                           f"not a regular file); it is left as it is: remove it to use the folder")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_NONBLOCK", 0), 0o666)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EISDIR):
                raise not_ours from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise not_ours
        return fd

    def _read_holder(self, tries=20):
        """The holder's record; it may be being written right now, so retry briefly."""
        for _ in range(tries):
            try:
                with open(self.path) as f:
                    text = f.read()
                holder = json.loads(text)
                if isinstance(holder, dict) and "pid" in holder:
                    return holder
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
        return {"pid": "unknown", "host": "unknown"}

    def release(self):
        import fcntl
        if self._key is None:
            return
        with _HELD_GUARD:
            held = _HELD.get(self._key)
            if held is not None:
                held[1] -= 1
                if held[1] > 0:
                    self._key = None
                    return
                owner = held[0]
                del _HELD[self._key]
                fd, owner._fd = owner._fd, None
                try:
                    os.ftruncate(fd, 0)
                except OSError:
                    pass
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            self._key = None

    @property
    def held(self):
        return self._key is not None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


__all__ = ["atomic_write", "temp_name", "fsync_directory", "HashingWriter", "write_bytes",
           "write_text", "json_ready", "read_json", "write_json", "write_jsonl", "save_torch", "file_digest",
           "pid_alive", "stale_temps", "remove_stale_temps", "WorkdirLock", "WorkdirLockedError"]
