"""Training checkpoints: where they live, and saving/restoring the whole training state.

Layout (the original's): `<workdir>/checkpoints/checkpoint_<k>.pth` every `snapshot_freq` steps
and at the end (k = step / snapshot_freq rounded up; all kept), and
`<workdir>/checkpoints-meta/checkpoint.pth`, the latest state for resuming after preemption,
rewritten every `snapshot_freq_for_preemption` steps. Files are written by
`networks.save_checkpoint` (temporary file, then rename), so a reader never sees a half-written
file. Besides the model, EMA, optimizer and step, a training checkpoint holds the data order
(`extra['data_order']`, and the fp16 gradient scaler's state); every other random draw of a step
is seeded by (seed, step), so nothing else is needed to continue exactly where the run stopped.
The workdir must be on a filesystem all processes share (multi-node runs).
"""

import os
import re

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


def latest_checkpoint(workdir):
    """The newest checkpoint of a workdir (by step): the meta checkpoint or the last periodic one;
    None if there is none."""
    cands = list(periodic_checkpoints(workdir).values())
    if os.path.isfile(meta_path(workdir)):
        cands.append(meta_path(workdir))
    if not cands:
        return None
    return max(cands, key=lambda p: (checkpoint_step(p), p == meta_path(workdir)))


def checkpoint_step(path):
    from networks import read_checkpoint
    return int(read_checkpoint(path).get("step", 0))


def save_training_state(path, model, config, ema, optimizer, step, extra=None):
    """Write the full training state to `path` (atomically); `extra` holds the data order
    ('data_order') and, with fp16, the gradient scaler ('grad_scaler')."""
    from networks import save_checkpoint
    save_checkpoint(path, model, config, ema=ema, optimizer=optimizer, step=int(step), extra=extra)


def restore_training_state(path, model, ema, optimizer, map_location="cpu"):
    """Load the state written by `save_training_state` (or an original score_sde_pytorch
    checkpoint) into `model`, `ema` and `optimizer`, strictly (`networks.load_state`).
    Returns (step, extra)."""
    from networks import load_state
    return load_state(path, model, ema=ema, optimizer=optimizer, map_location=map_location)


def load_for_sampling(path, config, device="cpu"):
    """The EMA model of a checkpoint, in eval mode, on `device`."""
    from networks import load_checkpoint
    model = load_checkpoint(path, config, ema=True, map_location="cpu")
    return model.to(device).eval()
