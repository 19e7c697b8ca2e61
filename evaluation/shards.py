"""Seeded, sharded, resumable sample sets (`python -m sde_lib.run sample --seeds A-B`).

One image per seed, a function of its seed alone (`solvers.seeding.RowGenerators`). Seed s
belongs to shard k = s // shard_size, the file `seeds_<lo>-<hi>.npz` (lo = k shard_size,
hi = lo + shard_size - 1) holding `samples` (uint8 [N, H, W, C]) and `seeds` ([N], int64, sorted),
written whole or not at all (`sde_base.fileio`). `manifest.json` holds the provenance every shard
of the folder shares (checkpoint SHA-256, config, sampler and every option, image shape, shard
size, toolkit version) and a record of each run. A rerun computes only the seeds no shard holds
yet; a rerun whose provenance differs is refused naming the differences (`fresh=True` moves the
old manifest and shards aside into `previous-<time>/`, never deleting them).

Under torchrun the unfinished shards are dealt to the ranks in turn (shard i to rank
i mod world size); rank 0 checks the manifest and deals, and shows one progress bar over the
global count (the ranks add their counts to the process group's key-value store: no collective
while sampling, so ranks that take different times never wait on each other). A killed rank
loses at most the shard it was computing.
"""

import json
import os
import re
import time
from dataclasses import dataclass, field

import numpy as np

from sde_base.fileio import move_into_new_folder, numpy_file

MANIFEST = "manifest.json"
FORMAT = "score-sde-toolkit sample shards, version 1"
SHARD_RE = re.compile(r"seeds_(\d+)-(\d+)\.npz")
MAX_SEEDS = 10_000_000   # seeds in one request (a range list is checked before it is expanded)
MAX_SHARDS = 100_000     # shard files in one request (each is a file and a plan entry)
DONE_KEY = "score_sde_sample_done"


class ShardError(ValueError):
    """A seed list, a shard folder or a manifest that cannot be used as asked."""


# ----------------------------------------------------------------------------- seeds

def parse_seeds(text, limit=MAX_SEEDS):
    """Seeds from '0-49999', '3,7,10-19' (ranges inclusive): a sorted list of distinct ints in
    [0, 2**63); more than `limit` seeds, a reversed range or a repeated seed is an error."""
    parts, count = [], 0
    for item in str(text).replace(" ", "").split(","):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m:
            raise ShardError(f"--seeds: {item!r} is not a seed or a range A-B (e.g. 0-49999 or "
                             f"0,5,10-19)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ShardError(f"--seeds: range {item!r} ends before it starts")
        if hi >= 2 ** 63:
            raise ShardError(f"--seeds: {hi} is too large (seeds lie in [0, 2**63))")
        count += hi - lo + 1
        if count > limit:
            raise ShardError(f"--seeds {text!r} asks for more than {limit} seeds; split the work "
                             f"into several requests on the same folder")
        parts.append((lo, hi))
    if not parts:
        raise ShardError("--seeds is empty; give seeds like 0-49999 or 0,5,10-19")
    seeds = sorted(s for lo, hi in parts for s in range(lo, hi + 1))
    repeated = [a for a, b in zip(seeds, seeds[1:]) if a == b]
    if repeated:
        raise ShardError(f"--seeds repeats seed {repeated[0]}")
    return seeds


# ----------------------------------------------------------------------------- shards

@dataclass
class Shard:
    """The requested seeds of one shard, and those of them no file holds yet (`todo`)."""
    lo: int
    hi: int
    seeds: list
    todo: list = field(default_factory=list)

    @property
    def name(self):
        return f"seeds_{self.lo:06d}-{self.hi:06d}.npz"


def read_shard(path):
    """(samples uint8 [N, H, W, C], seeds int64 [N]) of a shard file; an unreadable or
    inconsistent file is a ShardError naming it."""
    try:
        with numpy_file(path) as z:
            samples, seeds = z["samples"], z["seeds"]
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise ShardError(f"shard {path} is unreadable ({type(e).__name__}: {e}); move it aside "
                         f"(or rerun with --fresh, which moves the whole set aside)") from None
    if samples.dtype != np.uint8 or samples.ndim != 4 or seeds.shape != (len(samples),):
        raise ShardError(f"shard {path} does not hold uint8 samples [N, H, W, C] with one seed "
                         f"each (samples {samples.dtype} {samples.shape}, seeds {seeds.shape})")
    return samples, seeds.astype(np.int64)


def check_shard_count(seeds, shard_size, limit=MAX_SHARDS):
    """The number of shard files `seeds` (sorted) fill at `shard_size` seeds each; more than
    `limit` is a ShardError, raised before anything is planned or allocated."""
    count, last, shard_size = 0, None, int(shard_size)
    for s in seeds:
        if s // shard_size != last:
            count, last = count + 1, s // shard_size
            if count > limit:
                raise ShardError(f"{len(seeds)} seeds with --shard-size {shard_size} make more "
                                 f"than {limit} shard files: use a larger --shard-size")
    return count


def plan_shards(seeds, shard_size, folder):
    """The shards of `seeds` (sorted) in `folder`, each with the seeds its file lacks."""
    shard_size = int(shard_size)
    groups = {}
    for s in seeds:
        groups.setdefault(s // shard_size, []).append(s)
    shards = []
    for k, members in sorted(groups.items()):
        shard = Shard(k * shard_size, (k + 1) * shard_size - 1, members)
        path = os.path.join(folder, shard.name)
        have = set(read_shard(path)[1].tolist()) if os.path.exists(path) else set()
        shard.todo = [s for s in members if s not in have]
        shards.append(shard)
    return shards


def write_shard(folder, shard, samples, seeds):
    """Merge the new samples with those the shard file already holds and write the file
    atomically, rows sorted by seed. Returns its path."""
    from training.images import save_npz
    path = os.path.join(folder, shard.name)
    if os.path.exists(path):
        old_samples, old_seeds = read_shard(path)
        samples = np.concatenate([old_samples, samples])
        seeds = np.concatenate([old_seeds, seeds])
    order = np.argsort(seeds, kind="stable")
    return save_npz(path, samples=np.ascontiguousarray(samples[order]),
                    seeds=np.asarray(seeds, dtype=np.int64)[order])


def read_shards(folder, seeds=None):
    """(samples uint8 [N, H, W, C], seeds [N]) of every shard of `folder` (in seed order), or
    of the `seeds` listed (each must be present)."""
    names = sorted((n for n in os.listdir(folder) if SHARD_RE.fullmatch(n)),
                   key=lambda n: int(SHARD_RE.fullmatch(n).group(1)))
    if not names:
        raise ShardError(f"no shard files (seeds_<lo>-<hi>.npz) in {folder}")
    parts = [read_shard(os.path.join(folder, n)) for n in names]
    samples = np.concatenate([p[0] for p in parts])
    all_seeds = np.concatenate([p[1] for p in parts])
    if seeds is None:
        return samples, all_seeds
    index = {s: i for i, s in enumerate(all_seeds.tolist())}
    missing = [s for s in seeds if s not in index]
    if missing:
        raise ShardError(f"{len(missing)} requested seeds are in no shard of {folder} (first: "
                         f"{missing[:5]}); sample them first")
    rows = [index[s] for s in seeds]
    return samples[rows], all_seeds[rows]


# ----------------------------------------------------------------------------- provenance

def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _short(v, limit=60):
    text = json.dumps(v, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def provenance_differences(old, new):
    """The fields where two provenance dicts differ, as 'field: old -> new' lines."""
    a, b = _flatten(json.loads(json.dumps(old, default=str))), \
        _flatten(json.loads(json.dumps(new, default=str)))
    return [f"{k}: {_short(a.get(k, '(absent)'))} -> {_short(b.get(k, '(absent)'))}"
            for k in sorted(set(a) | set(b)) if a.get(k, "(absent)") != b.get(k, "(absent)")]


def read_manifest(folder):
    from sde_base.fileio import read_json
    path = os.path.join(folder, MANIFEST)
    try:
        return read_json(path, FORMAT, "a manifest of sample shards")
    except ValueError as e:
        raise ShardError(f"{e}; move it aside, use another folder or rerun with --fresh") \
            from None


def move_aside(folder):
    """Move the manifest and the shard files of `folder` into a new `previous-<UTC time>/`
    sub-folder (nothing is deleted). Returns that folder, or None when there was nothing."""
    names = [n for n in os.listdir(folder) if n == MANIFEST or SHARD_RE.fullmatch(n)]
    return move_into_new_folder(folder, sorted(names, key=lambda n: n == MANIFEST),  # manifest last
                                "previous", stamp_format="%Y%m%d-%H%M%S")

def prepare_folder(folder, provenance, seeds, shard_size, *, fresh=False):
    """Rank 0's checks before any sampling: the manifest's provenance must equal `provenance`
    (else a ShardError naming each difference, unless `fresh`, which moves the old set aside);
    dead writers' temporary files are removed; the manifest is (re)written. Returns
    (shards still to compute, all shards of the request, the folder the old set went to)."""
    from sde_base.fileio import remove_stale_temps, write_json
    remove_stale_temps(folder)
    moved = move_aside(folder) if fresh else None
    manifest = read_manifest(folder)
    if manifest is not None:
        diffs = provenance_differences(manifest["provenance"], provenance)
        if diffs:
            raise ShardError(f"{folder} holds samples made otherwise; differences (manifest -> "
                             f"this run): {'; '.join(diffs)}. Use another --out, or --fresh to "
                             f"move the old samples aside")
    shards = plan_shards(seeds, shard_size, folder)
    runs = (manifest or {}).get("runs", [])
    runs.append({"time": time.time(), "seeds": _seed_text(seeds),
                 "todo": sum(len(s.todo) for s in shards)})
    write_json(os.path.join(folder, MANIFEST), {"format": FORMAT, "provenance": provenance,
                                                "runs": runs}, default=str)
    return [s for s in shards if s.todo], shards, moved


def _seed_text(seeds):
    """Sorted seeds as compact ranges: '0-9,12'."""
    out, start = [], None
    for i, s in enumerate(seeds):
        if start is None:
            start = s
        if i + 1 == len(seeds) or seeds[i + 1] != s + 1:
            out.append(f"{start}" if start == s else f"{start}-{s}")
            start = None
    return ",".join(out)


# ----------------------------------------------------------------------------- the run

class GlobalCount:
    """Images finished by all ranks: an atomic counter in the process group's key-value store
    (no collective), or a plain count in a one-process run."""

    def __init__(self, info):
        self.store, self.local = None, 0
        if info.distributed:
            import torch.distributed as dist
            self.store = dist.distributed_c10d._get_default_store()

    def add(self, n):
        self.local += n
        if self.store is not None:
            return int(self.store.add(DONE_KEY, int(n)))
        return self.local

    def value(self):
        return self.add(0) if self.store is not None else self.local


def run_shards(make_images, folder, shards, info, *, batch, progress=False, stall_timeout=None):
    """Compute this rank's share of `shards` (shard i goes to rank i mod world size), batch by
    batch (`make_images(seeds) -> (uint8 [n, H, W, C], score evaluations)`), writing each shard
    when it is whole. Rank 0 shows a bar over the global count and waits (polling, with no
    collective) until every rank's images are done or the count stalls for `stall_timeout`
    seconds. Returns dict(images, evaluations, shards, global_done) of this rank."""
    from solvers.progress import progress_bar
    mine = shards[info.rank::info.world_size]
    total = sum(len(s.todo) for s in shards)
    count = GlobalCount(info)
    bar = progress_bar(total, progress and info.is_main, desc="samples")
    done_here = evaluations = 0
    shown = [0]

    def show():
        if info.is_main:
            now = count.value()
            bar.update(max(0, now - shown[0]))
            shown[0] = max(shown[0], now)

    for shard in mine:
        parts, seeds = [], []
        for i in range(0, len(shard.todo), batch):
            chunk = shard.todo[i:i + batch]
            images, nfe = make_images(chunk)
            parts.append(images)
            seeds.extend(chunk)
            evaluations += int(nfe)
            done_here += len(chunk)
            count.add(len(chunk))
            show()
        write_shard(folder, shard, np.concatenate(parts), np.asarray(seeds, dtype=np.int64))
    global_done = count.value()
    if info.is_main and info.distributed:
        last, since = global_done, time.monotonic()
        while global_done < total and time.monotonic() - since < (stall_timeout or info.timeout):
            time.sleep(0.2)
            global_done = count.value()
            show()
            if global_done != last:
                last, since = global_done, time.monotonic()
    bar.close()
    return {"images": done_here, "evaluations": evaluations, "shards": len(mine),
            "global_done": global_done, "total": total}
