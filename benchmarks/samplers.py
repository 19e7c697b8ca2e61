"""Samplers on exact-score Gaussian mixtures: NFE against distribution error.

    OMP_NUM_THREADS=1 python -m benchmarks.samplers [--quick] [--n2 N] [--n64 N]
        [--sdes ve,vp,subvp] [--data ring2d,mix64] [--seed S] [--output FILE]

(run as a module from the repository root.)

Data (exact scores of every marginal p_t, `sde_lib.oracle`):
  ring2d: 8 modes on a circle of radius 4 in 2-D, weights proportional to 1, ..., 8 (so that the
          weight error means something), each mode a random 2x2 covariance with eigenvalues in
          [0.02, 0.15];
  mix64:  8 modes in 64-D, means 2 N(0, I) (pairwise distances about 23, max below
          sigma_max = 50), weights proportional to 1, ..., 8, each a random full covariance with
          eigenvalues in [0.05, 1].
Each sampler draws n samples from the SDE's prior (one seed per row) and is compared with n
exact draws of p_0 (another seed):
  SW2        sliced 2-Wasserstein distance (256 random directions, fixed);
  weight TV  total variation between the mode frequencies (each sample assigned to its most
             likely component) and the true weights;
  cov err    within-mode covariance error ||C_k - Sigma_k||_F / ||Sigma_k||_F, weight-averaged;
  var bias   within-mode variance bias tr C_k / tr Sigma_k - 1, weight-averaged (signed);
The row "exact samples" is a second set of exact draws: the Monte-Carlo floor of each column.
The score is the oracle's, evaluated batched over the components (checked against
`oracle.Marginal.score` at start-up).
"""

import argparse
import datetime
import math
import os
import platform
import sys
import time

if not __package__:
    sys.exit("run as a module from the repository root: python -m benchmarks.samplers")

import torch

import solvers
from sde_lib import VESDE, VPSDE, oracle, subVPSDE
from solvers.common import coefficients

SDES = {"ve": VESDE, "vp": VPSDE, "subvp": subVPSDE}


# ----------------------------------------------------------------------------- data and score

def ring2d(generator):
    K = 8
    angles = 2 * math.pi * torch.arange(K, dtype=torch.float64) / K
    means = 4.0 * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    covs = torch.stack([oracle.random_covariance(2, generator, 0.02, 0.15) for _ in range(K)])
    return oracle.gaussian_mixture(means, covs, torch.arange(1, K + 1, dtype=torch.float64))


def mix64(generator):
    K, D = 8, 64
    means = 2.0 * torch.randn(K, D, generator=generator, dtype=torch.float64)
    covs = torch.stack([oracle.random_covariance(D, generator, 0.05, 1.0) for _ in range(K)])
    return oracle.gaussian_mixture(means, covs, torch.arange(1, K + 1, dtype=torch.float64))


DATA = {"ring2d": ring2d, "mix64": mix64}


class BatchedMixtureScore:
    """The exact score of p_t for a full-covariance GaussianMixture under `sde`, batched over
    the components: r_k(x) = softmax_k(log w_k + log N(x; alpha mu_k, C_k)),
    score = -sum_k r_k C_k^{-1} (x - alpha mu_k), C_k = U_k diag(alpha^2 lambda_k + sigma^2) U_k^T.
    When the batch shares one t (every fixed-step sampler and the ODE), the precisions C_k^{-1}
    are formed once per call and x is multiplied by all of them in one GEMM (in `dtype`)."""

    def __init__(self, dist, sde, dtype=torch.float64):
        self.sde = sde
        self.dtype = dtype
        self.means = dist.means
        self.logw = torch.log(dist.weights)
        self.lam = dist.eigvals
        D = dist.dim
        self.U = (dist.eigvecs if dist.eigvecs is not None else
                  torch.eye(D, dtype=torch.float64).expand(dist.num_components, D, D))

    def __call__(self, x, t):
        alpha, sigma = coefficients(self.sde, t.to(torch.float64))
        xf = x.reshape(x.shape[0], -1)
        if bool((t == t[0]).all()):
            score = self._shared_time(xf.to(self.dtype), alpha[0], sigma[0])
        else:
            score = self._per_sample_time(xf.to(self.dtype), alpha.to(self.dtype),
                                          sigma.to(self.dtype))
        return score.reshape(x.shape).to(x.dtype)

    def _shared_time(self, xf, alpha, sigma):
        K, D = self.means.shape
        var = alpha ** 2 * self.lam + sigma ** 2                                # [K, D]
        prec = (self.U / var[:, None, :]) @ self.U.transpose(1, 2)              # [K, D, D]
        mean = alpha * self.means                                               # [K, D]
        pm = torch.einsum("kde,ke->kd", prec, mean)
        logits = (self.logw - 0.5 * (torch.log(var).sum(1) + (mean * pm).sum(1))).to(self.dtype)
        pm = pm.to(self.dtype)
        px = (xf @ prec.to(self.dtype).permute(1, 0, 2).reshape(D, K * D)).reshape(-1, K, D)
        xpx = torch.bmm(px, xf[:, :, None])[..., 0]                             # x^T C^-1 x
        r = torch.softmax(logits - 0.5 * (xpx - 2 * (xf @ pm.T)), dim=1)
        return -(torch.bmm(r[:, None, :], px)[:, 0] - r @ pm)                   # -C^-1 (x - m)

    def _per_sample_time(self, xf, alpha, sigma):
        means, lam, U = (v.to(self.dtype) for v in (self.means, self.lam, self.U))
        y = xf[:, None, :] - alpha[:, None, None] * means[None]                 # [B, K, D]
        yr = torch.einsum("bkd,kde->bke", y, U)                                 # rotated
        var = alpha[:, None, None] ** 2 * lam[None] + sigma[:, None, None] ** 2
        logits = self.logw.to(self.dtype) - 0.5 * ((yr ** 2 / var).sum(-1)
                                                   + torch.log(var).sum(-1))
        r = torch.softmax(logits, dim=1)
        return -torch.einsum("bke,kde->bd", r[..., None] * yr / var, U)


# ----------------------------------------------------------------------------- metrics

def sliced_w2(x, y, directions):
    px = torch.sort(x @ directions, dim=0).values
    py = torch.sort(y @ directions, dim=0).values
    return float(((px - py) ** 2).mean().sqrt())


def mode_metrics(x, dist):
    """(weight TV, within-mode covariance error, within-mode variance bias)."""
    labels = dist.component_log_probs(x).argmax(1)
    freq = torch.bincount(labels, minlength=dist.num_components).double() / len(labels)
    tv = 0.5 * float((freq - dist.weights).abs().sum())
    cov_err = var_bias = 0.0
    for k in range(dist.num_components):
        xk = x[labels == k]
        sigma = dist.covariance(k)
        if xk.shape[0] < 3:  # a lost mode: count it as fully wrong
            cov_err += float(dist.weights[k])
            var_bias -= float(dist.weights[k])
            continue
        c = torch.cov(xk.T) if dist.dim > 1 else xk.var().reshape(1, 1)
        cov_err += float(dist.weights[k] * torch.linalg.norm(c - sigma) / torch.linalg.norm(sigma))
        var_bias += float(dist.weights[k] * (torch.trace(c) / torch.trace(sigma) - 1))
    return tv, cov_err, var_bias


# ----------------------------------------------------------------------------- samplers

def configurations(quick):
    """(label, kwargs of solvers.sample)."""
    pc = [("PC rd+langevin, N=1000 (baseline)", dict(sampler="pc", steps=1000)),
          ("PC rd+langevin, N=100", dict(sampler="pc", steps=100)),
          ("PC rd+langevin, N=25", dict(sampler="pc", steps=25)),
          ("PC rd only, N=1000", dict(sampler="pc", steps=1000, corrector="none")),
          ("PC rd only, N=50", dict(sampler="pc", steps=50, corrector="none"))]
    ode = [("ODE dopri5, tol 1e-5", dict(sampler="ode"))]
    heun = [(f"Heun (EDM), {s} steps", dict(sampler="heun", steps=s)) for s in (6, 12, 24)]
    heun.append(("Heun, 24 steps, rho-grid in t (rho=2)",
                 dict(sampler="heun", steps=24, grid="karras_t", rho=2)))
    dpm = [(f"DPM-Solver++(2M), {s} steps", dict(sampler="dpm_solver++", steps=s))
           for s in (10, 20, 49)]
    dpm.append(("DPM-Solver++(3M), 49 steps", dict(sampler="dpm_solver++", steps=49, order=3)))
    adaptive = [("adaptive SDE, per-sample steps", dict(sampler="adaptive")),
                ("adaptive SDE, batch steps", dict(sampler="adaptive", error_norm="batch"))]
    if quick:
        pc = pc[:1] + pc[2:3]
        heun, dpm, adaptive = heun[2:3], dpm[1:], adaptive[1:]
    return pc + ode + heun + dpm + adaptive


METRICS = ("SW2", "weight TV", "cov err", "abs(var bias)")


def summarize(data_name, sde_name, rows, mc_mean, mc_sd):
    """One line per metric: the Monte-Carlo floor, PC N=1000, the ODE at tol 1e-5 (the
    probability-flow map solved accurately), and the best fast sampler with <= 50 NFE."""
    base = next(r for r in rows if r[0].startswith("PC") and "baseline" in r[0])
    ode = next((r for r in rows if r[0].startswith("ODE")), None)
    fast = [r for r in rows if r[1] <= 50 and not r[0].startswith("PC")]
    lines = []
    for j, name in enumerate(METRICS):
        def value(r):
            return abs(r[2][j]) if j == 3 else r[2][j]
        best = min(fast, key=value)
        floor = abs(float(mc_mean[j])) if j == 3 else float(mc_mean[j])
        margin = 2 * float(mc_sd[j])
        verdict = ("reaches" if value(best) <= value(base) else "within 2 sd" if
                   value(best) <= value(base) + margin else "above")
        lines.append(f"| {data_name} | {sde_name.upper()} | {name} | {floor:.4f} +- "
                     f"{float(mc_sd[j]):.4f} | {value(base):.4f} | "
                     f"{value(ode):.4f} | {value(best):.4f} ({best[0]}, NFE {best[1]}) | "
                     f"{verdict} |")
    return "\n".join(lines)


def run(data_name, sde_name, n, seed, quick, out, score_dtype, summary, floors=5):
    dist = DATA[data_name](torch.Generator().manual_seed(1234))
    sde = SDES[sde_name]()
    score = BatchedMixtureScore(dist, sde, score_dtype)
    probe = dist.marginal(sde).sample(torch.rand(64, generator=torch.Generator().manual_seed(0),
                                                 dtype=torch.float64) * 0.999 + 1e-3)
    tprobe = torch.linspace(1e-3, 1.0, 64)
    ref_score = dist.marginal(sde).score(probe.double(), tprobe.double())
    err = (score(probe.double(), tprobe.double()) - ref_score).abs().max() / ref_score.abs().max()
    assert err < (1e-10 if score_dtype == torch.float64 else 1e-4), \
        f"batched score disagrees with the oracle ({err:.2e})"

    ref = dist.sample(n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    directions = torch.randn(dist.dim, 256, generator=torch.Generator().manual_seed(7),
                             dtype=torch.float64)
    directions /= directions.norm(dim=0, keepdim=True)

    def metrics(x):
        x = x.reshape(n, -1).double()
        return (sliced_w2(x, ref, directions),) + mode_metrics(x, dist)

    floor = torch.tensor([metrics(dist.sample(n, generator=torch.Generator().manual_seed(
        seed + 2 + i), dtype=torch.float64)) for i in range(floors)])
    mc_mean, mc_sd = floor.mean(0), floor.std(0)
    rows = []
    for label, kwargs in configurations(quick):
        t0 = time.perf_counter()
        res = solvers.sample(score, sde, (n, dist.dim),
                             generator=torch.Generator().manual_seed(seed), **kwargs)
        wall = time.perf_counter() - t0
        rows.append((label, res.nfe, metrics(res.samples), wall))
        print(f"  {data_name} {sde_name}: {label}: nfe {res.nfe}, {wall:.1f}s", file=sys.stderr)

    out.append(f"\n#### {data_name}, {sde_name.upper()} SDE (n = {n}, "
               f"eps = {sde.sampling_eps:g})\n")
    out.append("| sampler | NFE | SW2 | weight TV | cov err | var bias | wall (s) |")
    out.append("|---|--:|--:|--:|--:|--:|--:|")
    out.append(f"| exact samples, {floors} draws (Monte-Carlo floor: mean +- sd) | - | "
               + " | ".join(f"{m:{'+' if j == 3 else ''}.4f} +- {d:.4f}"
                            for j, (m, d) in enumerate(zip(mc_mean.tolist(), mc_sd.tolist())))
               + " | - |")
    for label, nfe, (sw, tv, ce, vb), wall in rows:
        out.append(f"| {label} | {nfe} | {sw:.4f} | {tv:.4f} | {ce:.4f} | {vb:+.4f} | {wall:.1f} |")
    summary.append(summarize(data_name, sde_name, rows, mc_mean, mc_sd))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer samplers and samples")
    p.add_argument("--n2", type=int, default=None, help="samples for ring2d (default 20000)")
    p.add_argument("--n64", type=int, default=None, help="samples for mix64 (default 4000)")
    p.add_argument("--sdes", default="ve,vp,subvp")
    p.add_argument("--data", default="ring2d,mix64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--score-dtype", default="float32", choices=("float32", "float64"),
                   help="precision of the batched exact score (float32: about 2e-6 relative)")
    p.add_argument("--output", help="also write the markdown here (atomically)")
    args = p.parse_args(argv)
    n2 = args.n2 or (2000 if args.quick else 20000)
    n64 = args.n64 or (1000 if args.quick else 4000)
    sdes = [s.strip() for s in args.sdes.split(",") if s.strip()]
    data = [d.strip() for d in args.data.split(",") if d.strip()]
    for s in sdes:
        if s not in SDES:
            p.error(f"unknown SDE {s!r}; known: {', '.join(SDES)}")
    for d in data:
        if d not in DATA:
            p.error(f"unknown data {d!r}; known: {', '.join(DATA)}")

    out = [f"Date: {datetime.date.today()}; torch {torch.__version__}, Python "
           f"{platform.python_version()}, {torch.get_num_threads()} thread(s).",
           "Command: `OMP_NUM_THREADS=1 python -m benchmarks.samplers "
           + " ".join(argv if argv is not None else sys.argv[1:]) + "`"]
    t0 = time.perf_counter()
    summary = []
    for d in data:
        for s in sdes:
            run(d, s, n2 if d == "ring2d" else n64, args.seed, args.quick, out,
                getattr(torch, args.score_dtype), summary)
    out.append("\n#### Summary: the best fast sampler with at most 50 NFE against PC N=1000\n")
    out.append("Verdict: 'reaches' if its error is at most PC N=1000's, 'within 2 sd' if within "
               "twice the Monte-Carlo sd of the metric above it, else 'above'. The ODE column "
               "(dopri5, tol 1e-5, ~115 NFE) is the probability-flow map solved accurately: "
               "what any deterministic sampler converges to.\n")
    out.append("| data | SDE | metric | MC floor | PC N=1000 | ODE tol 1e-5 | best fast <= 50 NFE "
               "| verdict |")
    out.append("|---|---|---|--:|--:|--:|--:|---|")
    out.extend(summary)
    out.append(f"\nTotal wall time {time.perf_counter() - t0:.0f} s.")
    text = "\n".join(out) + "\n"
    print(text)
    if args.output:
        tmp = args.output + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.output)


if __name__ == "__main__":
    main()
