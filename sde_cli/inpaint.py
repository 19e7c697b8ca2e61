"""``python -m sde_lib.run inpaint``: inpaint the first -n images of a split with a score model
(``colorize`` shares this module's machinery). Writes <out>/<stem>_original.png,
<stem>_before.png (what the sampler is given: the unknown pixels grey), <stem>_after.png (the
result) and <stem>.json (settings, NFE, errors on the observed part)."""

import math
import os
import time

import torch

from sde_cli.app import command
from sde_cli.errors import CLIError
from sde_cli.flags import (add_run_flags, add_sampler_flags, check_sampling, flag, positive_float,
                           sampler_overrides)
from sde_cli.folders import unique_stem, workdir_lock
from sde_cli.outputs import check_name, commit_set, recover_sets
from sde_cli.sample import absolute_source, add_source_flags, load_score_model, output_folder

MASKS = ("center", "left", "right", "top", "bottom", "random")
METHODS = ("projection", "dps", "pigdm", "tmpd")
INITS = ("marginal", "original", "prior")
GRIDS = ("original", "before", "after")  # the PNG grids of a set: <stem>_<grid>.png


def make_mask(kind, shape, seed=0, fraction=0.5):
    """A 0/1 mask [B, 1, H, W] (1 = known) of `kind` for images of `shape` [B, C, H, W]:
    'center' hides the central half-size square, 'left'/'right'/'top'/'bottom' hide that half,
    'random' hides each pixel with probability `fraction` (drawn on the CPU from `seed`, so the
    mask is the same on every device)."""
    B, _, H, W = shape
    m = torch.ones(B, 1, H, W)
    if kind == "center":
        m[..., H // 4:H // 4 + (H + 1) // 2, W // 4:W // 4 + (W + 1) // 2] = 0
    elif kind == "left":
        m[..., :, :W // 2] = 0
    elif kind == "right":
        m[..., :, W // 2:] = 0
    elif kind == "top":
        m[..., :H // 2, :] = 0
    elif kind == "bottom":
        m[..., H // 2:, :] = 0
    elif kind == "random":
        if not 0 < fraction < 1:
            raise CLIError(f"--mask-fraction must lie in (0, 1), got {fraction}")
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        m = (torch.rand(B, 1, H, W, generator=g) >= fraction).float()
    else:
        raise CLIError(f"unknown mask {kind!r}; known: {', '.join(MASKS)}")
    return m


def first_images(args, config, device):
    """The first -n images of the split, in the model's range, and the data inverse scaler."""
    from training.data import get_data_inverse_scaler, get_data_scaler, load_dataset
    ds = load_dataset(config, args.split, data_dir=args.data_dir)
    n = min(args.num_samples, len(ds))
    images, _ = ds.get_batch(torch.arange(n))
    return get_data_scaler(config)(images).to(device), get_data_inverse_scaler(config)


def setup(args):
    """(source, config, sde, score_fn, device, sampler options, out folder, seed), all checked
    before any sampling."""
    from networks import get_score_fn
    from training.sampling import sampling_options
    if args.stem:
        check_name(args.stem)
    source, config, model, sde, device = load_score_model(args)
    opts = check_sampling(sampling_options(config, **sampler_overrides(args)))
    out = output_folder(args, source, "controllable")
    args.lock = workdir_lock(out, what=f"sde_lib.run {args.command}")
    recover_sets(out)
    score_fn = get_score_fn(sde, model, continuous=bool(config.training.get("continuous", True)))
    return source, config, sde, score_fn, device, opts, out, int(config.seed)


def write_grids(out, stem, grids, info):
    """<stem>_<name>.png for each grid of images in [0, 1], and <stem>.json, as one set
    (`commit_set`). Returns {name: path} with 'json'."""
    from training.images import save_grid

    def grid_writer(images):
        return lambda path: save_grid(images.clamp(0, 1).cpu(), path,
                                      nrow=int(math.ceil(math.sqrt(len(images)))))

    files = {name: (os.path.join(out, f"{stem}_{name}.png"), grid_writer(images))
             for name, images in grids.items()}
    return commit_set(out, stem, files, info)


def solve(args, kind):
    """Inpaint or colorize the first -n images of the split."""
    from solvers import colorize, inpaint
    source, config, sde, score_fn, device, opts, out, seed = setup(args)
    if kind == "colorize" and int(config.data.num_channels) != 3:
        raise CLIError(f"colorize needs an RGB model (config.data.num_channels = 3), this one "
                       f"has {config.data.num_channels} channel(s)")
    data, inverse = first_images(args, config, device)
    g = torch.Generator(device=device).manual_seed(seed)
    extra = {"noise_std": args.noise_std, "method": args.method, "init": args.init,
             "scale": args.scale, "batch_size": args.sample_batch, "progress": args.progress}
    extra = {k: v for k, v in extra.items() if v is not None}
    noise = args.noise_std * torch.randn(data.shape, generator=g, device=device)
    t0 = time.time()
    if kind == "inpaint":
        mask = make_mask(args.mask, data.shape, seed=seed, fraction=args.mask_fraction)
        mask = mask.to(device)
        observed = data + noise
        res = inpaint(score_fn, sde, observed, mask, generator=g, device=device, **opts, **extra)
        before = torch.where(mask.bool(), inverse(observed), torch.full_like(observed, 0.5))
        obs_err = float(((res.samples - observed) * mask).abs().max())
    else:
        gray = data.mean(1, keepdim=True) + noise[:, :1]
        res = colorize(score_fn, sde, gray, generator=g, device=device, **opts, **extra)
        before = inverse(gray).expand(-1, 3, -1, -1)
        obs_err = float((res.samples.mean(1, keepdim=True) - gray).abs().max())
    seconds = time.time() - t0
    stem = args.stem or f"{kind}_{opts['sampler']}_{res.info['method']}".replace("+", "p") + (
        f"_{args.mask}" if kind == "inpaint" else "") + f"_seed{seed}"
    stem = unique_stem(out, stem, [f"_{n}.png" for n in GRIDS] + [".json"])
    info = {"command": kind, "checkpoint": absolute_source(source), "sde": str(config.training.sde),
            "num_images": len(data), "nfe": res.nfe, "seconds": seconds, "seed": seed,
            "options": dict(res.info), "max_error_on_observed": obs_err,
            "mse_to_original": float((res.samples - data).pow(2).mean())}
    if kind == "inpaint":
        info["mask"] = args.mask
    paths = write_grids(out, stem, dict(zip(GRIDS, (inverse(data), before,
                                                     inverse(res.samples)))), info)
    print(f"{kind}: {len(data)} images, {res.nfe} NFE, {seconds:.1f}s; "
          f"{paths['before']} -> {paths['after']} (also {paths['original']}, {paths['json']})")
    return 0


def add_inverse_arguments(parser):
    add_run_flags(parser)
    add_sampler_flags(parser, n_default=16)
    add_source_flags(parser)
    flag(parser, "split", default="test", choices=["train", "test"],
         help="dataset split the images come from")
    flag(parser, "method", choices=METHODS, help=f"posterior sampler, one of: "
         f"{', '.join(METHODS)} (default projection, or dps with --noise-std > 0)")
    flag(parser, "noise-std", type=float, default=0.0,
         help="std of Gaussian noise added to the observations (model range)")
    flag(parser, "init", choices=INITS, help=f"start x(T), one of: {', '.join(INITS)} "
         f"(default marginal for projection, prior otherwise)")
    flag(parser, "scale", type=positive_float, default=1.0, help="guidance weight")
    flag(parser, "out", help="output folder (default <workdir>/controllable)")
    flag(parser, "stem", help="output file stem, a plain name (default <command>_<sampler>"
         "_<method>[_<mask>]_seed<seed>, numbered rather than overwriting)")


def add_arguments(parser):
    add_inverse_arguments(parser)
    flag(parser, "mask", default="center", choices=MASKS,
         help=f"which pixels are unknown, one of: {', '.join(MASKS)}")
    flag(parser, "mask-fraction", type=float, default=0.5,
         help="fraction of pixels hidden by --mask random")


@command("inpaint", "Inpaint the first -n images of a split: <stem>_original/_before/_after.png "
         "and <stem>.json.",
         add_arguments)
def run(args):
    """Inpaint the first -n images of the split."""
    return solve(args, "inpaint")
