"""Cost of the samplers' NaN/inf checks: each sampler timed with the checks on (as shipped) and
with them patched out, interleaved, on a cheap exact score (the worst case: the check is a large
share of an evaluation) and on a small score network.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m benchmarks.finite_checks [--repeats 7]
        [--device cpu] [--quick]

(run as a module from the repository root.)

The checks: every score evaluation in `solvers.sample` (`CountingScore.check`: a sum of the
output, finite unless it holds NaN/inf, and one host read), the result of each batch, the
Langevin corrector's finite-sample mean, and the ODE and adaptive solvers' per-sample guards.
"Off" replaces each by a no-op. Reported: the median time of one score evaluation and of one
check of its output; then the median wall time of a whole `solvers.sample` call over the
repeats, and the median of the per-repeat ratio on/off - 1 (on a shared machine this whole-run
figure carries a few per cent of timing noise either way; the per-evaluation ratio is the
robust one).
"""

import argparse
import contextlib
import datetime
import importlib
import os
import platform
import statistics
import sys
import time

if not __package__:
    sys.exit("run as a module from the repository root: python -m benchmarks.finite_checks")

import torch

import solvers
from sde_lib import VPSDE, oracle

# the modules (solvers.adaptive, as an attribute, is the sampler function of that name)
evaluations, correctors, ode, adaptive, sampling = (
    importlib.import_module(f"solvers.{m}")
    for m in ("evaluations", "correctors", "ode", "adaptive", "sampling"))


@contextlib.contextmanager
def checks_off():
    """Every non-finite check of the samplers replaced by a no-op."""
    patches = [(evaluations.CountingScore, "check", lambda self, out, t: None),
               (correctors, "_finite_mean", lambda v: v.mean()),
               (ode, "nonfinite_rows", lambda x: None),
               (adaptive, "nonfinite_rows", lambda x: None),
               (sampling, "check_finite_samples", lambda *a, **k: [])]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def mixture_score():
    g = torch.Generator().manual_seed(0)
    means = 3 * torch.randn(4, 2, generator=g, dtype=torch.float64)
    dist = oracle.gaussian_mixture(means, torch.full((4,), 0.2, dtype=torch.float64))
    sde = VPSDE()
    return dist.marginal(sde).score, sde, (256, 2)


def network_score(device):
    import configs
    import networks
    from sde_lib import get_sde
    config = configs.get_config("builtin/digits_vp")
    sde = get_sde(config)
    torch.manual_seed(0)
    model = networks.create_model(config, device=device).eval()
    score = networks.get_score_fn(sde, model, continuous=config.training.continuous)
    shape = (16, config.data.num_channels, config.data.image_size, config.data.image_size)
    return score, sde, shape


SAMPLERS = [("pc", {"steps": 50}), ("ode", {"rtol": 1e-3, "atol": 1e-3}),
            ("heun", {"steps": 18}), ("dpm_solver++", {"steps": 20}),
            ("unipc", {"steps": 10}), ("adaptive", {})]


def per_evaluation(score, sde, shape, device, repeats=200):
    """Median seconds of one score evaluation and of one check of its output
    (`CountingScore.check`), on the same tensors."""
    g = torch.Generator().manual_seed(2)
    x = sde.prior_sampling(shape, generator=g).to(device)
    t = torch.full((shape[0],), 0.5, device=device)
    counted = evaluations.CountingScore(score)
    with torch.no_grad():
        out = score(x, t)
        evals, checks = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            score(x, t)
            if device.type == "cuda":
                torch.cuda.synchronize()
            evals.append(time.perf_counter() - start)
            start = time.perf_counter()
            counted.check(out, t)
            checks.append(time.perf_counter() - start)
    return statistics.median(evals), statistics.median(checks)


def run_once(score, sde, shape, sampler, options, device):
    g = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    res = solvers.sample(score, sde, shape, sampler=sampler, generator=g, device=device,
                         **options)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, res.nfe


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="3 repeats, the exact score only")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    repeats = 3 if args.quick else args.repeats
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cases = [("exact 2-D mixture score, batch 256", mixture_score())]
    if not args.quick:
        cases.append(("digits NCSN++ (builtin/digits_vp, random weights), batch 16",
                      network_score(device)))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} thread(s)), device {device}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"command: python -m benchmarks.finite_checks {' '.join(argv or sys.argv[1:])}")
    print()
    print("One evaluation against one check of its output (median of 200):")
    print()
    print("| score | evaluation (ms) | check (ms) | check / evaluation |")
    print("|---|---|---|---|")
    for label, (score, sde, shape) in cases:
        ev, ch = per_evaluation(score, sde, shape, device)
        print(f"| {label} | {1e3 * ev:.3f} | {1e3 * ch:.4f} | {100 * ch / ev:.2f} % |",
              flush=True)
    print()
    print(f"Whole sampler runs, checks on and off interleaved (median of {repeats}):")
    print()
    print("| score | sampler | NFE | time on (s) | time off (s) | overhead |")
    print("|---|---|---|---|---|---|")
    for label, (score, sde, shape) in cases:
        for sampler, options in SAMPLERS:
            if sampler not in solvers.list_samplers():
                continue
            run_once(score, sde, shape, sampler, options, device)      # warm-up
            on, off, ratios = [], [], []
            for _ in range(repeats):
                t_on, nfe = run_once(score, sde, shape, sampler, options, device)
                with checks_off():
                    t_off, _ = run_once(score, sde, shape, sampler, options, device)
                on.append(t_on)
                off.append(t_off)
                ratios.append(t_on / t_off - 1)
            print(f"| {label} | {sampler} | {nfe} | {statistics.median(on):.3f} | "
                  f"{statistics.median(off):.3f} | {100 * statistics.median(ratios):+.1f} % |",
                  flush=True)


if __name__ == "__main__":
    main()
