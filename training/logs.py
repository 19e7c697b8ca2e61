"""Run logs: JSON lines (`log.jsonl`, one object per record) and TensorBoard when installed."""

import json
import math
import os
import time

from sde_base.fileio import write_text


def _plain(v):
    if hasattr(v, "item") and getattr(v, "numel", lambda: 1)() == 1:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class RunLogger:
    """Appends records to `<workdir>/log.jsonl` (and TensorBoard scalars under
    `<workdir>/tensorboard` if `torch.utils.tensorboard` imports). Disabled when `enabled` is
    false (non-zero ranks).

    start_step: the step a (resumed) run starts from; the records of later steps, written by an
    earlier run that stopped before saving them in a checkpoint, are removed first (and purged
    from TensorBoard), so after any number of resumptions each step is logged once."""

    def __init__(self, workdir, enabled=True, tensorboard=True, start_step=None):
        self.enabled = enabled
        self.path = os.path.join(workdir, "log.jsonl")
        self.writer = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        if start_step is not None:
            truncate_log(self.path, start_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                purge = None if start_step is None else int(start_step) + 1
                self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                            purge_step=purge)
            except Exception:  # tensorboard is optional
                self.writer = None

    def log(self, record, step=None):
        if not self.enabled:
            return
        record = {k: _plain(v) for k, v in record.items()}
        record.setdefault("time", time.time())
        if step is not None:
            record["step"] = int(step)
        with open(self.path, "a+b") as f:  # appended, not atomic: see read_log
            torn = False
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            f.write((("\n" if torn else "") + json.dumps(record) + "\n").encode())
        if self.writer is not None and step is not None:
            for k, v in record.items():
                if k not in ("step", "time", "event") and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, int(step))

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_log(path):
    """The records of a log.jsonl file. The log is appended a line at a time (not through the
    atomic writer), so a writer killed mid-line leaves a torn line: it is skipped here, and the
    next record starts on a line of its own."""
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def truncate_log(path, step):
    """Rewrite log.jsonl (atomically) without the records of steps after `step` and without a
    truncated last line. Returns the number of records removed."""
    if not os.path.exists(path):
        return 0
    keep, dropped, whole = [], 0, True
    with open(path) as f:
        for line in f:
            whole = line.endswith("\n")
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) \
                    and record["step"] > step:
                dropped += 1
                continue
            keep.append(line if line.endswith("\n") else line + "\n")
    if dropped or not whole:
        write_text(path, "".join(keep))
    return dropped
