"""Bits/dim of a dataset split under a checkpoint, resumable:

    python -m likelihood.evaluate --config ve/cifar10_ncsnpp_continuous --checkpoint ckpt.pth \\
        [--split test] [--num-batches N] [--batch-size B] [--out bpd.jsonl] [--data-dir DIR] \\
        [--estimator rademacher|gaussian|exact] [--n-probes K] [--levels L] \
        [--config.eval.batch_size=...]

Each batch is dequantized with its own generator, seeded from (seed, batch index), which also draws
the Hutchinson probes, so a batch's numbers do not depend on which batches ran before it. After
each batch one JSON line (batch index, image range, bits/dim per image, NFE, settings) is added to
the --out file (rewritten atomically); a stopped run started again with the same settings skips
the batches already there. The summary gives the mean bits/dim over the recorded images and its
standard error (sample std / sqrt(n): dequantization, probe and data noise together).
--repeats R goes over the split R times with fresh noise, as the original does 5 times for the
test split.
"""

import argparse
import json
import math
import os
import sys
import time

import torch

from likelihood.bpd import bits_per_dim_details
from likelihood.divergence import ESTIMATORS


def batch_generator(seed, index):
    """The CPU generator of batch `index`: dequantization noise and probes."""
    from training.pipeline import mix_seed
    return torch.Generator().manual_seed(mix_seed(seed, index))


def read_records(path, settings):
    """{batch index: record} of a JSONL results file (empty if absent); a ValueError if a line
    is not JSON or was written with other settings."""
    records = {}
    if not os.path.exists(path):
        return records
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                index = int(rec["batch"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}, line {n}: not a results record ({e})") from None
            if rec.get("settings") != settings:
                diff = {k: (rec.get("settings", {}).get(k), v) for k, v in settings.items()
                        if rec.get("settings", {}).get(k) != v}
                raise ValueError(f"{path}, line {n}, was written with other settings "
                                 f"(recorded, now): {diff}; pass another --out to start afresh")
            records[index] = rec
    return records


def write_records(path, records):
    """All records, one JSON line each in batch order, written to a temporary file and moved."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        for index in sorted(records):
            f.write(json.dumps(records[index]) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def summarize(records):
    """Mean bits/dim over every recorded image, its standard error, and the mean NFE."""
    bpd = torch.tensor([v for r in records.values() for v in r["bpd"]], dtype=torch.float64)
    n = bpd.numel()
    return {"bpd": bpd.mean().item() if n else math.nan,
            "bpd_stderr": (bpd.std() / math.sqrt(n)).item() if n > 1 else math.nan,
            "num_images": n, "num_batches": len(records),
            "nfe_mean": (sum(r["nfe"] for r in records.values()) / len(records)
                         if records else math.nan)}


def evaluate_split(score_fn, sde, dataset, *, data_range, batch_size, out, seed, settings,
                   num_batches=None, repeats=1, device="cpu", progress=True, **kwargs):
    """Bits/dim of `dataset` (items (image [C, H, W] in [0, 1], label)) in batches, each recorded
    in `out` as it finishes; batches already in `out` are skipped. `data_range` is where the data
    scaler sends [0, 1] (the images are mapped linearly onto it). Returns the summary dict.
    Other keywords go to `bits_per_dim_details` (levels, estimator, n_probes, rtol, atol, eps,
    ...)."""
    from tqdm import tqdm
    from training.pipeline import get_images
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    lo, hi = data_range
    per_pass = math.ceil(len(dataset) / batch_size)
    total = per_pass * repeats if num_batches is None else min(num_batches, per_pass * repeats)
    records = read_records(out, settings)
    todo = [b for b in range(total) if b not in records]
    bar = tqdm(total=total, initial=total - len(todo), disable=not progress, unit="batch",
               desc="bits/dim")
    for b in todo:
        start = (b % per_pass) * batch_size
        stop = min(start + batch_size, len(dataset))
        images, _ = get_images(dataset, torch.arange(start, stop))
        images = (lo + (hi - lo) * images).to(device)
        t0 = time.time()
        res = bits_per_dim_details(score_fn, sde, images, data_range=data_range,
                                   generator=batch_generator(seed, b), **kwargs)
        stderr = res.bpd_stderr.tolist()
        records[b] = {"batch": b, "start": start, "stop": stop, "bpd": res.bpd.tolist(),
                      "bpd_stderr": [None if math.isnan(s) else s for s in stderr],
                      "nfe": res.nfe, "eps": res.eps, "seconds": time.time() - t0,
                      "settings": settings}
        write_records(out, records)
        bar.update(1)
        bar.set_postfix(bpd=f"{summarize(records)['bpd']:.4f}")
    bar.close()
    return summarize({b: r for b, r in records.items() if b < total})


def parse_args(argv=None):
    from sde_lib.run import split_config_overrides
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, overrides = split_config_overrides(argv)
    p = argparse.ArgumentParser(prog="python -m likelihood.evaluate",
                                description="Bits/dim of a dataset split under a checkpoint "
                                "(probability-flow ODE); resumable. --config.x.y=value overrides "
                                "config fields.")
    p.add_argument("--config", required=True, help="config name or file")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (toolkit or original .pth)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--num-batches", "--num_batches", type=int, dest="num_batches",
                   help="evaluate the first N batches only (default: the whole split)")
    p.add_argument("--batch-size", "--batch_size", type=int, dest="batch_size",
                   help="images per batch (default config.eval.batch_size)")
    p.add_argument("--repeats", type=int, default=1, help="passes over the split (default 1)")
    p.add_argument("--out", help="JSONL results file (default <checkpoint>.bpd_<split>.jsonl)")
    p.add_argument("--data-dir", "--data_dir", dest="data_dir", help="folder of the dataset files")
    p.add_argument("--estimator", default="rademacher", choices=ESTIMATORS)
    p.add_argument("--n-probes", "--n_probes", type=int, default=1, dest="n_probes",
                   help="Hutchinson probes per image (standard error needs 2 or more)")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--eps", type=float, help="ODE start time (default the SDE's likelihood_eps)")
    p.add_argument("--bits", type=int, help="bits per pixel value: 2^bits levels")
    p.add_argument("--levels", type=int, help="number of pixel values (default: the dataset's "
                   "`levels`, 17 for DIGITS, else 256)")
    p.add_argument("--seed", type=int, help="default config.seed")
    p.add_argument("--device", help="default cuda if available, else cpu")
    p.add_argument("--no-progress", "--no_progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    args.config_overrides = overrides
    return args


def load_setup(args):
    """(config, sde, score_fn, dataset, data_range) from the command line's names."""
    import configs
    import networks
    from sde_lib import get_sde
    from training.data import get_data_scaler, load_dataset
    config = configs.load_config(args.config, args.config_overrides)
    sde = get_sde(config)
    model = networks.load_checkpoint(args.checkpoint, config, ema=True)
    model = model.to(args.device).eval().requires_grad_(False)
    score_fn = networks.get_score_fn(sde, model, continuous=config.training.continuous)
    dataset = load_dataset(config, args.split, data_dir=args.data_dir)
    scaler = get_data_scaler(config)
    data_range = (float(scaler(torch.tensor(0.0))), float(scaler(torch.tensor(1.0))))
    return config, sde, score_fn, dataset, data_range


def main(argv=None):
    args = parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    config, sde, score_fn, dataset, data_range = load_setup(args)
    seed = int(config.seed if args.seed is None else args.seed)
    batch_size = int(args.batch_size or config.eval.batch_size)
    out = args.out or f"{args.checkpoint}.bpd_{args.split}.jsonl"
    eps = sde.likelihood_eps if args.eps is None else args.eps
    levels = (args.levels if args.levels is not None else 2 ** args.bits if args.bits is not None
              else getattr(dataset, "levels", None) or 256)
    settings = {"config": args.config, "overrides": args.config_overrides,
                "checkpoint": os.path.abspath(args.checkpoint), "split": args.split,
                "batch_size": batch_size, "seed": seed, "estimator": args.estimator,
                "n_probes": args.n_probes, "rtol": args.rtol, "atol": args.atol, "eps": eps,
                "levels": levels, "data_range": list(data_range)}
    summary = evaluate_split(score_fn, sde, dataset, data_range=data_range,
                             batch_size=batch_size, out=out, seed=seed, settings=settings,
                             num_batches=args.num_batches, repeats=args.repeats,
                             device=args.device, progress=args.progress, levels=levels,
                             estimator=args.estimator,
                             n_probes=args.n_probes, rtol=args.rtol, atol=args.atol, eps=eps)
    summary.update(split=args.split, eps=eps, levels=levels, out=out)
    print(json.dumps(summary))
    print(f"bits/dim on {summary['num_images']} {args.split} images: {summary['bpd']:.4f} "
          f"+- {summary['bpd_stderr']:.4f} (standard error; eps = {eps:g}; {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
