"""Bits/dim of a dataset split, distributed over processes, repeated, resumable, with records
that are reused only for the same work.

Protocol (the original's test-set evaluation): `repeats` passes over the split, each with fresh
dequantization noise. Pass r has its own dequantization seed, `repeat_seed(seed, r)`, recorded
with every value; image i of pass r draws its dequantization noise and then its Hutchinson
probes (or the bound's times and noise) from its own generator, seeded from (repeat seed, i)
(`solvers.seeding.RowGenerators`), so its noise does not depend on which batch or process it
fell in. What does depend on the batch: the adaptive ODE solver controls the error of a batch
together (each step must pass for every image, `likelihood.ode.per_sample_norm`), so an image's
number depends on its batch-mates within the solver's tolerance; the batch size is therefore
part of the key, batches are fixed ranges [j B, (j + 1) B) of the split, and with the same batch
size 1 or K processes give bitwise the same records.

Distribution (under torchrun): rank 0 locks the folder, reads the records and broadcasts the
batches still to do (in (repeat, batch) order); batch i goes to rank i mod world size. Each rank
solves its own batches with no collective at all while computing (an adaptive solve takes a
different number of steps on each rank, and ranks finish at different times): a finished batch
is handed to rank 0 through the process group's key-value store, and rank 0, the one writer
(it holds the folder's lock, `sde_base.fileio.WorkdirLock`, under which dead writers'
temporary files are removed), takes what has arrived after each of its own batches and rewrites
the records file atomically. At the end rank 0 waits for the other ranks' last batches, and
gives up when none has arrived for the collective timeout plus twice its own longest batch (a
rank stalled or died). A killed rank loses its unfinished batch and the finished ones rank 0 had
not yet taken; a killed rank 0 loses its own unfinished batch and what it had not yet written.

Records: one JSON line per (repeat, image): bits/dim, its standard error over the probes, the
batch's NFE, the repeat's seed and the key, the digest of the checkpoint's identity (its step and
the SHA-256 of its contents, not its name or path), the config and every setting that changes
the number. A rerun skips the batches whose images are all recorded; records of another key
are never reused: `evaluate_split` refuses the file (``fresh=True`` replaces it). The number of
repeats is not in the key (repeat r's seed does not depend on it), so a rerun with more repeats
extends the records and one with fewer summarizes the first ones.

Summary: the mean over every (image, repeat) value, and as its standard error the standard
deviation over images of each image's mean over the repeats, divided by sqrt(number of images):
the repeats of one image share the image and are correlated, so they are not counted as
independent values (`summarize`).
"""

import hashlib
import json
import math
import os
import time
import uuid

import torch

from likelihood.bpd import bits_per_dim_details
from sde_base.fileio import (WorkdirLock, file_digest, json_object_matches,
                             remove_stale_temps, write_jsonl)
from solvers.seeding import RowGenerators
from training.distributed import DistInfo, DistributedTimeoutError, collective
from training.pipeline import get_images, mix_seed

STDERR_RULE = ("standard deviation over images of each image's mean over the repeats, divided "
               "by sqrt(number of images): repeats of one image are correlated and not counted "
               "as independent values")


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


def repeat_seed(seed, repeat):
    """The dequantization seed of pass `repeat` over the split."""
    return mix_seed(seed, repeat)


def image_generators(seed, repeat, images):
    """One CPU generator per image of `images` (indices into the split) for pass `repeat`,
    seeded from (repeat_seed(seed, repeat), image index): it draws the image's dequantization
    noise and then its probes."""
    base = repeat_seed(seed, repeat)
    return RowGenerators([mix_seed(base, int(i)) for i in images])


MAX_VALUES = 10_000_000  # (image, repeat) records of one run: ImageNet's 50k x 5 is 250k


def plan_batches(num_images, batch_size, repeats, num_batches=None):
    """The batches (repeat, batch index, start, stop) of `repeats` passes over `num_images`
    images in batches of `batch_size`, in (repeat, batch) order; the first `num_batches` only
    if given."""
    per_pass = math.ceil(num_images / batch_size)
    out = [(r, j, j * batch_size, min((j + 1) * batch_size, num_images))
           for r in range(repeats) for j in range(per_pass)]
    return out if num_batches is None else out[:num_batches]


def read_records(path, key):
    """{(repeat, image): record} of a JSONL records file (empty if absent). RecordsMismatch if a
    record carries another key or is of the older per-batch format; ValueError if a line is not
    a record."""
    records = {}
    if not os.path.exists(path):
        return records
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if "image" not in rec and isinstance(rec.get("bpd"), list):
                    raise RecordsMismatch(
                        f"{path} holds per-batch records of an older format; they are not "
                        f"reused. Choose another output file, or pass --fresh to replace them")
                index = (int(rec["repeat"]), int(rec["image"]))
                float(rec["bpd"])
            except (ValueError, KeyError, TypeError) as e:
                if isinstance(e, RecordsMismatch):
                    raise
                raise ValueError(f"{path}, line {n}: not a bits/dim record ({e})") from None
            if rec.get("key") != key:
                raise RecordsMismatch(
                    f"{path} holds records of other work (key {rec.get('key')!r}, now {key!r}: "
                    f"another checkpoint, config or setting); they are not reused. Choose "
                    f"another output file, or pass --fresh to replace them")
            records[index] = rec
    return records


def summary_path(records_path):
    """The summary JSON written beside a records file: <records without .jsonl>.json."""
    return os.path.splitext(os.fspath(records_path))[0] + ".json"


def check_replaceable(records_path, fresh):
    """Refuse (ValueError) before any work to replace a file this toolkit did not write: with
    `fresh`, an existing `records_path` must be a bits/dim records file (of any work); the
    summary JSON beside it (`summary_path`), if there, must be a bits/dim summary."""
    if fresh and os.path.exists(records_path):
        try:
            with open(records_path) as f:
                for line in f:
                    if line.strip():
                        rec = json.loads(line)
                        if not (isinstance(rec, dict) and "bpd" in rec and "key" in rec):
                            raise ValueError("a line without 'bpd' and 'key'")
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{records_path} is not a bits/dim records file ({e}); --fresh "
                             f"replaces only records this toolkit wrote: choose another "
                             f"records file") from None
    summary = summary_path(records_path)
    if os.path.lexists(summary):
        if not json_object_matches(summary, lambda data: {"bpd", "key", "records"} <= set(data)):
            raise ValueError(f"{summary} exists and is not a bits/dim summary this toolkit "
                             f"wrote; the summary of {os.path.basename(records_path)} would "
                             f"replace it: choose another records file")


def summarize(records):
    """The summary of per-image records {(repeat, image): record}: `bpd` the mean over every
    (image, repeat) value; `bpd_stderr` the standard deviation over images of each image's mean
    over its repeats / sqrt(images) (STDERR_RULE; NaN for one image); `bpd_repeats` each
    repeat's mean; `repeat_seeds` each repeat's dequantization seed; `nfe_mean` the mean NFE
    per batch."""
    keys = sorted(records)
    values = torch.tensor([records[k]["bpd"] for k in keys], dtype=torch.float64)
    by_image, by_repeat, batches = {}, {}, {}
    for k in keys:
        rec = records[k]
        by_image.setdefault(k[1], []).append(rec["bpd"])
        by_repeat.setdefault(k[0], []).append(rec["bpd"])
        batches[(k[0], rec.get("batch"))] = rec["nfe"]
    means = torch.tensor([sum(v) / len(v) for _, v in sorted(by_image.items())],
                         dtype=torch.float64)
    n = means.numel()
    seeds = {r: records[k]["seed"] for k in keys for r in [k[0]]}
    return {"bpd": values.mean().item() if len(keys) else math.nan,
            "bpd_stderr": (means.std() / math.sqrt(n)).item() if n > 1 else math.nan,
            "stderr": STDERR_RULE, "num_images": n, "num_values": len(keys),
            "repeats": len(by_repeat),
            "bpd_repeats": [sum(v) / len(v) for _, v in sorted(by_repeat.items())],
            "repeat_seeds": [seeds[r] for r in sorted(by_repeat)],
            "num_batches": len(batches),
            "nfe_mean": sum(batches.values()) / len(batches) if batches else math.nan}


def _batch_records(score_fn, sde, dataset, batch, *, data_range, seed, key, device, kwargs):
    """The per-image records of one batch (repeat, j, start, stop), or raises."""
    r, j, start, stop = batch
    lo, hi = data_range
    images, _ = get_images(dataset, torch.arange(start, stop))
    images = (lo + (hi - lo) * images).to(device)
    res = bits_per_dim_details(score_fn, sde, images, data_range=data_range,
                               generator=image_generators(seed, r, range(start, stop)), **kwargs)
    bpd, stderr = res.bpd.tolist(), res.bpd_stderr.tolist()
    if not all(math.isfinite(v) for v in bpd):
        raise FloatingPointError(f"repeat {r}, batch {j} (images {start}..{stop - 1}) gave a "
                                 f"non-finite bits/dim {bpd}: not recorded")
    rseed = repeat_seed(seed, r)
    return [{"repeat": r, "image": start + i, "batch": j, "bpd": v,
             "bpd_stderr": None if math.isnan(s) else s, "nfe": res.nfe, "eps": res.eps,
             "method": res.method, "dequantize": res.dequantize, "seed": rseed, "key": key}
            for i, (v, s) in enumerate(zip(bpd, stderr))]


def _from_rank0(info, payload, what):
    """Rank 0's `payload` on every rank (one broadcast; itself in a one-process run)."""
    if not info.distributed:
        return payload
    import torch.distributed as dist
    box = [payload]
    with collective(info, what):
        dist.broadcast_object_list(box, src=0)
    return box[0]


class _Handoff:
    """Finished batches handed to rank 0 through the process group's key-value store, with no
    collective: rank r sets `<prefix>/<i>` (JSON) for batch i of the plan; rank 0 takes
    (reads and deletes) those that have arrived."""

    def __init__(self, info, prefix):
        self.store, self.prefix = None, prefix
        if info.distributed:
            import torch.distributed as dist
            self.store = dist.distributed_c10d._get_default_store()

    def put(self, i, payload):
        self.store.set(f"{self.prefix}/{i}", json.dumps(payload))

    def take(self, indices):
        got = {}
        for i in sorted(indices):
            name = f"{self.prefix}/{i}"
            if self.store.check([name]):
                got[i] = json.loads(self.store.get(name))
                self.store.delete_key(name)
        return got


class _Refused(RuntimeError):
    """Rank 0 refused the work (its own error names the reason); the other ranks stop too."""


def evaluate_split(score_fn, sde, dataset, *, data_range, batch_size, out, seed, key,
                   num_batches=None, repeats=1, device="cpu", progress=True, fresh=False,
                   log=print, dist=None, num_images=None, **kwargs):
    """Bits/dim of `dataset` (items (image [C, H, W] in [0, 1], label)): `repeats` passes in
    batches of `batch_size` over its first `num_images` images (default all; only the first
    `num_batches` batches over all passes, if given), each image of each pass recorded in `out`
    under `key` (module docstring); batches whose images are all in `out` with that key are
    skipped. `dist`: the `training.distributed.DistInfo` of
    a torchrun run (default one process); rank 0 alone locks the folder and writes, every rank
    computes its share; rank 0 returns the summary, the other ranks None. `data_range` is where the data scaler sends
    [0, 1]. Other keywords go to `bits_per_dim_details` (levels, method, dequantize, and the
    ODE's estimator, n_probes, rtol, atol or the bound's n_samples, importance_sampling; eps). A
    non-finite bits/dim is an error, never a record. Reused records are announced through `log`
    (rank 0), and so is the count computed by this run; rank 0's progress bar counts (image,
    repeat) values over all ranks, with an ETA. Returns the summary dict (`summarize`)."""
    from tqdm import tqdm
    info = dist if dist is not None else DistInfo()
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if len(dataset) == 0:
        raise ValueError("the dataset split is empty: no images to evaluate")
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be positive, got {num_batches}")
    if int(repeats) != repeats or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats}")
    if num_images is not None and (int(num_images) != num_images or num_images < 1):
        raise ValueError(f"num_images must be a positive integer, got {num_images}")
    n = len(dataset) if num_images is None else min(int(num_images), len(dataset))
    if n * int(repeats) > MAX_VALUES:
        raise ValueError(f"repeats = {repeats} over {n} images is {n * int(repeats):,} records, "
                         f"more than {MAX_VALUES:,} (each one an ODE solve): lower --repeats "
                         f"or --num-images")
    plan = plan_batches(n, int(batch_size), int(repeats), num_batches)
    folder = os.path.dirname(os.path.abspath(out))
    lock, records, payload = None, {}, None
    try:
        if info.is_main:
            try:
                lock = WorkdirLock(folder, what=f"bits/dim records {os.path.basename(out)}")
                lock.acquire()
                remove_stale_temps(folder)
                check_replaceable(out, fresh)
                records = {} if fresh else read_records(out, key)
                if fresh and os.path.exists(out):
                    write_jsonl(out, [])
                payload = ("ok", [b for b in plan if any(
                    (b[0], i) not in records for i in range(b[2], b[3]))],
                    f"score_sde_bpd/{uuid.uuid4().hex}")
            except Exception as e:
                _from_rank0(info, ("error", f"{type(e).__name__}: {e}"), "the bits/dim plan")
                raise
        payload = _from_rank0(info, payload, "the bits/dim plan")
        if payload[0] == "error":
            raise _Refused(f"rank 0 refused the bits/dim work: {payload[1]}")
        todo = payload[1]
        total = sum(b[3] - b[2] for b in plan)
        done = total - sum(b[3] - b[2] for b in todo)
        if done and info.is_main:
            log(f"bits/dim: reusing {len(plan) - len(todo)} batch(es) ({done} images) recorded "
                f"in {out} for the same checkpoint, config and settings")
        bar = tqdm(total=total, initial=done, disable=not (progress and info.is_main),
                   unit="image", desc="bits/dim", smoothing=0.3)
        W, handoff = info.world_size, _Handoff(info, payload[2])
        waiting = {i for i in range(len(todo)) if i % W} if info.is_main else set()
        computed, slowest = 0, 0.0

        def accept(results):  # rank 0: record what arrived, write the file, then raise errors
            nonlocal computed
            errors = []
            for i, (status, body) in sorted(results.items()):
                waiting.discard(i)
                if status != "ok":
                    errors.append(body)
                    continue
                for rec in body:
                    records.setdefault((rec["repeat"], rec["image"]), rec)
                computed += len(body)
                bar.update(len(body))
            if any(status == "ok" for status, _ in results.values()):
                write_jsonl(out, [records[k] for k in sorted(records)])
                bar.set_postfix(bpd=f"{summarize(records)['bpd']:.4f}")
            if errors:
                raise RuntimeError(f"bits/dim stopped: {'; '.join(errors)}")

        for i in range(info.rank, len(todo), W):
            t0 = time.monotonic()
            try:
                body = _batch_records(score_fn, sde, dataset, todo[i], data_range=data_range,
                                      seed=seed, key=key, device=device, kwargs=kwargs)
            except Exception as e:
                if info.is_main:
                    accept(handoff.take(waiting) if W > 1 else {})  # keep what others finished
                else:
                    handoff.put(i, ("error", f"rank {info.rank}: {type(e).__name__}: {e}"))
                raise
            slowest = max(slowest, time.monotonic() - t0)
            if not info.is_main:
                handoff.put(i, ("ok", body))
                continue
            results = handoff.take(waiting) if W > 1 else {}
            results[i] = ("ok", body)
            accept(results)
        since = time.monotonic()
        while waiting:  # rank 0: the other ranks' last batches
            results = handoff.take(waiting)
            if results:
                accept(results)
                since = time.monotonic()
            elif time.monotonic() - since > info.timeout + 2 * slowest:
                raise DistributedTimeoutError(
                    f"bits/dim: {len(waiting)} batch(es) of other ranks did not arrive within "
                    f"{info.timeout:g} s (the collective timeout) plus twice the longest batch "
                    f"here ({slowest:.0f} s): a rank stalled or died. The finished batches are "
                    f"recorded in {out}: rerun to finish")
            else:
                time.sleep(0.2)
        bar.close()
        if not info.is_main:
            return None
        if computed or not todo:
            log(f"bits/dim: computed {computed} images in {len(todo)} batch(es) on {W} "
                f"process(es)")
        wanted = {(b[0], i) for b in plan for i in range(b[2], b[3])}
        return summarize({k: v for k, v in records.items() if k in wanted})
    finally:
        if lock is not None:
            lock.release()
