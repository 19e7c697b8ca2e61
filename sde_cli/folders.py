"""The filesystem checks before and after the work: a folder is writable, output names
never overwrite, one writer per folder (the lock), and a failed start leaves no skeleton."""

import contextlib
import os

from sde_cli.errors import CLIError


def check_writable(folder, args=None):
    """Create `folder` if needed and make sure a file can be written there, before the work.
    With the command's `args`, a folder created here is noted in `args.created_folders`, so
    that a command failing later leaves no skeleton there (`remove_skeletons`)."""
    created = missing_folders(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test.{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise CLIError(f"cannot write to {folder!r}: {e.strerror or e}") from None
    if created and args is not None:
        args.created_folders = [*getattr(args, "created_folders", []), *created]
    return folder


def missing_folders(folder):
    """The folders `os.makedirs(folder)` would create, outermost first."""
    missing, path = [], os.path.abspath(folder)
    while not os.path.lexists(path):
        missing.insert(0, path)
        path = os.path.dirname(path)
    return missing


def unique_stem(folder, stem, suffixes):
    """`stem`, or `stem_2`, `stem_3`, ... so that no file `<stem><suffix>` in `folder` is
    overwritten."""
    candidate, k = stem, 1
    while any(os.path.exists(os.path.join(folder, candidate + s)) for s in suffixes):
        k += 1
        candidate = f"{stem}_{k}"
    return candidate


def workdir_lock(folder, what=None, args=None):
    """Hold the one-writer lock of `folder` (`sde_base.fileio.WorkdirLock`) for this command;
    another live run holding it is an error naming its pid and host. Holding it, remove the
    temporary files dead writers left in `folder`. `args`: as for `check_writable`."""
    from sde_base.fileio import WorkdirLock, WorkdirLockedError, remove_stale_temps
    check_writable(folder, args)
    try:
        lock = WorkdirLock(folder, what=what).acquire()
    except WorkdirLockedError as e:
        raise CLIError(str(e)) from None
    remove_stale_temps(folder)
    return lock


@contextlib.contextmanager
def undo_failed_start(folder):
    """Leave no skeleton behind a start that fails: on an exception inside the block, the empty
    folders it created in `folder` are removed, and so are its lock file and `folder` itself
    when the block created `folder` and left nothing else in it. Files are never removed, so
    nothing a run wrote (checkpoints, logs: its history) is lost. Rank 0 only under torchrun."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    created = not os.path.exists(folder)
    before = set() if created else set(os.listdir(folder))
    try:
        yield
    except BaseException:
        _remove_skeleton(folder, created, before)
        raise


def remove_skeletons(args):
    """After a command failed: remove the folders it created (`check_writable` with its `args`)
    where they hold nothing but empty folders and its lock (rank 0 only under torchrun)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    for folder in reversed(getattr(args, "created_folders", [])):
        _remove_skeleton(folder, True, set())


def _remove_skeleton(folder, created, before):
    from sde_base.fileio import WorkdirLock
    try:
        new = set(os.listdir(folder)) - before
    except OSError:
        return
    for name in sorted(new):
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            for root, _, _ in sorted(os.walk(path), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(root)  # only succeeds on an empty folder
    if created and os.listdir(folder) == [WorkdirLock.NAME]:
        # Still locked by this process: removing the file first, then the folder, lets no
        # other run in between (a run that opened it meanwhile was refused the lock).
        with contextlib.suppress(OSError):
            os.remove(os.path.join(folder, WorkdirLock.NAME))
    if created:
        with contextlib.suppress(OSError):
            os.rmdir(folder)
