"""``python -m sde_lib.run sample``: samples of a checkpoint (toolkit, original score_sde_pytorch,
or a diffusers model) as a PNG grid, an .npz and a JSON record, named by sampler, steps and seed."""

import os
import time

from sde_cli.app import command
from sde_cli.seeds import add_arguments as add_seed_arguments, run as run_seeds
from sde_cli.configuration import config_for_checkpoint, find_checkpoint, finish_config, load_model
from sde_cli.flags import add_run_flags, add_sampler_flags, check_sampling, flag, sampler_overrides
from sde_cli.folders import check_writable, workdir_lock
from sde_cli.machine import choose_threads, environment, resolve_device
from sde_cli.outputs import (add_metrics_flag, check_held_memory, check_name, commit_set, draw,
                             format_metrics, free_stem, recover_sets, sample_files, sample_metrics,
                             sample_stem)


def load_score_model(args):
    """(source, config, model, sde, device) from --diffusers, or --checkpoint / the workdir's
    latest checkpoint with its config."""
    from sde_lib import get_sde
    if getattr(args, "diffusers", None):
        from networks.diffusers import load_for_sampling
        source, device = args.diffusers, resolve_device(args)
        model, sde, config = load_for_sampling(source, device)
        config = finish_config(config, args, fixed_by=f"the diffusers model {source}")
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
        return check_writable(args.out, args)
    if getattr(args, "diffusers", None) or not os.path.isfile(source):
        return check_writable(os.path.join(args.workdir or "runs", name), args)
    root = os.path.dirname(os.path.dirname(os.path.abspath(source)))
    return check_writable(os.path.join(root, name), args)


def absolute_source(source):
    """A checkpoint or model folder as an absolute path (a hub id as it is)."""
    return os.path.abspath(source) if os.path.exists(source) else source


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
    flag(parser, "stem", help="output file name stem, a plain name (default samples_<sampler>"
         "[_<steps>steps]_seed<seed>, numbered rather than overwriting)")
    add_seed_arguments(parser)


@command("sample", "Sample a checkpoint: <out>/<stem>.png grid, .npz (uint8 [N, H, W, C]) and "
         ".json, written as one set; or, with --seeds, one image per seed in resumable "
         "shards (also under torchrun).",
         add_arguments)
def run(args):
    from training.sampling import sampling_options
    if args.seeds:
        return run_seeds(args, load_score_model, output_folder)
    stem = check_name(args.stem) if args.stem else None
    source, config, model, sde, device = load_score_model(args)
    check_sampling(sampling_options(config, **sampler_overrides(args)))
    C, H = int(config.data.num_channels), int(config.data.image_size)
    n, batch = args.num_samples, args.sample_batch or args.num_samples
    check_held_memory(n * C * H * H * 13 + batch * C * H * H * 4 * 12,
                      f"-n {n} with --sample-batch {batch}",
                      "lower -n, or use --seeds 0-N, which writes shards to disk as they are "
                      "made")
    out_dir = output_folder(args, source, "samples")
    args.lock = workdir_lock(out_dir, what="sde_lib.run sample")
    recover_sets(out_dir)
    seed = int(config.seed)
    t0 = time.time()
    images, nfe, used = draw(model, sde, config, n, seed=seed, device=device, args=args,
                             batch=args.sample_batch)
    seconds = time.time() - t0
    stem = free_stem(out_dir, stem or sample_stem("samples", used, seed))
    info = {"command": "sample", "checkpoint": absolute_source(source),
            "sde": str(config.training.sde), "num_samples": len(images), "nfe": nfe,
            "seconds": seconds, "options": used, "seed": seed,
            "environment": environment(device)}
    if args.metrics:
        info.update(sample_metrics(images, config, args))
    paths = commit_set(out_dir, stem, sample_files(images, out_dir, stem), info)
    print(f"{len(images)} samples ({used['sampler']}, {nfe} NFE, {seconds:.1f}s): "
          f"{', '.join(paths.values())}")
    if args.metrics:
        print(format_metrics(info))
    return 0
