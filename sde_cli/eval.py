"""``python -m sde_lib.run eval``: the original's evaluation sweep (`run_lib.evaluate`) over the
checkpoints checkpoint_k.pth of a workdir with --begin <= k <= --end (default
config.eval.begin_ckpt / end_ckpt), or one --checkpoint file. For each, as config.eval enables
(or --stages picks):

  loss  the training loss of the EMA weights over the test split (mean over batches, as the
        original; each batch's noise from its own seeded generator);
  bpd   bits/dim of config.eval.bpd_dataset (`sde_cli.likelihood.bits_per_dim`: resumable
        records of its own);
  fid   FID (with KID, precision and recall) of seeded samples, one image per seed 0..n-1 (the
        machinery of `sample --seeds`: sharded, resumable), against reference statistics of the
        training split computed once and kept with their provenance (`evaluation.reference`;
        the extractor by name from its registry: digits for the built-in models, inception for
        real data).

Each result is a record in <workdir>/<eval-folder>/records/ keyed by the checkpoint's bytes, the
config and every setting that changes the number (`evaluation.sweep`): a rerun reuses it and
says so, and never reuses a record of other work. Under torchrun every rank takes part in the
loss, bits/dim, sampling and feature extraction; rank 0 writes the records, the table and
<eval-folder>/sweep.json.

The sampler's last time (--sample-eps) and the likelihood ODE's start time (--likelihood-eps)
are different settings (1e-3 and 1e-5 for VP by default) and have separate flags."""

import os
import time
from types import SimpleNamespace

import torch

from sde_cli.app import command
from sde_cli.configuration import config_for_checkpoint, default_workdir, load_model
from sde_cli.errors import CLIError
from sde_cli.flags import add_run_flags, add_sampler_flags, flag, positive_int
from sde_cli.folders import workdir_lock
from sde_cli.likelihood import add_likelihood_flags, bits_per_dim
from sde_cli.machine import choose_threads, resolve_device
from sde_cli.outputs import check_held_memory, check_name

# The config.eval switch of each stage (the original's names).
STAGE_SWITCH = {"loss": "enable_loss", "bpd": "enable_bpd", "fid": "enable_sampling"}
# The bits/dim flags that do not change the number (so are not in its record's key).
BPD_FLAGS_NOT_IN_KEY = ("fresh", "records")
SUMMARY = "sweep.json"


# ----------------------------------------------------------------------------- what to evaluate

def eval_workdir(args):
    """--workdir; else the workdir a --checkpoint lies in (<W>/checkpoints/ or
    <W>/checkpoints-meta/); else runs/<config name>."""
    from training.checkpoints import META_DIR, PERIODIC_DIR
    if args.workdir or not args.checkpoint:
        return default_workdir(args)
    parent = os.path.dirname(os.path.abspath(args.checkpoint))
    if os.path.basename(parent) in (PERIODIC_DIR, META_DIR):
        return os.path.dirname(parent)
    return default_workdir(args)


def _readable(path):
    """The identity {'step', 'sha256'} of a checkpoint, or a CLIError naming it."""
    from networks import CheckpointError
    from training.checkpoints import checkpoint_identity
    try:
        return checkpoint_identity(path)
    except (CheckpointError, OSError, ValueError, RuntimeError) as e:
        raise CLIError(f"checkpoint {path} cannot be read ({e}); nothing was evaluated") from None


def eval_checkpoints(args):
    """([(name, path, identity)], config of the first): --checkpoint, else the workdir's
    checkpoint_k.pth with --begin <= k <= --end (default config.eval.begin_ckpt / end_ckpt of
    --config, or of the latest checkpoint). Every file is read (its identity) before anything
    is written."""
    from training.checkpoints import latest_checkpoint, periodic_checkpoints
    if args.checkpoint:
        for name in ("begin", "end"):
            if getattr(args, name) is not None:
                raise CLIError(f"--{name} selects checkpoint_k.pth of a workdir; it does not go "
                               f"with --checkpoint")
        if not os.path.isfile(args.checkpoint):
            raise CLIError(f"checkpoint {args.checkpoint!r} does not exist")
        identity = _readable(args.checkpoint)
        config = config_for_checkpoint(args, args.checkpoint)
        name = os.path.basename(args.checkpoint).rsplit(".", 1)[0]
        return [(name, args.checkpoint, identity)], config
    workdir = default_workdir(args)
    found = periodic_checkpoints(workdir)
    if not found:
        raise CLIError(f"no checkpoints/checkpoint_k.pth in {workdir}; train first or pass "
                       f"--checkpoint")
    config = config_for_checkpoint(args, latest_checkpoint(workdir) or found[max(found)])
    lo = args.begin if args.begin is not None else int(config.eval.get("begin_ckpt", 1))
    hi = args.end if args.end is not None else int(config.eval.get("end_ckpt", 10 ** 9))
    if lo > hi:
        raise CLIError(f"--begin {lo} is after --end {hi}")
    chosen = [(f"ckpt_{k}", p) for k, p in found.items() if lo <= k <= hi]
    if not chosen:
        raise CLIError(f"no checkpoint_k.pth with {lo} <= k <= {hi} in {workdir}/checkpoints "
                       f"(found {sorted(found)}); set --begin/--end or pass --checkpoint")
    return [(name, path, _readable(path)) for name, path in chosen], config


def chosen_stages(args, config):
    """--stages (comma-separated), else the stages config.eval enables."""
    from evaluation.sweep import STAGES
    if args.stages is None:
        return [s for s in STAGES if config.eval.get(STAGE_SWITCH[s], s == "loss")]
    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in names if s not in STAGES]
    if bad or not names:
        raise CLIError(f"--stages {args.stages!r}: give some of {', '.join(STAGES)}, "
                       f"comma-separated")
    return [s for s in STAGES if s in names]


def default_extractor(config):
    """The FID feature extractor's name: the offline digits classifier for the built-in models'
    data (DIGITS, MNIST), Inception-v3 for real data."""
    return "digits" if str(config.data.dataset).upper() in ("DIGITS", "MNIST") else "inception"


def make_extractor(args, config, device):
    """The FID feature extractor on `device`, by name from `evaluation.reference`'s registry."""
    from evaluation.reference import EXTRACTORS, get_extractor
    name = args.extractor or default_extractor(config)
    if name not in EXTRACTORS:
        raise CLIError(f"FID of {config.data.dataset} needs the feature extractor {name!r}, "
                       f"which is not available (registered: {', '.join(sorted(EXTRACTORS))}); "
                       f"give --extractor, or leave fid out (--stages loss,bpd)")
    try:
        return get_extractor(name, weights=args.inception_weights, device=device)
    except (OSError, ValueError, RuntimeError, ImportError) as e:
        raise CLIError(f"the feature extractor {name!r} cannot be loaded: {e}") from None


# ----------------------------------------------------------------------------- ranks

def from_main(info, compute, what):
    """compute() on rank 0, and its value (or its error, raised as a CLIError) on every rank."""
    from evaluation.sweep import RecordError
    payload = None
    if info.is_main:
        try:
            payload = ("ok", compute())
        except (CLIError, RecordError, OSError) as e:
            payload = ("error", str(e))
    if info.distributed:
        import torch.distributed as dist
        from training.distributed import collective
        box = [payload]
        with collective(info, what):
            dist.broadcast_object_list(box, src=0)
        payload = box[0]
    if payload[0] == "error":
        raise CLIError(payload[1])
    return payload[1]


# ----------------------------------------------------------------------------- the stages

@torch.no_grad()
def dataset_loss(model, loss_fn, config, dataset, *, batch_size, seed, device, limit=None,
                 info=None):
    """Per-batch losses of `model` over a dataset split. Batch b's augmentation and noise come
    from its own generator, seeded by (seed, b), so the losses do not depend on which batches
    ran before nor on the process that ran them: under torchrun (`info`) rank r takes the
    batches b = r mod world size and every rank gets all losses, in order."""
    from training.pipeline import augment, get_images, mix_seed
    n = len(dataset) if limit is None else min(limit, len(dataset))
    starts = list(range(0, n, batch_size))
    world, rank = (info.world_size, info.rank) if info is not None else (1, 0)
    mine = {}
    model.eval()
    for b in range(rank, len(starts), world):
        g = torch.Generator(device=device).manual_seed(mix_seed(seed, b))
        idx = torch.arange(starts[b], min(starts[b] + batch_size, n))
        x, _ = get_images(dataset, idx)
        x = augment(x.to(device), config, generator=g)
        noise = loss_fn.draw(x.shape, generator=g, device=device, dtype=x.dtype)
        mine[b] = loss_fn(model, x, noise).item()
    if world > 1:
        import torch.distributed as dist
        from training.distributed import collective
        parts = [None] * world
        with collective(info, "the loss gather"):
            dist.all_gather_object(parts, mine)
        mine = {b: v for part in parts for b, v in part.items()}
    return [mine[b] for b in range(len(starts))]


def loss_settings(args, config):
    return {"split": "test", "batch_size": int(config.eval.batch_size), "seed": int(config.seed),
            "num_images": args.num_images}


def loss_stage(ctx, model, config, sde):
    import math
    from training.data import load_dataset
    from training.losses import get_loss_fn
    ds = load_dataset(config, "test", data_dir=ctx.args.data_dir)
    losses = dataset_loss(model, get_loss_fn(config, sde), config, ds,
                          batch_size=int(config.eval.batch_size), seed=config.seed,
                          device=ctx.device, limit=ctx.args.num_images, info=ctx.info)
    if not all(math.isfinite(v) for v in losses):
        raise FloatingPointError(f"the test loss is not finite ({losses}): not recorded")
    return {"loss": sum(losses) / len(losses), "all_losses": losses,
            "num_images": min(len(ds), ctx.args.num_images or len(ds))}


def bpd_split(config):
    return str(config.eval.get("bpd_dataset", "test")).lower()


def bpd_settings(args, config):
    """The split and every bits/dim flag that changes the number (the flags' group as
    `add_likelihood_flags` declares it, so a new flag is keyed without a change here)."""
    from sde_cli.flags import new_parser
    parser = new_parser("bpd", "")
    add_likelihood_flags(parser)
    dests = sorted({a.dest for a in parser._actions if a.option_strings and a.dest != "help"}
                   - set(BPD_FLAGS_NOT_IN_KEY))
    return {"split": bpd_split(config), "batch_size": int(args.batch or config.eval.batch_size),
            "seed": int(config.seed), "flags": {d: getattr(args, d, None) for d in dests}}


def bpd_stage(ctx, model, config, sde, path):
    """`sde_cli.likelihood.bits_per_dim` into the eval folder (its records resume a killed
    run); under torchrun its summary reaches rank 0 only (None elsewhere)."""
    res = bits_per_dim(model, sde, config, ctx.args, ctx.device, bpd_split(config), ctx.eval_dir,
                       path, dist=ctx.info)
    return None if res is None else dict(res, records=os.path.abspath(res["records"]))


def fid_plan(ctx, config, sde, path):
    """The sampling of the fid stage, before any model is loaded: (settings of its key, what
    `fid_stage` needs)."""
    from evaluation.bits_per_dim import run_key
    from evaluation.sweep import NOT_IN_KEY
    from sde_cli.seeds import DEFAULT_SHARD_SIZE, sample_provenance, seeded_options
    overrides, used, batch_note = seeded_options(ctx.args, config, sde)
    shard_size = ctx.args.shard_size or DEFAULT_SHARD_SIZE
    batch = min(ctx.args.sample_batch or int(config.eval.batch_size), shard_size)
    provenance = sample_provenance(path, config, used, batch_note, batch, shard_size,
                                   drop=NOT_IN_KEY["fid"])
    what = {k: v for k, v in provenance.items() if k != "toolkit"}
    folder = os.path.join(ctx.eval_dir, f"samples_{run_key(**what)}")
    settings = {k: v for k, v in what.items() if k not in ("checkpoint", "config", "shard_size")}
    settings.update(seeds=f"0-{ctx.num_samples - 1}", reference=ctx.reference)
    return settings, SimpleNamespace(overrides=overrides, provenance=provenance, folder=folder,
                                     batch=batch, used=used, shard_size=shard_size)


def fid_stage(ctx, model, config, sde, plan):
    from evaluation.reference import score_samples
    from sde_cli.seeds import sample_seed_set
    from training.distributed import barrier
    holder = SimpleNamespace(lock=None)
    try:
        sampled = sample_seed_set(model, sde, config, plan.overrides, plan.folder,
                                  list(range(ctx.num_samples)), plan.provenance, ctx.info,
                                  batch=plan.batch, shard_size=plan.shard_size,
                                  fresh=ctx.args.fresh, progress=ctx.args.progress,
                                  lock_holder=holder)
        barrier(ctx.info)  # every rank's shards are written
    finally:
        if holder.lock is not None:
            holder.lock.release()
    if ctx.info.is_main and sampled["global_done"] < sampled["total"]:
        raise CLIError(f"{sampled['total'] - sampled['global_done']} samples of other ranks are "
                       f"missing in {plan.folder}: rerun to finish them")
    scores = score_samples(plan.folder, ctx.statistics(), ctx.extractor, info=ctx.info)
    return dict(scores, samples=os.path.abspath(plan.folder), stats=ctx.stats_path,
                sampler=plan.used, score_evaluations_here=sampled["evaluations"])


# ----------------------------------------------------------------------------- reference

def reference_images(config, args):
    """uint8 [N, C, H, W] of the training split: the images FID compares samples with."""
    from evaluation.reference import as_uint8_nchw
    from training.data import load_dataset
    ds = load_dataset(config, "train", data_dir=args.data_dir)
    return as_uint8_nchw(ds.images)


class Reference:
    """The reference statistics of the fid stage: their identity (extractor and the training
    images' checksum: part of every fid key) at once, the statistics themselves when first
    needed, read from --stats (default <eval-folder>/reference_<dataset>_train_<extractor>.npz)
    when that file was made from the same images by the same extractor, else computed (over
    every rank) and saved there."""

    def __init__(self, ctx, config):
        from evaluation.reference import data_checksum
        self.ctx = ctx
        self.images = reference_images(config, ctx.args)
        self.identity = dict(ctx.extractor.identity(), dataset=str(config.data.dataset),
                             split="train", data_sha256=data_checksum(self.images),
                             count=len(self.images))
        self.path = os.path.abspath(ctx.args.stats or os.path.join(
            ctx.eval_dir, f"reference_{str(config.data.dataset).lower()}_train_"
                          f"{ctx.extractor.name}.npz"))
        self.stats = None

    def _check(self):
        """On rank 0: whether --stats holds these statistics (False: absent)."""
        from evaluation.reference import load_statistics
        if not os.path.exists(self.path):
            return False
        try:
            theirs = load_statistics(self.path)["provenance"]
        except ValueError as e:
            raise CLIError(str(e)) from None
        diffs = [f"{k}: {theirs.get(k)!r} -> {v!r}" for k, v in self.identity.items()
                 if k not in ("dataset", "split") and theirs.get(k) != v]
        if diffs:
            raise CLIError(f"{self.path} holds reference statistics of other images or another "
                           f"extractor ({'; '.join(diffs)}); give another --stats")
        return True

    def __call__(self):
        from evaluation.reference import load_statistics, reference_statistics, save_statistics
        if self.stats is not None:
            return self.stats
        ctx = self.ctx
        if from_main(ctx.info, self._check, "the reference statistics check"):
            self.stats = load_statistics(self.path)
            ctx.say(f"reference statistics reused: {self.path}")
            return self.stats
        self.stats = reference_statistics(self.images, ctx.extractor, info=ctx.info,
                                          source=f"{self.identity['dataset']}/train")
        if ctx.info.is_main:
            folder = os.path.dirname(self.path)
            lock = None if folder == os.path.abspath(ctx.eval_dir) else workdir_lock(
                folder, what="sde_lib.run eval (reference statistics)")
            try:
                save_statistics(self.path, self.stats)
            finally:
                if lock is not None:
                    lock.release()
            ctx.say(f"reference statistics of {self.identity['count']} training images "
                    f"({ctx.extractor.name}): {self.path}")
        return self.stats


# ----------------------------------------------------------------------------- the sweep

def add_arguments(parser):
    from evaluation.inception import WEIGHTS_ENV, WEIGHTS_FILE
    from evaluation.reference import EXTRACTORS
    from evaluation.sweep import STAGES
    add_run_flags(parser)
    add_sampler_flags(parser, n_default=None, eps_alias=False)
    add_likelihood_flags(parser, fresh_help="recompute every stage of every checkpoint instead "
                         "of reusing its records (bits/dim records of other work are replaced)")
    g = parser.add_argument_group("the sweep")
    flag(g, "checkpoint", help="evaluate this file only (default: the workdir's "
         "checkpoint_k.pth with --begin <= k <= --end)")
    flag(g, "begin", type=positive_int, help="first checkpoint number k of checkpoint_k.pth "
         "(default config.eval.begin_ckpt)")
    flag(g, "end", type=positive_int, help="last checkpoint number (default "
         "config.eval.end_ckpt)")
    flag(g, "stages", help=f"comma-separated stages among {', '.join(STAGES)} (default: those "
         f"config.eval enables: enable_loss, enable_bpd, enable_sampling)")
    flag(g, "shard-size", type=positive_int, help="fid: seeds per shard file of the samples "
         "(default 1000); a killed run loses at most its unfinished shards")
    flag(g, "eval-folder", default="eval", help="name of the reports folder inside the workdir "
         "(a plain name)")
    flag(g, "extractor", choices=sorted(EXTRACTORS), help="FID feature extractor (default "
         "digits, the offline digits classifier, for DIGITS and MNIST; inception, the FID "
         "Inception-v3, otherwise)")
    flag(g, "inception-weights", metavar="PATH", help=f"--extractor inception: the weights "
         f"file {WEIGHTS_FILE} (default ${WEIGHTS_ENV}, else torch hub's cache)")
    flag(g, "stats", help="reference statistics file of the training split (.npz; default "
         "<eval-folder>/reference_<dataset>_train_<extractor>.npz): computed once, then reused "
         "while it is of the same images and extractor")
    # --repeats: default config.eval.bpd_num_repeats (else 1); --records: one file per record
    parser.set_defaults(records=None, repeats=None)


class Sweep(SimpleNamespace):
    """What every stage of the sweep shares: args, info (ranks), device, eval_dir, ..."""

    def say(self, text):
        if self.info.is_main:
            print(text, flush=True)


def _plan_checkpoint(ctx, name, path, identity, config, sde):
    """({stage: key}, {stage: record reused}, fid plan) of one checkpoint (rank 0 reads the
    records; every rank gets its reading)."""
    from evaluation.sweep import read_record, stage_key
    settings, fid = {}, None
    if "loss" in ctx.stages:
        settings["loss"] = loss_settings(ctx.args, config)
    if "bpd" in ctx.stages:
        settings["bpd"] = bpd_settings(ctx.args, config)
    if "fid" in ctx.stages:
        settings["fid"], fid = fid_plan(ctx, config, sde, path)
    keys = {s: stage_key(s, identity, config, v) for s, v in settings.items()}
    if ctx.args.fresh:
        return keys, settings, {}, fid
    reused = from_main(ctx.info, lambda: {s: r for s, k in keys.items()
                                          if (r := read_record(ctx.eval_dir, s, k)) is not None},
                       f"the records of {name}")
    return keys, settings, reused, fid


def _row(name, path, identity, results, reused, paths):
    loss, bpd, fid = results.get("loss", {}), results.get("bpd", {}), results.get("fid", {})
    return {"name": name, "checkpoint": os.path.abspath(path), "step": identity["step"],
            "sha256": identity["sha256"], "loss": loss.get("loss"), "bpd": bpd.get("bpd"),
            "bpd_stderr": bpd.get("bpd_stderr"), "fid": fid.get("fid"),
            "reused": [s for s in results if s in reused], "records": paths,
            "results": results}


def evaluate_checkpoint(ctx, name, path, identity, config):
    """Run the stages of one checkpoint whose record is missing; rank 0 writes their records.
    Returns the checkpoint's row of the summary."""
    from evaluation.sweep import record_path, write_record
    from sde_lib import get_sde
    sde = get_sde(config)
    keys, settings, reused, fid = _plan_checkpoint(ctx, name, path, identity, config, sde)
    label = f"{name} (step {identity['step']})"
    if reused:
        ctx.say(f"{label}: reusing {', '.join(reused)} recorded for the same checkpoint bytes "
                f"and settings ({os.path.join(ctx.eval_dir, 'records')})")
    results = {s: r["result"] for s, r in reused.items()}
    todo = [s for s in keys if s not in reused]
    if todo:
        model = load_model(path, config, ctx.device)
        for stage in todo:
            t0 = time.time()
            if stage == "loss":
                result = loss_stage(ctx, model, config, sde)
            elif stage == "bpd":
                result = bpd_stage(ctx, model, config, sde, path)
            else:
                result = fid_stage(ctx, model, config, sde, fid)
            results[stage] = result = dict(result or {}, seconds=time.time() - t0)
            if ctx.info.is_main:  # the one writer of the eval folder
                provenance = {"checkpoint": identity, "path": os.path.abspath(path),
                              "name": name, "settings": settings[stage]}
                write_record(ctx.eval_dir, stage, keys[stage], provenance, result)
                ctx.say(f"{label}: {stage} {_short(stage, result)} ({result['seconds']:.1f}s)")
        del model
    paths = {s: record_path(ctx.eval_dir, s, k) for s, k in keys.items()}
    return _row(name, path, identity, {s: results[s] for s in keys}, reused, paths)


def _short(stage, result):
    if stage == "loss":
        return f"{result['loss']:.5f} over {result['num_images']} test images"
    if stage == "bpd":
        return (f"{result['bpd']:.4f} +- {result['bpd_stderr']:.4f} bits/dim on "
                f"{result['num_images']} images")
    return f"FID {result['fid']:.3f} of {result['num_samples']} samples"


def _lock(args, eval_dir):
    """Rank 0 holds the eval folder's lock (released when the command ends)."""
    args.lock = workdir_lock(eval_dir, what="sde_lib.run eval")
    return True


@command("eval", "The original's evaluation sweep over a range of checkpoints: test loss (EMA "
         "weights), bits/dim and FID as config.eval enables (or --stages picks), each a record "
         "in <workdir>/<eval-folder>/records/ reused only for the same checkpoint bytes and "
         "settings; ends with a table and <eval-folder>/sweep.json (also under torchrun).",
         add_arguments)
def run(args):
    from evaluation.sweep import format_table
    from sde_base.fileio import write_json
    from training.distributed import cleanup_distributed, init_distributed
    folder_name = check_name(args.eval_folder, "--eval-folder",
                             "the reports folder lies inside the workdir")
    checkpoints, config = eval_checkpoints(args)       # every file read before any write
    stages = chosen_stages(args, config)
    if args.repeats is None:
        args.repeats = int(config.eval.get("bpd_num_repeats", 1))
    num_samples = int(args.num_samples or config.eval.num_samples)
    if "fid" in stages:
        C, H = int(config.data.num_channels), int(config.data.image_size)
        batch = args.sample_batch or int(config.eval.batch_size)
        check_held_memory(num_samples * H * H * C * 2 + batch * C * H * H * 4 * 12,
                          f"-n {num_samples} with --sample-batch {batch}",
                          "use a smaller -n or --sample-batch")  # all samples are scored at once
    eval_dir = os.path.join(eval_workdir(args), folder_name)
    device = resolve_device(args, config)
    info = init_distributed(device="cuda" if device.type == "cuda" else str(device))
    try:
        choose_threads(args, config, info.device)           # one rule, one line
        extractor = make_extractor(args, config, info.device) if "fid" in stages else None
        ctx = Sweep(args=args, info=info, device=info.device, eval_dir=eval_dir, stages=stages,
                    num_samples=num_samples, extractor=extractor)
        from_main(info, lambda: _lock(args, eval_dir), "the eval folder's lock")
        if extractor is not None:
            ctx.statistics = Reference(ctx, config)
            ctx.reference, ctx.stats_path = ctx.statistics.identity, ctx.statistics.path
        rows = []
        for name, path, identity in checkpoints:
            cfg = config if args.checkpoint else config_for_checkpoint(args, path)
            rows.append(evaluate_checkpoint(ctx, name, path, identity, cfg))
        if info.is_main:
            print(format_table(rows))
            summary = write_json(os.path.join(eval_dir, SUMMARY), {
                "workdir": os.path.abspath(os.path.dirname(eval_dir)), "stages": stages,
                "checkpoints": rows}, default=str)
            print(f"summary: {os.path.abspath(summary)}")
    finally:
        cleanup_distributed()
    return 0
