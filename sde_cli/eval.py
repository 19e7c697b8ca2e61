"""``python -m sde_lib.run eval``: evaluate the workdir's checkpoints as config.eval says: the
test loss of the EMA weights, bits/dim (config.eval.enable_bpd) and samples with their metrics
(config.eval.enable_sampling); one report per checkpoint in <workdir>/<eval-folder>.

The sampler's last time (--sample-eps) and the likelihood ODE's start time (--likelihood-eps)
are different settings (1e-3 and 1e-5 for VP by default) and have separate flags."""

import json
import os

import torch

from sde_cli.app import command
from sde_cli.likelihood import add_likelihood_flags, bits_per_dim
from sde_cli.configuration import config_for_checkpoint, default_workdir, load_model
from sde_cli.errors import CLIError
from sde_cli.flags import add_run_flags, add_sampler_flags, check_sampling, flag, sampler_overrides
from sde_cli.folders import workdir_lock
from sde_cli.machine import choose_threads, resolve_device
from sde_cli.outputs import draw, sample_metrics, write_json


def eval_checkpoints(args):
    """{name: path}: --checkpoint, else the workdir's checkpoint_k.pth with begin_ckpt <= k <=
    end_ckpt of config.eval (the config of --config, or of the latest checkpoint)."""
    from training.checkpoints import latest_checkpoint, periodic_checkpoints
    if args.checkpoint:
        if not os.path.isfile(args.checkpoint):
            raise CLIError(f"checkpoint {args.checkpoint!r} does not exist")
        return {os.path.basename(args.checkpoint).rsplit(".", 1)[0]: args.checkpoint}
    workdir = default_workdir(args)
    found = periodic_checkpoints(workdir)
    if not found:
        raise CLIError(f"no checkpoints/checkpoint_k.pth in {workdir}; train first or pass "
                       f"--checkpoint")
    config = config_for_checkpoint(args, latest_checkpoint(workdir))
    lo, hi = int(config.eval.get("begin_ckpt", 1)), int(config.eval.get("end_ckpt", 10 ** 9))
    chosen = {f"ckpt_{k}": p for k, p in found.items() if lo <= k <= hi}
    if not chosen:
        raise CLIError(f"no checkpoints checkpoint_k.pth with {lo} <= k <= {hi} in {workdir}/"
                       f"checkpoints (found {sorted(found)}); set --config.eval.begin_ckpt/"
                       f"end_ckpt or pass --checkpoint")
    return chosen


@torch.no_grad()
def dataset_loss(model, loss_fn, config, dataset, *, batch_size, seed, device, limit=None):
    """Per-batch losses of `model` over a dataset split (fixed seed: same noise every time)."""
    from training.pipeline import augment, get_images
    g = torch.Generator(device=device).manual_seed(int(seed))
    n = len(dataset) if limit is None else min(limit, len(dataset))
    losses = []
    model.eval()
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        x, _ = get_images(dataset, idx)
        x = augment(x.to(device), config, generator=g)
        noise = loss_fn.draw(x.shape, generator=g, device=device, dtype=x.dtype)
        losses.append(loss_fn(model, x, noise).item())
    return losses


def add_arguments(parser):
    add_run_flags(parser)
    add_sampler_flags(parser, n_default=None, eps_alias=False)
    add_likelihood_flags(parser)
    flag(parser, "checkpoint", help="evaluate this file only (default: the workdir's "
         "checkpoint_k.pth with config.eval.begin_ckpt <= k <= end_ckpt)")
    flag(parser, "eval-folder", default="eval", help="reports folder inside the workdir")
    parser.set_defaults(records=None)


@command("eval", "Evaluate checkpoints: test loss (EMA weights), and bits/dim and samples when "
         "config.eval.enable_bpd / enable_sampling say so; reports in "
         "<workdir>/<eval-folder>.",
         add_arguments)
def run(args):
    import numpy as np
    from sde_lib import get_sde
    from training.checkpoints import checkpoint_step
    from training.data import load_dataset
    from training.images import save_npz, to_uint8
    from training.losses import get_loss_fn
    from training.sampling import sampling_options
    checkpoints = eval_checkpoints(args)
    eval_dir = os.path.join(default_workdir(args) if not args.checkpoint else os.path.dirname(
        os.path.dirname(os.path.abspath(args.checkpoint))), args.eval_folder)
    args.lock = workdir_lock(eval_dir, what="sde_lib.run eval")
    threads = None
    for name, path in checkpoints.items():
        config = config_for_checkpoint(args, path)
        check_sampling(sampling_options(config, **sampler_overrides(args)))
        device = resolve_device(args, config)
        if threads is None:  # one rule and one line for the whole command
            threads = choose_threads(args, config, device)
        sde = get_sde(config)
        model = load_model(path, config, device)
        report = {"checkpoint": path, "step": checkpoint_step(path)}
        if config.eval.get("enable_loss", True):
            ds = load_dataset(config, "test", data_dir=args.data_dir)
            losses = dataset_loss(model, get_loss_fn(config, sde), config, ds,
                                  batch_size=int(config.eval.batch_size), seed=config.seed,
                                  device=device, limit=args.num_images)
            save_npz(os.path.join(eval_dir, f"{name}_loss.npz"), all_losses=np.asarray(losses),
                     mean_loss=np.mean(losses))
            report["eval_loss"] = float(np.mean(losses))
        if config.eval.get("enable_bpd", False):
            split = str(config.eval.get("bpd_dataset", "test")).lower()
            res = bits_per_dim(model, sde, config, args, device, split, eval_dir, path)
            report.update({f"bpd_{k}" if not k.startswith("bpd") else k: v
                           for k, v in res.items()})
        if config.eval.get("enable_sampling", False):
            n = args.num_samples or int(config.eval.num_samples)
            images, nfe, used = draw(model, sde, config, n, seed=config.seed, device=device,
                                     args=args, batch=int(config.eval.batch_size))
            save_npz(os.path.join(eval_dir, name, "samples_0.npz"), samples=to_uint8(images))
            report.update({"num_samples": n, "nfe": nfe, "sampler": used})
            report.update(sample_metrics(images, config, args))
        write_json(os.path.join(eval_dir, f"report_{name}.json"), report)
        print(json.dumps({name: report}, default=str))
    return 0
