"""``python -m sde_lib.run train``: train a score model, resuming from the workdir."""

import json
import os

from sde_cli.app import Command
from sde_cli.options import (add_run_flags, check_sampling, choose_threads, default_workdir,
                             flag, load_run_config, positive_float, positive_int, resolve_device,
                             workdir_lock)


def prepare(args):
    """(config, workdir, device) with everything checked that can be checked before training:
    the config, the sampler names its snapshots use, the device, the workdir (writable, and no
    other run writing it: the lock is held until the command ends). Under torchrun the lock is
    taken inside `training.train.train`, where every rank learns at once whether rank 0 got
    it."""
    from training.sampling import sampling_options
    config = load_run_config(args)
    if getattr(args, "dist_timeout", None):
        config.training.dist_timeout = float(args.dist_timeout)
    check_sampling(sampling_options(config))
    device = resolve_device(args, config)
    workdir = default_workdir(args)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        args.lock = workdir_lock(workdir, what=f"sde_lib.run {args.command}")
    choose_threads(args, config, device)
    return config, workdir, device


def run(args):
    from training.distributed import cleanup_distributed
    from training.train import train
    config, workdir, device = prepare(args)
    explicit = args.device or config.get("device", "auto") != "auto"
    result = train(config, workdir, device=device if explicit else None, data_dir=args.data_dir,
                   progress=args.progress, stop_after=args.stop_after, restart=args.restart)
    cleanup_distributed()
    if result["world_size"] == 1 or int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in result.items() if k not in ("model", "ema", "sde")},
                         default=str))
    return 0 if result["status"] in ("done", "stopped") else 1


def add_arguments(parser):
    add_run_flags(parser)
    flag(parser, "stop-after", type=positive_int,
         help="stop (resumably) after this many steps of this call")
    flag(parser, "restart", action="store_true", help="start again from step 0: the workdir's "
         "log, checkpoints and samples are moved into <workdir>/history-<time> (never deleted)")
    add_dist_flag(parser)


def add_dist_flag(parser):
    flag(parser, "dist-timeout", type=positive_float, help="seconds a process waits for the "
         "others in a collective before the run ends with an error (torchrun; default "
         "config.training.dist_timeout, else 300)")


COMMAND = Command("Train a score model, resuming from <workdir>/checkpoints-meta when present. "
                  "Several processes: torchrun --nproc_per_node=K -m sde_lib.run train ...",
                  add_arguments, run)
