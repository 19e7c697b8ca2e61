"""``python -m sde_lib.run sample``: samples of a checkpoint (toolkit, original score_sde_pytorch,
or a diffusers model) as a PNG grid, an .npz and a JSON record, named by sampler, steps and seed."""

import os
import time

from sde_cli.app import Command
from sde_cli.options import (add_run_flags, add_sampler_flags, check_sampling, check_writable,
                             choose_threads, config_for_checkpoint, environment, find_checkpoint,
                             finish_config, flag, load_model, resolve_device, sampler_overrides,
                             workdir_lock)
from sde_cli.outputs import (add_metrics_flag, draw, free_stem, sample_metrics, sample_stem,
                             write_json, write_samples)


def load_score_model(args):
    """(source, config, model, sde, device) from --diffusers, or --checkpoint / the workdir's
    latest checkpoint with its config."""
    from sde_lib import get_sde
    if getattr(args, "diffusers", None):
        from networks.diffusers import load_for_sampling
        source, device = args.diffusers, resolve_device(args)
        model, sde, config = load_for_sampling(source, device)
        config = finish_config(config, args)
    else:
        source = find_checkpoint(args)
        config = config_for_checkpoint(args, source)
        device = resolve_device(args, config)
        model, sde = load_model(source, config, device), get_sde(config)
    choose_threads(args, config, device)
    return source, config, model, sde, device


def output_folder(args, source, name):
    """--out, else <workdir of the checkpoint>/<name>, checked writable before any work."""
    if args.out:
        return check_writable(args.out)
    if getattr(args, "diffusers", None) or not os.path.isfile(source):
        return check_writable(os.path.join(args.workdir or "runs", name))
    root = os.path.dirname(os.path.dirname(os.path.abspath(source)))
    return check_writable(os.path.join(root, name))


def run(args):
    from training.sampling import sampling_options
    source, config, model, sde, device = load_score_model(args)
    check_sampling(sampling_options(config, **sampler_overrides(args)))
    out_dir = output_folder(args, source, "samples")
    args.lock = workdir_lock(out_dir, what="sde_lib.run sample")
    seed = int(config.seed)
    t0 = time.time()
    images, nfe, used = draw(model, sde, config, args.num_samples, seed=seed, device=device,
                             args=args, batch=args.sample_batch)
    seconds = time.time() - t0
    stem = free_stem(out_dir, args.stem or sample_stem("samples", used, seed))
    png, npz = write_samples(images, out_dir, stem)
    info = {"command": "sample", "checkpoint": source, "sde": str(config.training.sde),
            "num_samples": len(images), "nfe": nfe, "seconds": seconds, "options": used,
            "seed": seed, "png": png, "npz": npz, "environment": environment(device)}
    if args.metrics:
        info.update(sample_metrics(images, config, args))
    write_json(os.path.join(out_dir, f"{stem}.json"), info)
    print(f"{len(images)} samples ({used['sampler']}, {nfe} NFE, {seconds:.1f}s): {png}, {npz}")
    return 0


def add_source_flags(parser, diffusers=True):
    g = parser.add_argument_group("model")
    flag(g, "checkpoint", help="checkpoint file (toolkit .pth/.safetensors or original "
         "score_sde_pytorch .pth; default: the workdir's latest)")
    if diffusers:
        flag(g, "diffusers", metavar="DIR_OR_ID", help="a diffusers UNet2DModel instead of a "
             "checkpoint: model or pipeline folder, or a hub id (pip install -e '.[diffusers]')")


def add_arguments(parser):
    add_run_flags(parser)
    add_sampler_flags(parser)
    add_source_flags(parser)
    add_metrics_flag(parser)
    flag(parser, "out", help="output folder (default <workdir>/samples)")
    flag(parser, "stem", help="output file name stem (default samples_<sampler>[_<steps>steps]"
         "_seed<seed>, numbered rather than overwriting)")


COMMAND = Command("Sample a checkpoint: <out>/<stem>.png grid, .npz (uint8 [N, H, W, C]) and "
                  ".json.", add_arguments, run)
