"""Likelihood: this toolkit against the original's approach, on the exact-score oracle and on a
real network (the NCSN++ checkpoint of tests/data/score_sde_pytorch).

    OMP_NUM_THREADS=1 python -m benchmarks.likelihood [--device cpu|cuda] [--batch 16] \
        [--tol 1e-5] [--sdes ve,vp,subvp] [--network-batch 4]

(run as a module from the repository root: as a script, this file's name would hide the
`likelihood` package).

The original's approach, reproduced here on the oracle: SciPy's RK45 (`solve_ivp`) over the
whole batch flattened into one NumPy vector [x, delta], float32 tensors for every evaluation
(NumPy <-> torch round trips in the right-hand side), one Rademacher probe fixed for the solve,
SciPy's error norm (RMS over the whole state). The toolkit: `log_likelihood` (torchdiffeq dopri5,
the same Dormand-Prince RK45 pair, on the tensor's device; per-sample error norm by default).

Both run at the same rtol = atol (default 1e-5, the original's) on the same data and, for the
Hutchinson rows, the same probe. Columns: NFE; milliseconds per image (best of --repeats; CPU
time of the process on the CPU, wall time on a GPU); the error in bits/dim against the closed-form log p_eps(x) (mean and max |.| over the batch; with one probe this is
mostly probe noise); and the solver error: against the same estimator and probe solved at
rtol = atol = 1e-9 (like with like, so probe noise and the SDE's prior-vs-p_T mismatch cancel).
Data: a Gaussian (D = 64, full covariance) and a 3-component Gaussian mixture (D = 3x32x32 = 3072,
diagonal covariances), samples drawn from the exact marginal at eps. The network rows have no
closed form: their error is against the toolkit solved at tol / 100.
"""

import argparse
import math
import sys
import time
from pathlib import Path

if not __package__:
    sys.exit("run as a module from the repository root: python -m benchmarks.likelihood")

import numpy as np
import torch
from scipy.integrate import solve_ivp

from likelihood import draw_probes, log_likelihood
from sde_lib import VESDE, VPSDE, oracle, subVPSDE


def original_approach(score_fn, sde, x, probe, rtol, atol, eps):
    """log p_eps(x) the way the original computes it: SciPy RK45 on the flattened batch."""
    shape, B = x.shape, x.shape[0]
    flow = sde.reverse(score_fn, probability_flow=True)

    def rhs(t, y):
        xt = torch.from_numpy(y[:-B]).reshape(shape).to(device=x.device, dtype=torch.float32)
        vec_t = torch.full((B,), t, device=x.device, dtype=torch.float32)
        with torch.enable_grad():
            xt.requires_grad_(True)
            f = flow.sde(xt, vec_t)[0]
            (vjp,) = torch.autograd.grad((f * probe).sum(), xt)
        div = (vjp * probe).flatten(1).sum(1)
        return np.concatenate([f.detach().cpu().numpy().ravel(), div.cpu().numpy()])

    y0 = np.concatenate([x.cpu().numpy().ravel().astype(np.float64), np.zeros(B)])
    sol = solve_ivp(rhs, (eps, sde.T), y0, rtol=rtol, atol=atol, method="RK45")
    z = torch.from_numpy(sol.y[:-B, -1]).reshape(shape)
    delta = torch.from_numpy(sol.y[-B:, -1])
    return sde.prior_logp(z) + delta, sol.nfev


def datasets():
    g = torch.Generator().manual_seed(0)
    # Small overall means, so the SDE's prior-vs-p_T mismatch stays below the errors of interest
    # (see tests/test_likelihood.py).
    d64 = oracle.gaussian(0.05 * torch.randn(64, generator=g, dtype=torch.float64),
                          oracle.random_covariance(64, generator=g), event_shape=(1, 8, 8))
    D = 3 * 32 * 32
    means = 0.3 * torch.randn(3, D, generator=g, dtype=torch.float64)
    variances = 0.02 + 0.3 * torch.rand(3, D, generator=g, dtype=torch.float64)
    d3072 = oracle.gaussian_mixture(means - means.mean(0), variances, event_shape=(3, 32, 32))
    return {"gauss D=64": d64, "mixture D=3072": d3072}


FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "score_sde_pytorch"


def network_comparison(args, device):
    """Both methods on a real network: the NCSN++ checkpoint of the tests' fixture (original
    format, VE, 16x16x3, nf 16), on `args.network_batch` 8-bit images made from the fixture's
    inputs, with the same probe. No closed form here: the column is the two methods' difference."""
    import json
    import configs
    import networks
    from likelihood import uniform_dequantization
    from sde_lib import get_sde
    if not (FIXTURE / "index.json").exists():
        print(f"(network comparison skipped: no fixture at {FIXTURE})")
        return
    entry = json.loads((FIXTURE / "index.json").read_text())["ve_ncsnpp_cifar"]
    config = configs.load_config(entry["config_module"], entry["overrides"])
    sde = get_sde(config)
    model = networks.load_checkpoint(FIXTURE / "ve_ncsnpp_cifar.pth", config, ema=True)
    model = model.to(device).eval().requires_grad_(False)
    score = networks.get_score_fn(sde, model, continuous=config.training.continuous)
    io = torch.load(FIXTURE / "ve_ncsnpp_cifar.io.pt", weights_only=True)
    B = args.network_batch
    images = torch.round(255 * torch.sigmoid(io["x"][:B])) / 255  # data range [0, 1]
    x = uniform_dequantization(images, (0.0, 1.0), generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    probe = draw_probes(1, x, "rademacher", torch.Generator().manual_seed(2))[0]
    D, tol, eps = x[0].numel(), args.tol, sde.likelihood_eps
    print(f"\nNCSN++ fixture (VE, {tuple(x.shape[1:])}), batch {B}, rtol=atol={tol}, 1 probe; "
          f"reference: toolkit per-sample norm at rtol=atol={tol / 100:g}")

    def toolkit(norm, rtol):
        r = log_likelihood(score, sde, x, rtol=rtol, atol=rtol, error_norm=norm,
                           generator=torch.Generator().manual_seed(2))
        return r.logp.cpu(), r.nfe

    (ref, ref_nfe), _ = timed(lambda: toolkit("per_sample", tol / 100), 1, device)
    ref = -ref.double() / (D * math.log(2)) + 8.0
    print(f"| method | NFE | ms/image | bits/dim (mean) | max abs error, bits/dim (reference NFE "
          f"{ref_nfe}) |")
    print("|---|---|---|---|---|")
    rows = [("original (SciPy RK45, batch norm)",
             lambda: original_approach(score, sde, x, probe, tol, tol, eps)),
            ("toolkit dopri5, per-sample norm", lambda: toolkit("per_sample", tol)),
            ("toolkit dopri5, batch norm", lambda: toolkit("batch", tol))]
    for label, fn in rows:
        (logp, nfe), seconds = timed(fn, 1, device)
        bpd = -logp.double() / (D * math.log(2)) + 8.0
        print(f"| {label} | {nfe} | {1e3 * seconds / B:.0f} | {bpd.mean():.4f} | "
              f"{(bpd - ref).abs().max():.1e} |", flush=True)


def timed(fn, repeats, device):
    """fn's result and its best time over `repeats` runs: process CPU time on the CPU (robust to
    other jobs on a shared machine; the runs use one thread), wall time around syncs on a GPU."""
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, clock() - t0)
    return out, best


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--repeats", type=int, default=2, help="best of N timings")
    p.add_argument("--sdes", default="ve,vp,subvp", help="comma-separated; '' for none")
    p.add_argument("--network-batch", type=int, default=4, dest="network_batch",
                   help="images for the real-network comparison (0: skip it)")
    args = p.parse_args()
    device = torch.device(args.device)
    sdes = {"ve": VESDE, "vp": VPSDE, "subvp": subVPSDE}
    tol, B = args.tol, args.batch
    print(f"device={device} batch={B} rtol=atol={tol} torch={torch.__version__} "
          f"threads={torch.get_num_threads()}")
    print("| data | SDE | method | NFE | ms/image | err bpd mean | err bpd max "
          "| solver err bpd max |")
    print("|---|---|---|---|---|---|---|---|")
    for dname, dist in datasets().items():
        D = dist.dim
        for sname in filter(None, args.sdes.split(",")):
            sde = sdes[sname]()
            marg = dist.marginal(sde)
            eps = sde.likelihood_eps
            x = marg.sample(torch.full((B,), eps), generator=torch.Generator().manual_seed(1))
            exact = marg.log_prob(x.double(), torch.full((B,), eps, dtype=torch.float64))
            x = x.to(device)
            score = lambda xx, tt: marg.score(xx, tt)  # noqa: E731
            probe = draw_probes(1, x, "rademacher", torch.Generator().manual_seed(2))[0]

            def toolkit(estimator="rademacher", n_probes=1, rtol=tol, atol=tol, **kw):
                r = log_likelihood(score, sde, x, estimator=estimator, n_probes=n_probes,
                                   rtol=rtol, atol=atol,
                                   generator=torch.Generator().manual_seed(2), **kw)
                return r.logp.cpu(), r.nfe

            ref_probe = toolkit(rtol=1e-9, atol=1e-9)[0]
            rows = [("original (SciPy RK45, batch norm, 1 probe)",
                     lambda: original_approach(score, sde, x, probe, tol, tol, eps), ref_probe),
                    ("toolkit dopri5, per-sample norm, 1 probe", toolkit, ref_probe),
                    ("toolkit dopri5, batch norm, 1 probe",
                     lambda: toolkit(error_norm="batch"), ref_probe),
                    ("toolkit dopri5, per-sample norm, 4 probes",
                     lambda: toolkit(n_probes=4), None)]
            if D <= 256:
                rows.append(("toolkit dopri5, per-sample norm, exact",
                             lambda: toolkit("exact"), toolkit("exact", rtol=1e-9, atol=1e-9)[0]))
            for label, fn, ref in rows:
                (logp, nfe), seconds = timed(fn, args.repeats, device)
                err = (logp.double() - exact).abs() / (D * math.log(2))
                solver = ("" if ref is None else
                          f"{((logp.double() - ref.double()).abs() / (D * math.log(2))).max():.1e}")
                print(f"| {dname} | {sname} | {label} | {nfe} | {1e3 * seconds / B:.1f} | "
                      f"{err.mean():.4f} | {err.max():.4f} | {solver} |", flush=True)
    if args.network_batch > 0:
        network_comparison(args, device)


if __name__ == "__main__":
    main()
