"""Training checkpoints: where they live, and saving/restoring the whole training state.

Layout (the original's): `<workdir>/checkpoints/checkpoint_<k>.pth` every `snapshot_freq` steps
and at the end (k = step / snapshot_freq rounded up; all kept), and
`<workdir>/checkpoints-meta/checkpoint.pth`, the latest state for resuming after preemption,
rewritten every `snapshot_freq_for_preemption` steps. Files are written by
`networks.save_checkpoint` (`sde_base.fileio.atomic_write`: temporary file, fsync, rename), so a
reader never sees a half-written file; each has a sidecar `<file>.json` with its step and
sha256 (`write_sidecar`), so finding the newest checkpoint opens none. Besides the model, EMA,
optimizer and step, a training checkpoint holds the data order (`extra['data_order']`), the
loss accumulated since the last log record, and the fp16 gradient scaler's state; every other
random draw of a step is seeded by (seed, step), so nothing else is needed to continue exactly
where the run stopped. The workdir must be on a filesystem all processes share (multi-node runs).
"""

import json
import os
import re
import warnings

from networks import CheckpointError, load_checkpoint, load_state, read_checkpoint, save_checkpoint
from networks import safetensors_io
from networks.safetensors_io import looks_like_safetensors
from sde_base.fileio import file_digest, move_into_new_folder, write_json

PERIODIC_DIR = "checkpoints"
META_DIR = "checkpoints-meta"


def meta_path(workdir):
    return os.path.join(workdir, META_DIR, "checkpoint.pth")


def periodic_path(workdir, k):
    return os.path.join(workdir, PERIODIC_DIR, f"checkpoint_{int(k)}.pth")


def periodic_checkpoints(workdir):
    """{k: path} of the periodic checkpoints in a workdir."""
    d = os.path.join(workdir, PERIODIC_DIR)
    out = {}
    if os.path.isdir(d):
        for name in os.listdir(d):
            m = re.fullmatch(r"checkpoint_(\d+)\.pth", name)
            if m:
                out[int(m.group(1))] = os.path.join(d, name)
    return dict(sorted(out.items()))


class CheckpointWarning(UserWarning):
    """A checkpoint found in a workdir that cannot be read and is skipped."""


def sidecar_path(path):
    """`<checkpoint>.json`: the step and sha256 of a checkpoint file, with the file's size,
    mtime and inode when the record was written (a record that no longer matches the file is
    ignored)."""
    return os.fspath(path) + ".json"


def write_sidecar(path, step):
    """Record the step and content digest of checkpoint `path` next to it (atomically)."""
    st = os.stat(path)
    record = {"step": int(step), "sha256": file_digest(path), "size": st.st_size,
              "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    write_json(sidecar_path(path), record)
    return record


def read_sidecar(path):
    """The sidecar record of checkpoint `path` if it exists and still describes the file (same
    size, mtime and inode), else None."""
    try:
        with open(sidecar_path(path)) as f:
            record = json.load(f)
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        return None
    if (record.get("size"), record.get("mtime_ns"), record.get("inode")) != \
            (st.st_size, st.st_mtime_ns, st.st_ino):
        return None
    return record


def checkpoint_step(path):
    """The training step of checkpoint `path`: from its sidecar when that is current, else
    from the file itself (memory-mapped, so the weights are not read). Raises
    networks.CheckpointError for a file that cannot be read."""
    record = read_sidecar(path)
    if record is not None:
        return record["step"]
    return int(_read_meta(path).get("step", 0))


def _read_meta(path):
    """The checkpoint's dict with its step, reading as little as possible: a safetensors
    checkpoint's header metadata, else the `.pth` file memory-mapped."""
    import torch
    with open(path, "rb") as f:
        head = f.read(16)
    if looks_like_safetensors(head):  # torch.load reads these too, but without the step
        try:
            return {"step": safetensors_io.stored_step(safetensors_io.read_metadata(path))}
        except ValueError as e:
            raise CheckpointError(f"checkpoint file {path!r}: {e}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip file (legacy format) or unreadable: read it the careful way,
        return read_checkpoint(path)


def checkpoint_identity(path):
    """{'step', 'sha256'} of checkpoint `path` (from the sidecar when current, else computed):
    what produced a result, independent of the file's name."""
    record = read_sidecar(path)
    if record is not None:
        return {"step": record["step"], "sha256": record["sha256"]}
    return {"step": int(_read_meta(path).get("step", 0)), "sha256": file_digest(path)}


def _readable_step(path, warn):
    try:
        return checkpoint_step(path)
    except (CheckpointError, OSError) as e:
        warn(f"skipping checkpoint {path!r}: it cannot be read ({e})", CheckpointWarning)
        return None


def latest_checkpoint(workdir, warn=None):
    """The newest readable checkpoint of a workdir (by step; the meta checkpoint on a tie), or
    None. Steps come from the sidecars (or, without one, from the meta checkpoint and the
    newest periodic ones only: `checkpoint_<k>` grows with the step). An unreadable checkpoint
    is skipped with a CheckpointWarning naming it, so a bad meta checkpoint falls back to the
    newest readable periodic one."""
    warn = warn or warnings.warn
    best = None  # (step, is_meta, path)
    meta = meta_path(workdir)
    if os.path.isfile(meta):
        step = _readable_step(meta, warn)
        if step is not None:
            best = (step, 1, meta)
    for path in reversed(list(periodic_checkpoints(workdir).values())):
        step = _readable_step(path, warn)
        if step is None:
            continue
        if best is None or (step, 0) > best[:2]:
            best = (step, 0, path)
        break
    return None if best is None else best[2]


# What a training run leaves in its workdir besides the lock: its history.
HISTORY = ("log.jsonl", PERIODIC_DIR, META_DIR, "samples", "tensorboard")


class TrainingHistoryError(CheckpointError):
    """A workdir with a training history but no readable checkpoint to resume from."""


def resume_point(workdir, warn=None):
    """The checkpoint a run in `workdir` resumes from (`latest_checkpoint`), or None for a
    fresh start. A workdir whose history says there was a checkpoint (checkpoint files, or a
    checkpoint record in log.jsonl) but where none can be read raises TrainingHistoryError
    naming the unreadable files: starting afresh there would discard the run's history, which
    only an explicit restart (`move_history_aside`) may do."""
    warn = warn or warnings.warn
    unreadable = []

    def note(message, category=CheckpointWarning):
        unreadable.append(message)
        warn(message, category)

    found = latest_checkpoint(workdir, warn=note)
    if found is not None:
        return found
    files = ([meta_path(workdir)] if os.path.exists(meta_path(workdir)) else []) + \
        list(periodic_checkpoints(workdir).values())
    log = os.path.join(workdir, "log.jsonl")
    logged = []
    if os.path.isfile(log):
        from training.logs import read_log
        logged = [r for r in read_log(log) if isinstance(r, dict)
                  and r.get("event") == "checkpoint"]
    if not files and not logged:
        return None
    why = ("; ".join(m.replace("skipping checkpoint ", "") for m in unreadable) if unreadable
           else f"log.jsonl records {len(logged)} checkpoint(s) (the last at step "
                f"{logged[-1].get('step')}) but no checkpoint file is left")
    raise TrainingHistoryError(
        f"{workdir!r} holds a training history but no readable checkpoint to resume from: "
        f"{why}. Nothing was changed; restore the files, or restart from step 0 with --restart "
        f"(train(..., restart=True)), which moves the history into a history-<time> folder "
        f"of the workdir")


def move_history_aside(workdir):
    """Move the history of `workdir` (HISTORY entries that exist) into a new folder
    `<workdir>/history-<UTC time>[-k]`, never deleting anything; returns that folder, or None
    when there is no history."""
    present = [name for name in HISTORY if os.path.lexists(os.path.join(workdir, name))]
    return move_into_new_folder(workdir, present, "history")


def ensure_sidecar(path, step):
    """Write the sidecar of checkpoint `path` (step `step`) if it has none that fits it: a run
    killed between a checkpoint and its sidecar left it missing. True when it was written."""
    if read_sidecar(path) is not None:
        return False
    write_sidecar(path, step)
    return True


def keep_superseded(path, step):
    """Before checkpoint `path` is written for `step`: if it holds another step (a run that
    ended inside a period, checkpoint_k.pth at step 60, and was then trained on within the same
    period), rename it and its sidecar to `checkpoint_k.step<old>.pth` beside it, so no weights
    are lost (the name is not a periodic checkpoint's: discovery ignores it). Returns the new
    path, or None when there was nothing to keep."""
    if not os.path.exists(path):
        return None
    try:
        old = checkpoint_step(path)
    except Exception:  # noqa: BLE001 -- an unreadable file is kept too, under its own name
        old = "unreadable"
    if old == int(step):
        return None  # the same step again (a resumed run redoing it): same weights
    stem, ext = os.path.splitext(os.fspath(path))
    target, n = f"{stem}.step{old}{ext}", 1
    while os.path.lexists(target) or os.path.lexists(sidecar_path(target)):
        n += 1
        target = f"{stem}.step{old}-{n}{ext}"
    os.replace(path, target)
    if os.path.exists(sidecar_path(path)):
        os.replace(sidecar_path(path), sidecar_path(target))
    return target


def save_training_state(path, model, config, ema, optimizer, step, extra=None):
    """Write the full training state to `path` (atomically) and its sidecar; `extra` holds the
    data order ('data_order') and, with fp16, the gradient scaler ('grad_scaler')."""
    save_checkpoint(path, model, config, ema=ema, optimizer=optimizer, step=int(step), extra=extra)
    write_sidecar(path, step)
    return path


def restore_training_state(path, model, ema, optimizer, map_location="cpu"):
    """Load the state written by `save_training_state` (or an original score_sde_pytorch
    checkpoint) into `model`, `ema` and `optimizer`, strictly (`networks.load_state`).
    Returns (step, extra)."""
    return load_state(path, model, ema=ema, optimizer=optimizer, map_location=map_location)


def load_for_sampling(path, config, device="cpu"):
    """The EMA model of a checkpoint, in eval mode, on `device`."""
    model = load_checkpoint(path, config, ema=True, map_location="cpu")
    return model.to(device).eval()
