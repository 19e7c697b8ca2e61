"""``python -m sde_lib.run sample --seeds A-B`` (also under ``torchrun``): one image per seed, a
function of its seed alone, written in resumable shards with a manifest of provenance
(`evaluation.shards`)."""

import json
import os
import time

import numpy as np

from sde_cli.errors import CLIError
from sde_cli.flags import check_sampling, flag, positive_int, sampler_overrides
from sde_cli.folders import check_writable, workdir_lock
from sde_cli.machine import environment
from sde_cli.outputs import check_held_memory

DEFAULT_SHARD_SIZE = 1000
DEFAULT_BATCH = 64


def toolkit_version():
    """The project's version (pyproject.toml next to the packages, else the installed one)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "pyproject.toml")
    try:
        import tomllib
        with open(path, "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (ImportError, OSError, KeyError, ValueError):
        pass
    try:
        from importlib.metadata import version
        return version("score-sde-toolkit")
    except Exception:  # not installed: say so rather than guess
        return "unknown"


def seeded_options(args, config, sde):
    """The sampling options under --seeds: the Langevin corrector takes the per-sample norm
    rule; an option that still couples the rows is refused. Returns (overrides, used options,
    the batch coupling note or None)."""
    from solvers.seeding import row_coupling, step_coupling
    from training.sampling import sampling_options
    overrides = sampler_overrides(args)
    opts = check_sampling(sampling_options(config, **overrides))
    if opts["sampler"] == "pc" and opts.get("corrector") == "langevin":
        overrides["corrector_options"] = {"norm": "sample"}
        opts = sampling_options(config, **overrides)
    used = recorded_options(opts, sde)
    coupled = row_coupling(used["sampler"], used)
    if coupled:
        raise CLIError(f"--seeds makes each image a function of its seed, but {coupled}")
    return overrides, used, step_coupling(used["sampler"])


def recorded_options(opts, sde):
    """Every option a run with `opts` (`sampling_options`) uses, defaults included, as
    `solvers.sample` records them (info['options']), before any sampling."""
    import solvers
    spec = solvers.get_sampler(opts["sampler"])
    eps = sde.sampling_eps if opts.get("eps") is None else float(opts["eps"])
    given = {k: v for k, v in opts.items() if k not in ("sampler", "eps", "denoise")}
    return {"sampler": spec.name, "eps": eps, "denoise": bool(opts.get("denoise", True)),
            **spec.record(spec.resolve(sde, given))}


def default_folder(args, source, used, output_folder):
    """--out, else <workdir>/samples/seeds_<sampler>[_<steps>steps] (under `output_folder`'s
    samples folder): one folder per sampler setting."""
    if args.out:
        return check_writable(args.out, args)
    name = "seeds_" + str(used["sampler"]).replace("+", "p") + (
        f"_{used['steps']}steps" if used.get("steps") else "")
    return check_writable(os.path.join(output_folder(args, source, "samples"), name), args)


def run(args, load_score_model, output_folder):
    """The --seeds path of `sample`, with its model loader and folder rule."""
    from evaluation.shards import ShardError, check_shard_count, parse_seeds
    from training.distributed import cleanup_distributed, init_distributed
    shard_size = args.shard_size or DEFAULT_SHARD_SIZE
    try:
        seeds = parse_seeds(args.seeds)
        check_shard_count(seeds, shard_size)
    except ShardError as e:
        raise CLIError(str(e)) from None
    for name in ("stem", "metrics"):
        if getattr(args, name):
            raise CLIError(f"--{name} is for a plain sample set; --seeds writes shards into "
                           f"--out (score them with evaluation.metrics)")
    batch = min(args.sample_batch or DEFAULT_BATCH, shard_size)
    source, config, model, sde, device = load_score_model(args)
    C, H = int(config.data.num_channels), int(config.data.image_size)
    check_held_memory(shard_size * H * H * C * 3 + batch * C * H * H * 4 * 12,
                      f"--shard-size {shard_size} with --sample-batch {batch}",
                      "use a smaller --shard-size or --sample-batch")
    overrides, used, batch_note = seeded_options(args, config, sde)
    folder = default_folder(args, source, used, output_folder)
    info = init_distributed(device="cuda" if device.type == "cuda" else str(device))
    try:
        model = model.to(info.device)
        provenance = sample_provenance(source, config, used, batch_note, batch, shard_size)
        result = sample_seed_set(model, sde, config, overrides, folder, seeds, provenance, info,
                                 batch=batch, shard_size=shard_size, fresh=args.fresh,
                                 progress=args.progress, lock_holder=args)
        if info.is_main:
            if result["global_done"] < result["total"]:
                print(f"{result['total'] - result['global_done']} images of other ranks are not "
                      f"done yet (still running, or died): rerun to finish them")
                return 1
            print(f"{len(seeds)} samples ({used['sampler']}) in {folder} "
                  f"({os.path.join(folder, 'manifest.json')}; "
                  f"{environment(info.device)['device']})")
    finally:
        cleanup_distributed()
    return 0


def sample_provenance(source, config, used, batch_note, batch, shard_size,
                      drop=("seed", "device")):
    """What a seeded sample set is a function of (the manifest's provenance): the checkpoint's
    identity, the config (less the sections `drop`, which do not change the images), every
    sampling option, the image shape and shard size, the toolkit version; the batch size too
    when it couples a batch's images."""
    from evaluation.bits_per_dim import source_identity
    C, H = int(config.data.num_channels), int(config.data.image_size)
    cfg = json.loads(config.to_json_best_effort())
    for name in drop:
        cfg.pop(name, None)
    provenance = {"checkpoint": source_identity(source), "config": cfg, "sampler": used,
                  "image_shape": [H, H, C], "shard_size": shard_size,
                  "toolkit": toolkit_version(),
                  "each_image": "a function of its seed alone" if batch_note is None else
                  f"a function of its seed and --sample-batch: {batch_note}"}
    if batch_note is not None:
        provenance["sample_batch"] = batch
    return provenance


def sample_seed_set(model, sde, config, overrides, folder, seeds, provenance, info, *, batch,
                    shard_size, fresh, progress, lock_holder):
    """Sample the `seeds` no shard of `folder` holds yet, on every rank of `info` (rank 0 locks
    the folder, keeping the lock on `lock_holder.lock`, checks the manifest and deals the
    shards). Returns `evaluation.shards.run_shards`' counts of this rank."""
    from evaluation.shards import prepare_folder, run_shards
    from training.distributed import collective
    todo, shards, moved = _plan(info, folder, provenance, seeds, shard_size, fresh, lock_holder,
                                prepare_folder, collective)
    if info.is_main:
        done = len(seeds) - sum(len(s.todo) for s in todo)
        print(f"{len(seeds)} seeds in {len(shards)} shards of {folder}: {done} done, "
              f"{len(seeds) - done} to sample on {info.world_size} process(es)"
              + (f"; the old set moved to {moved}" if moved else ""))
    t0 = time.time()
    result = run_shards(_image_maker(model, sde, config, info.device, overrides), folder,
                        todo, info, batch=batch, progress=progress)
    print(f"rank {info.rank}: {result['images']} images in {result['shards']} shards, "
          f"{result['evaluations']} score evaluations, {time.time() - t0:.1f}s")
    return result


def _plan(info, folder, provenance, seeds, shard_size, fresh, lock_holder, prepare_folder,
          collective):
    """Rank 0 locks the folder, checks the manifest and plans; every rank gets the plan (or
    rank 0's error) by one broadcast."""
    from evaluation.shards import ShardError
    payload = None
    if info.is_main:
        try:
            lock_holder.lock = workdir_lock(folder, what="sde_lib.run sample --seeds")
            payload = ("ok", prepare_folder(folder, provenance, seeds, shard_size, fresh=fresh))
        except (CLIError, ShardError, OSError) as e:
            payload = ("error", str(e))
    if info.distributed:
        import torch.distributed as dist
        box = [payload]
        with collective(info, "the shard plan"):
            dist.broadcast_object_list(box, src=0)
        payload = box[0]
    if payload[0] == "error":
        raise CLIError(payload[1])
    return payload[1]


def _image_maker(model, sde, config, device, overrides):
    """make_images(seeds) -> (uint8 [n, H, W, C], score evaluations): one batch, each row drawn
    from its own seed's generator."""
    from solvers.seeding import RowGenerators
    from training.images import to_uint8
    from training.sampling import draw_samples

    def make_images(seeds):
        images, nfe, _ = draw_samples(model, sde, config, len(seeds),
                                      generator=RowGenerators(seeds), device=device,
                                      progress=False, **overrides)
        return np.asarray(to_uint8(images)), nfe

    return make_images


def add_arguments(parser):
    g = parser.add_argument_group("seeded, sharded sampling (also under torchrun)")
    flag(g, "seeds", help="one image per seed, e.g. 0-49999 or 0,5,10-19: each a function of "
         "its seed alone, written in resumable shards seeds_<lo>-<hi>.npz with manifest.json in "
         "--out (default <workdir>/samples/seeds_<sampler>[_<steps>steps]); -n is then ignored "
         f"and --sample-batch defaults to {DEFAULT_BATCH}")
    flag(g, "shard-size", type=positive_int, help=f"seeds per shard file (default "
         f"{DEFAULT_SHARD_SIZE}); a killed run loses at most its unfinished shards")
    flag(g, "fresh", action="store_true", help="with --seeds: move an existing set made "
         "otherwise aside (into previous-<time>/) instead of refusing")
