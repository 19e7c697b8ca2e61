"""Samples as files: drawing them as the config and flags say, naming them by what made them,
and writing PNG grids, .npz arrays and JSON records that never overwrite one another."""

import math
import os

import torch

from sde_cli.options import sampler_overrides, unique_stem
from training.sampling import draw_samples

SAMPLE_SUFFIXES = (".png", "_pixels.png", ".npz", ".json")


def draw(model, sde, config, n, *, seed, device, args, batch=None):
    """n samples in [0, 1] drawn with one generator seeded by `seed`, the NFE of one sample,
    and every option the run used, defaults included (steps and grid resolved; JSON data:
    passed back to `draw_samples` as overrides it draws the same images)."""
    g = torch.Generator(device=device).manual_seed(int(seed))
    images, nfe, used = draw_samples(model, sde, config, n, generator=g, device=device,
                                     progress=args.progress, batch_size=batch,
                                     **sampler_overrides(args))
    return images.cpu(), nfe, used


def sample_stem(prefix, opts, seed):
    """'<prefix>_<sampler>[_<steps>steps]_seed<seed>': outputs named by what made them."""
    steps = opts.get("steps")
    name = str(opts["sampler"]).replace("+", "p")
    return f"{prefix}_{name}" + (f"_{steps}steps" if steps else "") + f"_seed{int(seed)}"


def free_stem(folder, stem):
    """`stem`, numbered if files of that stem exist already (nothing is overwritten)."""
    return unique_stem(folder, stem, SAMPLE_SUFFIXES)


def write_samples(images, folder, stem):
    """<folder>/<stem>.png (grid; small images smoothly upscaled), <stem>_pixels.png (exact
    pixels as blocks, small images only) and <stem>.npz ('samples': uint8 [N, H, W, C], as the
    original writes them). Returns (png, npz)."""
    from training.images import save_grid, save_npz, to_uint8
    nrow = int(math.ceil(math.sqrt(len(images))))
    png = save_grid(images, os.path.join(folder, f"{stem}.png"), nrow=nrow)
    if images.shape[-1] < 32:
        save_grid(images, os.path.join(folder, f"{stem}_pixels.png"), nrow=nrow,
                  resample="nearest")
    npz = save_npz(os.path.join(folder, f"{stem}.npz"), samples=to_uint8(images))
    return png, npz


def write_json(path, obj):
    from sde_lib.fileio import write_json as atomic_json
    atomic_json(path, obj, default=str)
    return path


def nearest_neighbour_distance(samples, reference):
    """Mean Euclidean distance from each sample to its nearest reference image (a quick check
    that samples lie near the data, and are not copies when compared with test images)."""
    a = samples.reshape(len(samples), -1).double()
    b = reference.reshape(len(reference), -1).double()
    return torch.cdist(a, b).min(1).values.mean().item()


def sample_metrics(images, config, args):
    """Sample-quality metrics where available: DIGITS, the offline digits classifier's
    features; otherwise FID/IS/KID through torch-fidelity (the [metrics] extra)."""
    try:
        if str(config.data.dataset).upper() == "DIGITS":
            from evaluation.digits_features import digits_metrics
            return {"metrics": digits_metrics(images)}
        from evaluation.metrics import fidelity_metrics
        from training.data import load_dataset
        ref = load_dataset(config, "train", data_dir=args.data_dir)
        return {"metrics": fidelity_metrics(images, ref)}
    except (ImportError, RuntimeError, ValueError, OSError) as e:  # optional: say why missing
        return {"metrics_error": f"{type(e).__name__}: {e}"}


def add_metrics_flag(parser):
    parser.add_argument("--metrics", action="store_true",
                        help="also compute sample-quality metrics (DIGITS: the offline digits "
                        "classifier's FID/KID/score; otherwise FID/IS/KID through "
                        "torch-fidelity, pip install -e '.[metrics]')")
