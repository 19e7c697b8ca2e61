"""``python -m sde_lib.run train``: train a score model, resuming from the workdir."""

import contextlib
import json
import math
import os
import sys

from sde_cli.app import command
from sde_cli.configuration import check_meaning, checkpoint_config, default_workdir, load_run_config
from sde_cli.flags import add_run_flags, check_sampling, flag, positive_float, positive_int
from sde_cli.folders import undo_failed_start, workdir_lock
from sde_cli.machine import choose_threads, resolve_device


def prepare(args):
    """(config, workdir, device) with everything checked that can be checked before training:
    the config and its values, that it means what the workdir's checkpoint was trained as,
    the sampler names its snapshots use, the device, the workdir (writable, and no other run
    writing it: the lock is held until the command ends). Under torchrun the lock is taken
    inside `training.train.train`, where every rank learns at once whether rank 0 got it."""
    from training.sampling import sampling_options
    config = load_run_config(args)
    if getattr(args, "dist_timeout", None):
        config.training.dist_timeout = float(args.dist_timeout)
    check_sampling(sampling_options(config))
    device = resolve_device(args, config)
    workdir = default_workdir(args)
    check_resumed_meaning(args, config, workdir)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        args.lock = workdir_lock(workdir, what=f"sde_lib.run {args.command}")
    choose_threads(args, config, device)
    return config, workdir, device


def check_resumed_meaning(args, config, workdir):
    """A run that resumes a workdir continues its weights: the config must mean what the
    checkpoint's stored config means (same SDE, network, data scaling), else resuming would
    train the weights under another meaning. An unreadable checkpoint is left to the loop;
    with --restart the old run is moved aside and nothing is resumed."""
    from training.checkpoints import latest_checkpoint
    if not os.path.isdir(workdir) or getattr(args, "restart", False):  # --restart: moved aside
        return
    try:
        path = latest_checkpoint(workdir, warn=lambda *a, **k: None)
        stored = None if path is None else checkpoint_config(path)
    except Exception:  # unreadable: the training loop says what to do with it
        return
    if stored is not None:
        check_meaning(stored, config, args, f"the workdir's checkpoint {path}")


def summary_lines(result):
    """The readable summary of a training run (`training.train.train`'s result), shared by
    `train` and the main job."""
    step, now = result["step"], result["step"] - result["start_step"]
    loss = result.get("final_loss")
    loss = f"{loss:.4g}" if isinstance(loss, float) and math.isfinite(loss) else "not logged"
    seconds = result.get("train_seconds", 0.0)
    if result["status"] == "preempted":
        return [f"training preempted at step {step} ({now} steps in this run); the checkpoint "
                f"{result['checkpoint']} holds it: rerun the same command to resume"]
    if result["status"] == "stopped":
        head = f"training stopped (--stop-after) at step {step} of {result['n_iters']}"
        tail = "; rerun the same command to continue"
    else:
        head, tail = f"trained to step {step}", ""
    rate = f", {result['steps_per_sec']:.2f} steps/s" if now else ""
    return [f"{head} ({now} steps in this run, {seconds:.1f}s{rate}); final loss {loss}; "
            f"checkpoint {result['checkpoint']}{tail}"]


def machine_summary(result):
    """The run's summary as valid JSON text (a NaN loss is null)."""
    from sde_base.fileio import json_ready
    plain = {k: v for k, v in result.items() if k not in ("model", "ema", "sde")}
    return json.dumps(json_ready(plain), default=str, allow_nan=False)


def add_arguments(parser):
    add_run_flags(parser)
    flag(parser, "stop-after", type=positive_int,
         help="stop (resumably) after this many steps of this call")
    flag(parser, "restart", action="store_true", help="start again from step 0: the workdir's "
         "log, checkpoints and samples are moved into <workdir>/history-<time> (never deleted)")
    flag(parser, "json", action="store_true", help="print the summary as one line of JSON "
         "(valid JSON: a loss that was never logged is null) instead of a sentence, alone on "
         "stdout (other lines go to stderr)")
    add_dist_flag(parser)


def add_dist_flag(parser):
    flag(parser, "dist-timeout", type=positive_float, help="seconds a process waits for the "
         "others in a collective before the run ends with an error (torchrun; default "
         "config.training.dist_timeout, else 300)")


@command("train", "Train a score model, resuming from <workdir>/checkpoints-meta when present. "
         "Several processes: torchrun --nproc_per_node=K -m sde_lib.run train ...",
         add_arguments)
def run(args):
    from training.distributed import cleanup_distributed
    from training.train import train
    # With --json, stdout holds the JSON summary alone: the lines on the way go to stderr.
    aside = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with undo_failed_start(default_workdir(args)), aside:
        config, workdir, device = prepare(args)
        explicit = args.device or config.get("device", "auto") != "auto"
        result = train(config, workdir, device=device if explicit else None,
                       data_dir=args.data_dir, progress=args.progress, stop_after=args.stop_after,
                       restart=args.restart)
    cleanup_distributed()
    if result["world_size"] == 1 or int(os.environ.get("RANK", "0")) == 0:
        print(machine_summary(result) if args.json else "\n".join(summary_lines(result)))
    return 0 if result["status"] in ("done", "stopped") else 1
