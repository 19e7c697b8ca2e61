"""``python -m sde_lib.run likelihood`` (also ``python -m likelihood.evaluate``): bits/dim of a
data split under a checkpoint, resumable, by one of two methods (--method): 'ode' (the
probability-flow ODE: an estimate of log p_eps, adaptive cost) or 'bound' (the reverse SDE's
variational bound: an upper bound on the NLL, --n-samples network evaluations per image), after
uniform or truncated-normal dequantization (--dequantize).

Pixel levels, one rule for every command: --levels L (or --bits B: L = 2^B), else the dataset's
own number of pixel values (256 for 8-bit image data, 17 for DIGITS); data whose levels are
unknown (float data) is an error that asks for --levels, never a guess.

Records (one JSON line per image and repeat, `evaluation.bits_per_dim`) are keyed by the
checkpoint's step and content digest, the config and every setting that changes the number; the
default records file carries the key in its name, so another checkpoint or setting never reuses
them. Under ``torchrun`` the split's batches are dealt to the ranks (no collective while they
compute; finished batches go to rank 0 through the process group's store), and rank 0 writes the
records, the summary JSON and the one line printed. --repeats R makes R passes over the split
with fresh dequantization noise (the original's test protocol uses 5), each pass's seed
recorded; the standard error is over images of each image's mean over the repeats.
"""

import os
import time

import torch

from sde_cli.app import command
from sde_cli.errors import CLIError
from sde_cli.flags import add_run_flags, flag, positive_float, positive_int
from sde_cli.folders import check_writable
from sde_cli.outputs import write_json
from sde_cli.sample import add_source_flags, load_score_model, output_folder


def pixel_levels(args, dataset, config):
    """The one rule for the number of pixel values (see the module docstring)."""
    if getattr(args, "levels", None) is not None:
        return int(args.levels)
    if getattr(args, "bits", None) is not None:
        return 2 ** int(args.bits)
    levels = getattr(dataset, "levels", None)
    if levels is None:
        raise CLIError(f"the pixel levels of {config.data.dataset} are unknown (float data?); "
                       f"bits/dim needs discrete pixel values: pass --levels L or --bits B")
    return int(levels)


def bits_per_dim(model, sde, config, args, device, split, out_dir, source, *, dist=None):
    """Bits/dim of a split (resumable records in `out_dir`) as the flags say; returns the
    summary with the settings and the records path. `dist`: the `DistInfo` of a torchrun run
    (the split's batches are dealt to the ranks, rank 0 writes and alone gets the summary, the
    other ranks None; default one process)."""
    from configs import config_to_json
    from evaluation.bits_per_dim import evaluate_split, run_key, source_identity
    from networks import get_score_fn
    from training.data import get_data_scaler, load_dataset
    ds = load_dataset(config, split, data_dir=args.data_dir)
    levels = pixel_levels(args, ds, config)
    n = len(ds) if args.num_images is None else min(args.num_images, len(ds))
    batch = min(int(args.batch or config.eval.batch_size), n)
    scaler = get_data_scaler(config)
    data_range = (float(scaler(torch.tensor(0.0))), float(scaler(torch.tensor(1.0))))
    score_fn = get_score_fn(sde, model, continuous=bool(config.training.get("continuous", True)))
    eps = sde.likelihood_eps if args.likelihood_eps is None else args.likelihood_eps
    seed = int(config.seed)
    method = getattr(args, "method", "ode")
    dequantize = getattr(args, "dequantize", "uniform")
    settings = {"split": split, "batch_size": batch, "seed": seed, "eps": eps,
                "levels": levels, "data_range": list(data_range), "num_images": n,
                "method": method, "dequantize": dequantize}
    if method == "ode":
        options = {"estimator": args.estimator, "n_probes": args.n_probes, "rtol": args.rtol,
                   "atol": args.atol}
    else:
        options = {"n_samples": args.n_samples,
                   "importance_sampling": not args.uniform_t}
    if dequantize == "truncated_normal":
        options["dequantization_std"] = args.dequantization_std  # None: sigma(eps) / alpha(eps)
    settings.update(options)
    key = run_key(checkpoint=source_identity(source), config=config_to_json(config),
                  settings=settings)
    records = args.records or os.path.join(out_dir, f"bpd_{split}_{key}.jsonl")
    num_batches = args.num_batches  # over all repeats; None: every batch of every repeat
    summary = evaluate_split(score_fn, sde, ds, data_range=data_range, batch_size=batch,
                             out=records, seed=seed, key=key, num_batches=num_batches,
                             repeats=args.repeats, device=device, progress=args.progress,
                             fresh=args.fresh, levels=levels, method=method,
                             dequantize=dequantize, eps=eps, dist=dist, num_images=n,
                             **options)
    if summary is None:  # another rank than 0 under torchrun
        return None
    return dict(summary, split=split, eps=eps, levels=levels, key=key, records=records,
                settings=settings)


def _out_dir(args, source):
    """The folder of --records, else that of `sample`'s rule (--out, else <workdir>/eval)."""
    if args.records:
        return check_writable(os.path.dirname(os.path.abspath(args.records)))
    return output_folder(args, source, "eval")


FRESH_HELP = "replace records of other work in the records file instead of refusing it"


def add_likelihood_flags(parser, fresh_help=FRESH_HELP):
    """The bits/dim settings (shared with `eval`, whose --fresh means more: `fresh_help`)."""
    from likelihood.bpd import DEQUANTIZERS, METHODS
    from likelihood.divergence import ESTIMATORS
    g = parser.add_argument_group("bits/dim")
    flag(g, "method", default="ode", choices=METHODS,
         help="'ode': the probability-flow ODE (an estimate of log p; adaptive cost); 'bound': "
              "the reverse SDE's variational bound (an upper bound on the NLL; --n-samples "
              "network evaluations per image)")
    flag(g, "n-samples", type=positive_int, default=32,
         help="--method bound: Monte Carlo draws of (t, noise) per image (2 or more for a "
              "standard error)")
    flag(g, "uniform-t", action="store_true",
         help="--method bound: uniform t instead of importance sampling by g^2/sigma^2")
    flag(g, "dequantize", default="uniform", choices=DEQUANTIZERS,
         help="'uniform' (the original's) or 'truncated_normal' (i-DODE); each with its own "
              "derived bits/dim offset")
    flag(g, "dequantization-std", type=positive_float,
         help="--dequantize truncated_normal: its std in the data range's units (default "
              "sigma(eps) / alpha(eps) of the SDE)")
    flag(g, "num-images", type=positive_int, help="evaluate the first N images only "
         "(default: the whole split)")
    flag(g, "num-batches", type=positive_int, help="evaluate the first N batches only")
    flag(g, "batch", aliases=("--batch-size", "--batch_size"), type=positive_int,
         help="images per batch (default config.eval.batch_size)")
    flag(g, "repeats", type=positive_int, default=1,
         help="passes over the split with fresh dequantization noise, each pass's seed recorded "
              "(the original uses 5 for test); a rerun with more repeats extends the records")
    flag(g, "estimator", default="rademacher", choices=ESTIMATORS,
         help=f"divergence estimator, one of: {', '.join(ESTIMATORS)}")
    flag(g, "n-probes", type=positive_int, default=1,
         help="Hutchinson probes per image (a standard error needs 2 or more)")
    flag(g, "likelihood-eps", type=positive_float,
         help="ODE start time, or the bound's eps (default the SDE's likelihood_eps, 1e-5)")
    flag(g, "rtol", type=positive_float, default=1e-5, help="ODE solver rtol")
    flag(g, "atol", type=positive_float, default=1e-5, help="ODE solver atol")
    flag(g, "levels", type=positive_int, help="pixel values per channel (default: the "
         "dataset's: 256 for 8-bit data, 17 for DIGITS; unknown levels are an error)")
    flag(g, "bits", type=positive_int, help="bits per pixel value: --levels 2^bits")
    flag(g, "fresh", action="store_true", help=fresh_help)


def add_arguments(parser):
    add_run_flags(parser)
    add_source_flags(parser)
    add_likelihood_flags(parser)
    # The ODE start time is this command's only eps: --eps is accepted for it.
    parser.add_argument("--eps", dest="likelihood_eps", type=positive_float,
                        help="same as --likelihood-eps")
    flag(parser, "split", default="test", choices=["train", "test"], help="data split")
    flag(parser, "out", help="output folder (default <workdir>/eval); a path ending in .jsonl "
         "is taken as --records")
    flag(parser, "records", help="JSONL records file (default <out>/bpd_<split>_<key>.jsonl)")


def _fix(args):
    if args.out and args.out.endswith(".jsonl") and not args.records:
        args.records, args.out = args.out, None
    return args


def main(argv=None):
    """``python -m likelihood.evaluate ...``: the same command under its documented name."""
    import sys
    from sde_cli.app import run as run_command
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_command("likelihood", argv, prog="python -m likelihood.evaluate")


@command("likelihood", "Bits/dim of a data split under a checkpoint (probability-flow ODE or the "
         "variational bound), resumable: <out>/bpd_<split>_<key>.jsonl records and .json summary.",
         add_arguments)
def run(args):
    from evaluation.bits_per_dim import summary_path
    from training.distributed import cleanup_distributed, init_distributed
    args = _fix(args)
    source, config, model, sde, device = load_score_model(args)
    out_dir = _out_dir(args, source)
    info = init_distributed(device="cuda" if device.type == "cuda" else str(device))
    try:
        model = model.to(info.device)
        t0 = time.time()
        res = bits_per_dim(model, sde, config, args, info.device, args.split, out_dir, source,
                           dist=info)
    finally:
        cleanup_distributed()
    if res is None:  # not rank 0
        return 0
    res.update(checkpoint=source, seconds=time.time() - t0, processes=info.world_size,
               sde=str(config.training.sde))
    path = write_json(summary_path(res["records"]), res)
    what = "upper bound" if res["settings"]["method"] == "bound" else "probability-flow ODE"
    print(f"bits/dim ({what}, {res['settings']['dequantize']} dequantization) on "
          f"{res['num_images']} {args.split} images x {res['repeats']} repeat(s): "
          f"{res['bpd']:.4f} +- {res['bpd_stderr']:.4f} (standard error over images of each "
          f"image's mean over the repeats; eps {res['eps']:g}; {path})")
    return 0
