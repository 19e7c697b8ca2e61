"""Maximum-likelihood training (likelihood/importance.py, training/losses.py): the variance of
the per-image training objective with importance-sampled t, and a small training comparison on
the built-in digits, printed as Markdown for benchmarks/RESULTS.md.

    OMP_NUM_THREADS=1 python -m benchmarks.ml_training variance [--draws 128]
    OMP_NUM_THREADS=1 python -m benchmarks.ml_training train --run default|lw|lw_is \
        [--steps 1000] [--out DIR]
    OMP_NUM_THREADS=1 python -m benchmarks.ml_training evaluate --run RUN [--steps ...] [--out DIR]
    OMP_NUM_THREADS=1 python -m benchmarks.ml_training report --out DIR [--draws 128]

`variance`: the likelihood-weighted DSM objective 1/2 g(t)^2 ||s + z / sigma||^2 of each image,
over `--draws` draws of (t, z), with t uniform on [eps, T] or importance-sampled (density
g^2 / sigma^2, reweighted): the mean over images of the per-image variance for each, and their
ratio, on the oracle (exact score of a 3-component Gaussian mixture, D = 64). `train`: one run of
the digits VP config (`builtin/digits_vp`, seed 42) with `--steps` Adam steps: default weighting
(sigma^2), likelihood weighting (g^2), or likelihood weighting with importance sampling. `evaluate`
(or `report`, which also prints the table of all runs): for each finished run (EMA weights), held-out bits/dim on the 300 test digits (17 levels, uniform
dequantization) by the ODE (first 16 images, one Rademacher probe, rtol = atol = 1e-4) and by
the bound (all 300, 32 draws), the digits-FID of 128 samples (the config's PC sampler, 500 steps)
against the training digits, and the same variance ratio on the digits model (32 test images).
"""

import argparse
import json
import math
import os
import platform
import sys
import time

if not __package__:
    sys.exit("run as a module from the repository root: python -m benchmarks.ml_training")

import torch

from likelihood import bits_per_dim_details
from sde_lib import VESDE, VPSDE, oracle, subVPSDE
from sde_base.fileio import write_json
from training.losses import dsm_loss

RUNS = {"default": {}, "lw": {"likelihood_weighting": True},
        "lw_is": {"likelihood_weighting": True, "importance_sampling": True}}


def per_image_variance(score_fn, sde, x, draws, importance_sampling, seed=0):
    """Mean over images of the variance (over draws of t and z) of the likelihood-weighted DSM
    objective, and its mean (nats-scale, 1/2 sum over dimensions)."""
    B = x.shape[0]
    rep = x.repeat_interleave(draws, 0)
    vals = []
    with torch.no_grad():
        for chunk in rep.split(4096):
            vals.append(dsm_loss(score_fn, sde, chunk, likelihood_weighting=True,
                                 importance_sampling=importance_sampling, batch_mean=False,
                                 generator=torch.Generator().manual_seed(seed + len(vals))))
    v = torch.cat(vals).double().reshape(B, draws)
    return v.var(1).mean().item(), v.mean().item()


def mixture(D=64):
    g = torch.Generator().manual_seed(1)
    covs = torch.stack([oracle.random_covariance(D, generator=g, min_eig=0.02, max_eig=0.3)
                        for _ in range(3)])
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    means = 0.3 * torch.randn(3, D, generator=g, dtype=torch.float64)
    return oracle.gaussian_mixture(means - weights @ means, covs, weights, event_shape=(1, 8, 8))


def variance_rows(draws):
    rows = []
    dist = mixture()
    x = dist.sample(64, generator=torch.Generator().manual_seed(2))
    for name, sde in (("VE", VESDE()), ("VP", VPSDE()), ("sub-VP", subVPSDE())):
        score = dist.marginal(sde).score
        vu, mu = per_image_variance(score, sde, x, draws, False)
        vi, mi = per_image_variance(score, sde, x, draws, True)
        rows.append((f"oracle mixture D=64, exact score, {name}", mu, vu, mi, vi))
    return rows


def print_variance(rows, draws):
    print(f"\nPer-image variance of the likelihood-weighted DSM objective over {draws} draws of "
          f"(t, z) per image (mean over images)\n")
    print("| data / model | mean, uniform t | variance, uniform t | mean, IS | variance, IS | "
          "ratio uniform / IS |")
    print("|---|---|---|---|---|---|")
    for name, mu, vu, mi, vi in rows:
        print(f"| {name} | {mu:.4g} | {vu:.4g} | {mi:.4g} | {vi:.4g} | {vu / vi:.3g} |")


def digits_config(run, steps):
    import configs
    c = configs.get_config("builtin/digits_vp")
    c.training.n_iters = steps
    c.training.eval_freq = 0
    c.training.snapshot_freq = steps
    c.training.snapshot_freq_for_preemption = steps
    for k, v in RUNS[run].items():
        c.training[k] = v
    return c


def train_run(run, steps, out):
    from training.train import train
    c = digits_config(run, steps)
    workdir = os.path.join(out, run)
    res = train(c, workdir, device="cpu", progress=False)
    print(f"{run}: {res['step']} steps, final loss {res['final_loss']:.4g}, "
          f"{res['train_seconds']:.1f} s")


def load_run(run, steps, out):
    from networks import load_checkpoint
    c = digits_config(run, steps)
    path = os.path.join(out, run, "checkpoints-meta", "checkpoint.pth")
    model = load_checkpoint(path, c, ema=True)
    model.eval()
    return c, model


def evaluate_run(run, steps, out, draws, quick=False):
    from networks import get_score_fn
    from sde_lib import get_sde
    from training.data import load_dataset
    c, model = load_run(run, steps, out)
    sde = get_sde(c)
    score_fn = get_score_fn(sde, model, continuous=True)
    test = load_dataset(c, "test")
    images = torch.stack([test[i][0] for i in range(len(test))]) * 2 - 1  # [-1, 1]
    row = {"run": run, "steps": steps}
    t0 = time.time()
    with torch.no_grad():
        b = bits_per_dim_details(score_fn, sde, images, data_range=(-1.0, 1.0), levels=17,
                                 method="bound", n_samples=32,
                                 generator=torch.Generator().manual_seed(0))
    row.update(bound_bpd=b.bpd.mean().item(), bound_se=(b.bpd.std() / math.sqrt(len(b.bpd))).item(),
               bound_mc_se=(b.bpd_stderr.pow(2).sum().sqrt() / len(b.bpd)).item(),
               bound_seconds=time.time() - t0)
    if not quick:
        row.update(ode_and_samples(model, sde, score_fn, c, images, b))
    vu, mu = per_image_variance(score_fn, sde, images[:32], draws, False)
    vi, mi = per_image_variance(score_fn, sde, images[:32], draws, True)
    row.update(var_uniform=vu, var_is=vi, mean_uniform=mu, mean_is=mi)
    write_json(os.path.join(out, run, "benchmark_quick.json" if quick else "benchmark.json"), row)
    return row


def ode_and_samples(model, sde, score_fn, c, images, b):
    """The slow part of `evaluate_run`: ODE bits/dim of 16 test images and 128 samples' FID."""
    from evaluation.digits_features import digits_metrics
    from training.sampling import draw_samples
    row = {}
    t0 = time.time()
    o = bits_per_dim_details(score_fn, sde, images[:16], data_range=(-1.0, 1.0), levels=17,
                             method="ode", n_probes=1, rtol=1e-4, atol=1e-4,
                             generator=torch.Generator().manual_seed(0))
    row.update(ode_bpd=o.bpd.mean().item(), ode_se=(o.bpd.std() / 4).item(), ode_nfe=o.nfe,
               ode_seconds=time.time() - t0,
               bound_bpd_first16=b.bpd[:16].mean().item())
    t0 = time.time()
    samples, nfe, _ = draw_samples(model, sde, c, 128, generator=torch.Generator().manual_seed(1))
    m = digits_metrics(samples, "train", kid_subsets=10, kid_subset_size=128)
    row.update(digits_fid=m["digits_fid"], mean_max_prob=m["mean_max_prob"], sample_nfe=nfe,
               sample_seconds=time.time() - t0)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["variance", "train", "evaluate", "report"])
    p.add_argument("--run", choices=sorted(RUNS), help="train: which run")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--draws", type=int, default=128)
    p.add_argument("--out", default="runs/ml_training")
    p.add_argument("--quick", action="store_true",
                   help="evaluate: the bound and the variance only (no ODE, no samples)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{platform.platform()}, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, {time.strftime('%Y-%m-%d %H:%M')}")
    if args.part == "variance":
        t0 = time.time()
        print_variance(variance_rows(args.draws), args.draws)
        print(f"\n({time.time() - t0:.1f} s)")
    elif args.part in ("train", "evaluate"):
        if args.run is None:
            p.error(f"{args.part} needs --run")
        if args.part == "train":
            train_run(args.run, args.steps, args.out)
        else:
            print(json.dumps(evaluate_run(args.run, args.steps, args.out, args.draws,
                                          quick=args.quick)))
    else:
        rows = []
        for r in RUNS:
            done = os.path.join(args.out, r, "benchmark.json")
            if os.path.exists(done):  # evaluated before (`evaluate --run`)
                with open(done) as f:
                    rows.append(json.load(f))
            elif os.path.exists(os.path.join(args.out, r, "checkpoints-meta", "checkpoint.pth")):
                rows.append(evaluate_run(r, args.steps, args.out, args.draws))
        print(f"\nDigits VP, {args.steps} steps, seed 42, EMA weights; 17-level test digits "
              f"in [-1, 1], uniform dequantization\n")
        print("| run | bound bits/dim (300 test, 32 draws) | ODE bits/dim (first 16, rtol 1e-4, NFE) | "
              "bound on the same 16 | digits-FID (128 samples) | mean max-prob | "
              "objective variance ratio uniform / IS (32 test, %d draws) |" % args.draws)
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['run']} | {r['bound_bpd']:.3f} +- {r['bound_se']:.3f} | "
                  f"{r['ode_bpd']:.3f} +- {r['ode_se']:.3f} ({r['ode_nfe']}) | "
                  f"{r['bound_bpd_first16']:.3f} | {r['digits_fid']:.3f} | "
                  f"{r['mean_max_prob']:.3f} | {r['var_uniform'] / r['var_is']:.3g} |")
        print("\n" + json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
