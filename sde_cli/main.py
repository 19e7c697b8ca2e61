"""The main job, ``python -m sde_lib.run [--sde ve|vp|subvp] [--sampler NAME]``: train a small
score model on the built-in offline default (or --config), then sample it; a PNG grid and a JSON
summary named by sampler, steps and seed in <workdir>/samples (where `sample` writes too)."""

import os
import time

from sde_cli.app import command
from sde_cli.configuration import config_name, default_workdir
from sde_cli.flags import add_run_flags, add_sampler_flags, check_sampling, sampler_overrides
from sde_cli.folders import undo_failed_start
from sde_cli.machine import environment
from sde_cli.outputs import (add_metrics_flag, commit_set, draw, format_metrics, free_stem,
                             nearest_neighbour_distance, recover_sets, sample_files,
                             sample_metrics, sample_stem)
from sde_cli.train import add_dist_flag, prepare, summary_lines


def training_seconds(workdir):
    """Wall-clock training time of a workdir over all its runs (resumes included): the time
    from each run's 'start' record of log.jsonl to that run's last record."""
    from training.logs import read_log
    path = os.path.join(workdir, "log.jsonl")
    total, start, last = 0.0, None, None
    for rec in read_log(path) if os.path.isfile(path) else []:
        if rec.get("event") == "start":
            total += (last - start) if start is not None else 0.0
            start = last = rec.get("time")
        elif start is not None and rec.get("time") is not None:
            last = rec["time"]
    return total + ((last - start) if start is not None else 0.0)


def _quality(images, config, args):
    """Nearest-neighbour distances of the samples to the training set, next to those of the
    held-out test images (a sample far from every training image is not a digit)."""
    if str(config.data.dataset).upper() != "DIGITS":
        return {}
    from training.data import load_dataset
    train_x = load_dataset(config, "train", data_dir=args.data_dir).images
    test_x = load_dataset(config, "test", data_dir=args.data_dir).images
    return {"nn_distance_to_train": nearest_neighbour_distance(images, train_x),
            "nn_distance_test_to_train": nearest_neighbour_distance(test_x, train_x)}


def add_arguments(parser):
    add_run_flags(parser)
    add_sampler_flags(parser)
    add_metrics_flag(parser)
    add_dist_flag(parser)


@command("main", "Train a small score model on the built-in offline default (or --config), "
         "then sample it: <workdir>/samples/samples_<sampler>[_<steps>steps]"
         "_seed<seed>.png grid, .npz and .json summary.",
         add_arguments)
def run(args):
    from training.sampling import sampling_options
    from training.train import ema_weights, train
    t0 = time.time()
    with undo_failed_start(default_workdir(args)):
        config, workdir, device = prepare(args)
        check_sampling(sampling_options(config, **sampler_overrides(args)))
        print(f"config {config_name(args)} (sde {config.training.sde}, model "
              f"{config.model.name}); workdir {workdir}; device {device}")
        result = train(config, workdir, device=device, data_dir=args.data_dir,
                       progress=args.progress)
    if result["status"] != "done":
        print("\n".join(summary_lines(result)))
        return 1
    trained_now = result["step"] - result["start_step"]
    if not trained_now:
        print(f"{workdir} is already trained to step {result['step']}: sampling only "
              f"(a fresh --workdir trains anew)")
    total_train = training_seconds(workdir)
    model, ema, sde = result["model"], result["ema"], result["sde"]
    t1 = time.time()
    with ema_weights(model, ema):
        images, nfe, used = draw(model, sde, config, args.num_samples, seed=config.seed,
                                 device=device, args=args, batch=args.sample_batch)
    t2 = time.time()
    out_dir = os.path.join(workdir, "samples")  # where `sample` writes too
    os.makedirs(out_dir, exist_ok=True)
    recover_sets(out_dir)
    stem = free_stem(out_dir, sample_stem("samples", used, config.seed))
    summary = {
        "command": "main", "config": config_name(args), "workdir": workdir,
        "sde": str(config.training.sde), "model": str(config.model.name),
        "data": {"dataset": str(config.data.dataset), "image_size": int(config.data.image_size)},
        "train": {"step": result["step"], "steps_this_run": trained_now,
                  "seconds_this_run": result["train_seconds"], "seconds_total": total_train,
                  "final_loss": result["final_loss"], "world_size": result["world_size"]},
        "sample": {"num_samples": len(images), "nfe": nfe, "seconds": t2 - t1,
                   "options": used, "seed": int(config.seed)},
        "checkpoint": os.path.abspath(result["checkpoint"]),
        "total_seconds": time.time() - t0, "environment": environment(device),
    }
    summary["sample"].update(_quality(images, config, args))
    if args.metrics:
        summary["sample"].update(sample_metrics(images, config, args))
    paths = commit_set(out_dir, stem, sample_files(images, out_dir, stem), summary)
    print(f"samples: {', '.join(p for k, p in paths.items() if k != 'json')}\n"
          f"summary: {paths['json']}")
    if args.metrics:
        print(format_metrics(summary["sample"]))
    print("\n".join(summary_lines(result)) + f" ({total_train:.1f}s of training in all)")
    print(f"sampled {len(images)} images with {used['sampler']} ({nfe} NFE) in {t2 - t1:.1f}s; "
          f"total {summary['total_seconds']:.1f}s")
    return 0
