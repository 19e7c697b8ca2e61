"""Bits/dim of a dataset split, resumable, with records that are reused only for the same work.

Each batch is dequantized with its own generator, seeded from (seed, batch index), which also
draws the Hutchinson probes, so a batch's numbers do not depend on which batches ran before it.
After each batch one JSON line (batch index, image range, bits/dim per image, NFE, key) is added
to the records file (rewritten atomically); a stopped run started again skips the batches
already there, but only if they carry the same key: the digest of the checkpoint's identity
(its step and the SHA-256 of its contents, not its name or path), the config and every setting
that changes the number. Records of another key are never reused: `evaluate_split` refuses the
file (``fresh=True`` replaces it). One writer at a time: a second process on the same file gets
an error naming the holder.
"""

import hashlib
import json
import math
import os
import time

import torch

from likelihood.bpd import bits_per_dim_details
from sde_base.fileio import WorkdirLock, file_digest, write_jsonl
from training.pipeline import get_images, mix_seed


class RecordsMismatch(ValueError):
    """A records file written for other work (checkpoint, config or settings)."""


def source_identity(path):
    """What a model source is, independent of its name: a checkpoint file's step and SHA-256
    (`training.checkpoints.checkpoint_identity`), a folder's digest over all its files (a
    diffusers model), or a hub id's name."""
    from training.checkpoints import checkpoint_identity
    path = os.fspath(path)
    if os.path.isfile(path):
        return checkpoint_identity(path)
    if not os.path.isdir(path):  # a hub id: its name is all there is to go by
        return {"source": path}
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode() + b"\0")
            h.update(file_digest(full).encode())
    return {"sha256": h.hexdigest()}


def run_key(**parts):
    """A short digest of JSON-serialisable parts (checkpoint identity, config, settings)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def batch_generator(seed, index):
    """The CPU generator of batch `index`: dequantization noise and probes."""
    return torch.Generator().manual_seed(mix_seed(seed, index))


def read_records(path, key):
    """{batch index: record} of a JSONL records file (empty if absent). RecordsMismatch if a
    record carries another key; ValueError if a line is not a record."""
    records = {}
    if not os.path.exists(path):
        return records
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                index = int(rec["batch"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}, line {n}: not a bits/dim record ({e})") from None
            if rec.get("key") != key:
                raise RecordsMismatch(
                    f"{path} holds records of other work (key {rec.get('key')!r}, now {key!r}: "
                    f"another checkpoint, config or setting); they are not reused. Choose "
                    f"another output file, or pass --fresh to replace them")
            records[index] = rec
    return records


def summarize(records):
    """Mean bits/dim over every recorded image, its standard error, and the mean NFE."""
    bpd = torch.tensor([v for r in records.values() for v in r["bpd"]], dtype=torch.float64)
    n = bpd.numel()
    return {"bpd": bpd.mean().item() if n else math.nan,
            "bpd_stderr": (bpd.std() / math.sqrt(n)).item() if n > 1 else math.nan,
            "num_images": n, "num_batches": len(records),
            "nfe_mean": (sum(r["nfe"] for r in records.values()) / len(records)
                         if records else math.nan)}


def evaluate_split(score_fn, sde, dataset, *, data_range, batch_size, out, seed, key,
                   num_batches=None, repeats=1, device="cpu", progress=True, fresh=False,
                   log=print, **kwargs):
    """Bits/dim of `dataset` (items (image [C, H, W] in [0, 1], label)) in batches, each recorded
    in `out` under `key` as it finishes; batches already in `out` with that key are skipped.
    `data_range` is where the data scaler sends [0, 1]. Other keywords go to
    `bits_per_dim_details` (levels, method, dequantize, and the ODE's estimator, n_probes, rtol,
    atol or the bound's n_samples, importance_sampling; eps). A non-finite bits/dim is an error,
    never a record. Reused records are announced through `log`; the progress bar counts images
    (with an ETA). Returns the summary dict."""
    from tqdm import tqdm
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if len(dataset) == 0:
        raise ValueError("the dataset split is empty: no images to evaluate")
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be positive, got {num_batches}")
    lo, hi = data_range
    per_pass = math.ceil(len(dataset) / batch_size)
    total = per_pass * repeats if num_batches is None else min(num_batches, per_pass * repeats)
    folder = os.path.dirname(os.path.abspath(out))
    with WorkdirLock(folder, what=f"bits/dim records {os.path.basename(out)}"):
        records = {} if fresh else read_records(out, key)
        if fresh and os.path.exists(out):
            write_jsonl(out, [])
        todo = [b for b in range(total) if b not in records]

        def size(b):
            start = (b % per_pass) * batch_size
            return min(start + batch_size, len(dataset)) - start

        done = sum(size(b) for b in range(total) if b in records)
        if done:
            log(f"bits/dim: reusing {total - len(todo)} batch(es) ({done} images) recorded in "
                f"{out} for the same checkpoint, config and settings")
        bar = tqdm(total=done + sum(size(b) for b in todo), initial=done,
                   disable=not progress, unit="image", desc="bits/dim", smoothing=0.3)
        for b in todo:
            start = (b % per_pass) * batch_size
            stop = min(start + batch_size, len(dataset))
            images, _ = get_images(dataset, torch.arange(start, stop))
            images = (lo + (hi - lo) * images).to(device)
            t0 = time.time()
            res = bits_per_dim_details(score_fn, sde, images, data_range=data_range,
                                       generator=batch_generator(seed, b), **kwargs)
            bpd = res.bpd.tolist()
            if not all(math.isfinite(v) for v in bpd):
                raise FloatingPointError(f"batch {b} (images {start}..{stop - 1}) gave a "
                                         f"non-finite bits/dim {bpd}: not recorded")
            stderr = res.bpd_stderr.tolist()
            records[b] = {"batch": b, "start": start, "stop": stop, "bpd": bpd,
                          "method": res.method, "dequantize": res.dequantize,
                          "bpd_stderr": [None if math.isnan(s) else s for s in stderr],
                          "nfe": res.nfe, "eps": res.eps, "seconds": time.time() - t0,
                          "key": key}
            write_jsonl(out, [records[i] for i in sorted(records)])
            bar.update(stop - start)
            bar.set_postfix(bpd=f"{summarize(records)['bpd']:.4f}")
        bar.close()
    return summarize({b: r for b, r in records.items() if b < total})
