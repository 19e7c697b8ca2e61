"""Samplers on exact-score Gaussian mixtures: distribution error against NFE.

    OMP_NUM_THREADS=1 python -m benchmarks.samplers [--quick] [--n2 N] [--n64 N]
        [--sdes ve,vp,subvp] [--data ring2d,mix64] [--seed S] [--no-k-diffusion]
        [--output FILE]

(run as a module from the repository root; about 10 minutes on one thread with the defaults.)

Data (exact scores of every marginal p_t, `sde_lib.oracle`):
  ring2d: 8 modes on a circle of radius 4 in 2-D, weights proportional to 1, ..., 8 (so that the
          weight error means something), each mode a random 2x2 covariance with eigenvalues in
          [0.02, 0.15];
  mix64:  8 modes in 64-D, means 2 N(0, I) (pairwise distances about 23, max below
          sigma_max = 50), weights proportional to 1, ..., 8, each a random full covariance with
          eigenvalues in [0.05, 1].
Every sampler starts from the same n prior draws x(T) (PC and churn then draw their noise from
one fixed seed) and is compared with n exact draws of p_0 (another seed):
  SW2        sliced 2-Wasserstein distance (64 random directions, fixed);
  weight TV  total variation between the mode frequencies (each sample assigned to its most
             likely component) and the true weights;
  cov err    within-mode covariance error ||S_k - Sigma_k||_F / ||Sigma_k||_F, weight-averaged,
             S_k the sampler's within-mode covariance, with the sampling noise of its estimate
             removed (`debiased_cov_err`; exact draws score about 0);
  |var bias| within-mode variance bias |tr C_k / tr Sigma_k - 1|, weight-averaged.
References: 5 more sets of exact draws (the Monte-Carlo floor: mean and sd of each metric), PC
with N = 1000 (reverse diffusion + Langevin, 2000 NFE) and the adaptive ODE solver (dopri5,
tol 1e-5: the probability-flow map itself). Swept: Heun (EDM), Heun with churn, DPM-Solver++
(2M, 3M), UniPC (orders 2, 3; B(h) = h and e^h - 1; analytic first step) on the named grids, UniPC
on grids fitted by `solvers.fit_grid` (on 256 other prior draws), and k-diffusion's samplers
(when installed) on the same exact score (as its denoiser, in sigma = s(t)) and the same x(T),
each at the largest NFE <= 5, 8, 10, 12, 15, 20, 30, 50. A sampler "reaches" PC N=1000 when
its SW2, weight TV and cov err are each at most PC's plus 2 Monte-Carlo sd.
The score is the oracle's, evaluated batched over the components (checked against
`oracle.Marginal.score` at start-up).
"""

import argparse
import datetime
import math
import platform
import sys
import time

if not __package__:
    sys.exit("run as a module from the repository root: python -m benchmarks.samplers")

import torch

import solvers
from sde_lib import VESDE, VPSDE, oracle, subVPSDE
from sde_base.fileio import write_text
from solvers.common import coefficients
from solvers.fitted_grid import fit_grid

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

def sliced_w2(x, y, directions, y_sorted=None):
    """Sliced 2-Wasserstein distance over the given unit directions [D, K] (y's sorted
    projections [K, n] may be passed in, to sort them once)."""
    px = torch.sort((x @ directions).T.contiguous(), dim=1).values
    py = torch.sort((y @ directions).T.contiguous(), dim=1).values if y_sorted is None \
        else y_sorted
    return float(((px - py) ** 2).mean().sqrt())


def debiased_cov_err(c, sigma, n):
    """||S - Sigma||_F / ||Sigma||_F for the covariance S of n draws whose unbiased sample
    covariance is c, with the sampling noise removed: E||c - Sigma||^2 = ||S - Sigma||^2 +
    (||S||^2 + (tr S)^2) / (n - 1) for Gaussian draws (Wishart moments), and ||S||^2, (tr S)^2
    are estimated without bias from ||c||^2, (tr c)^2. The square root of the estimate, 0 where
    the noise makes it negative (exact draws: mostly 0): the plain ||c - Sigma|| is dominated by
    the noise in 64-D and rewards under-dispersed samples, whose noise is smaller."""
    m = n - 1
    a, b = float((c ** 2).sum()), float(torch.trace(c) ** 2)
    # E a = S2 (1 + 1/m) + T2 / m,  E b = T2 + 2 S2 / m   (S2 = ||S||^2, T2 = (tr S)^2)
    det = (1 + 1 / m) - 2 / m ** 2
    s2 = (a - b / m) / det
    t2 = b - 2 * s2 / m
    sq = float(((c - sigma) ** 2).sum()) - (s2 + t2) / m
    return math.sqrt(max(sq, 0.0)) / float(torch.linalg.norm(sigma))


def mode_metrics(x, dist):
    """(weight TV, within-mode covariance error (debiased), within-mode variance bias)."""
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
        cov_err += float(dist.weights[k]) * debiased_cov_err(c, sigma, xk.shape[0])
        var_bias += float(dist.weights[k] * (torch.trace(c) / torch.trace(sigma) - 1))
    return tv, cov_err, var_bias


# ----------------------------------------------------------------------------- samplers

NFES = (5, 8, 10, 12, 15, 20, 30, 50)
GRIDS = ("karras", "logsnr", "karras_t", "uniform")


def toolkit_samplers(moments):
    """(label, nfe -> kwargs of solvers.sample with at most nfe evaluations or None, grids)."""
    def heun(nfe, **kw):
        steps = (nfe - 1) // 2                  # 2 per step, +1 to denoise
        return dict(sampler="heun", steps=steps, **kw) if steps >= 1 else None

    def churn(nfe):
        steps = (nfe - 1) // 2
        return heun(nfe, S_churn=0.2 * steps, S_tmin=0.05, S_tmax=50.0, S_noise=1.0)

    def multistep(sampler, **kw):
        return lambda nfe: dict(sampler=sampler, steps=nfe - 1, **kw)    # +1 to denoise

    def unipc_afs(nfe):
        return dict(sampler="unipc", steps=nfe, order=3, variant="bh1", analytic_first=moments)

    return [("Heun (EDM)", heun, GRIDS),
            ("Heun + churn (S_churn = 0.2 steps)", churn, ("karras", "logsnr")),
            ("DPM-Solver++(2M)", multistep("dpm_solver++"), GRIDS),
            ("DPM-Solver++(3M)", multistep("dpm_solver++", order=3), GRIDS),
            ("UniPC-2 bh1", multistep("unipc", order=2, variant="bh1"), GRIDS),
            ("UniPC-3 bh1", multistep("unipc", order=3, variant="bh1"), GRIDS),
            ("UniPC-3 bh2", multistep("unipc", order=3, variant="bh2"), GRIDS),
            ("UniPC-3 bh1 + analytic first step", unipc_afs, ("logsnr", "karras_t"))]


FITTED = (("UniPC-2 bh1", dict(order=2, variant="bh1")),
          ("UniPC-3 bh1", dict(order=3, variant="bh1")))
FIT_NFES = (5, 8, 10, 12)


def load_k_diffusion():
    """k_diffusion.sampling, or None when k-diffusion is not installed. Its package __init__
    imports training code (torchvision, safetensors, ...); only `sampling` (and `utils`, which
    imports torchvision and safetensors at module level) is needed, so the package is set up
    without its __init__ and the two image-only imports are stubbed when absent."""
    import importlib
    import importlib.util
    import types
    try:
        spec = importlib.util.find_spec("k_diffusion")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                 "safetensors"):
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision.transforms"].functional = sys.modules[
        "torchvision.transforms.functional"]
    if "k_diffusion" not in sys.modules:
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = pkg
    try:
        return importlib.import_module("k_diffusion.sampling")
    except ImportError as e:
        print(f"k-diffusion not usable: {e}", file=sys.stderr)
        return None


class KDenoiser:
    """k-diffusion's model interface, denoiser(x_hat, sigma), on the exact score: its sigma is
    s = sigma(t) / alpha(t) and its x is x_hat = x / alpha(t) (the EDM form every linear SDE
    maps to), D = (x + sigma(t)^2 score(x, t)) / alpha(t). Counts evaluations."""

    def __init__(self, score, sde):
        self.score, self.sde, self.nfe, self._t = score, sde, 0, {}

    def time(self, s):
        if s not in self._t:
            t = solvers.grids.invert_noise_level(self.sde, torch.tensor([s], dtype=torch.float64))
            self._t[s] = float(t.clamp(0.0, self.sde.T))
        return self._t[s]

    def __call__(self, x_hat, sigma):
        self.nfe += 1
        t = torch.full((x_hat.shape[0],), self.time(float(sigma[0])), dtype=torch.float64)
        alpha, sig = coefficients(self.sde, t)
        x = alpha[0].item() * x_hat
        return solvers.denoise_tweedie(self.score, self.sde, x, t.to(x.dtype)) * 1.0


def k_diffusion_samplers(kd):
    """(label, sigmas -> sample function, nfe -> number of nonzero sigmas); k-diffusion's grids
    end with sigma = 0, its last step being the denoising one (our `denoise`)."""
    if kd is None:
        return []

    def n_single(nfe):
        return nfe

    def n_double(nfe):
        return (nfe + 1) // 2                   # 2 per step, 1 for the last step to 0

    def det_3m(model, x, sigmas, disable=True):
        return kd.sample_dpmpp_3m_sde(model, x, sigmas, disable=disable, eta=0.0)

    return [("k-diffusion Euler", kd.sample_euler, n_single),
            ("k-diffusion Heun", kd.sample_heun, n_double),
            ("k-diffusion DPM2", kd.sample_dpm_2, n_double),
            ("k-diffusion LMS", kd.sample_lms, n_single),
            ("k-diffusion DPM++(2M)", kd.sample_dpmpp_2m, n_single),
            ("k-diffusion DPM++(3M), eta 0", det_3m, n_single)]


METRICS = ("SW2", "weight TV", "cov err", "abs(var bias)")
PASS_METRICS = (0, 1, 2)    # the ones the PC-1000 criterion is checked on


def passes(values, base, mc_sd):
    """Within 2 Monte-Carlo sd of PC N=1000's error (or below) on SW2, weight TV, cov err."""
    return all(values[j] <= base[j] + 2 * mc_sd[j] for j in PASS_METRICS)


def excess(values, base, mc_sd):
    """max over the criterion's metrics of (error - PC N=1000's error) / MC sd: <= 2 passes."""
    return max((values[j] - base[j]) / mc_sd[j] for j in PASS_METRICS)


def run(data_name, sde_name, n, seed, quick, out, score_dtype, summary, kd, floors=5):
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
    directions = torch.randn(dist.dim, 64, generator=torch.Generator().manual_seed(7),
                             dtype=torch.float64)
    directions /= directions.norm(dim=0, keepdim=True)
    ref_sorted = torch.sort((ref @ directions).T.contiguous(), dim=1).values

    def metrics(x):
        x = x.reshape(n, -1).double()
        sw, tv, ce, vb = (sliced_w2(x, ref, directions, ref_sorted),) + mode_metrics(x, dist)
        return (sw, tv, ce, abs(vb))

    floor = torch.tensor([metrics(dist.sample(n, generator=torch.Generator().manual_seed(
        seed + 2 + i), dtype=torch.float64)) for i in range(floors)])
    mc_mean, mc_sd = floor.mean(0).tolist(), floor.std(0).tolist()
    # one prior draw x(T) shared by every deterministic sampler (k-diffusion's included)
    x_T = sde.prior_sampling((n, dist.dim), generator=torch.Generator().manual_seed(seed))

    def toolkit(kwargs):
        t0 = time.perf_counter()
        res = solvers.sample(score, sde, x_init=x_T, check_shape=False,
                             generator=torch.Generator().manual_seed(seed + 100), **kwargs)
        return res.nfe, metrics(res.samples), time.perf_counter() - t0

    base_nfe, base, base_wall = toolkit(dict(sampler="pc", steps=1000))
    ode_nfe, ode, _ = toolkit(dict(sampler="ode"))
    print(f"  {data_name} {sde_name}: PC-1000 {base_wall:.1f}s", file=sys.stderr)

    moments = (dist.mean().to(torch.float32),
               float(torch.trace(dist.covariance_total())) / dist.dim)
    nfes = (5, 10, 20) if quick else NFES
    rows = []       # (label, grid, {target: (nfe, metrics)})
    t_run = time.perf_counter()
    for label, build, grids in toolkit_samplers(moments):
        for grid in grids:
            cells = {}
            for target in nfes:
                kwargs = build(target)
                if kwargs is None:
                    continue
                nfe, m, _ = toolkit(dict(kwargs, grid=grid))
                assert nfe <= target, (label, grid, target, nfe)
                cells[target] = (nfe, m)
            rows.append(("toolkit", label, grid, cells))
    # grids fitted on a separate batch of 256 prior draws (solvers.fitted_grid)
    x_fit = sde.prior_sampling((256, dist.dim), generator=torch.Generator().manual_seed(seed + 99))
    fit_wall, fit_evals = 0.0, []
    for label, options in FITTED:
        cells = {}
        for target in (t for t in nfes if t in FIT_NFES):
            t0 = time.perf_counter()
            fit = fit_grid(score, sde, x_fit, target - 1, sampler="unipc",
                           sampler_options=options)
            fit_wall += time.perf_counter() - t0
            fit_evals.append(fit.evaluations)
            nfe, m, _ = toolkit(dict(sampler="unipc", grid=fit.grid, **options))
            cells[target] = (nfe, m)
        rows.append(("toolkit", label, "fitted", cells))
    s_T, s_eps = (v.item() for v in solvers.grids.noise_level(
        sde, torch.tensor([sde.T, sde.sampling_eps], dtype=torch.float64)))
    alpha_T = coefficients(sde, torch.tensor([sde.T], dtype=torch.float64))[0].item()
    for label, fn, count in k_diffusion_samplers(kd):
        for grid in ("karras", "exponential"):
            cells = {}
            for target in nfes:
                k = count(target)
                if k < 1:
                    continue
                sigmas = (kd.get_sigmas_karras(k, s_eps, s_T, rho=7.0) if grid == "karras"
                          else kd.get_sigmas_exponential(k, s_eps, s_T)).to(torch.float64)
                model = KDenoiser(score, sde)
                x_hat = x_T.double() / alpha_T
                with torch.no_grad():
                    x = fn(model, x_hat.to(torch.float32), sigmas.to(torch.float32),
                           disable=True)
                assert model.nfe <= target, (label, grid, target, model.nfe)
                cells[target] = (model.nfe, metrics(x))
            rows.append(("k-diffusion", label, grid, cells))
    print(f"  {data_name} {sde_name}: sweep {time.perf_counter() - t_run:.1f}s", file=sys.stderr)

    def fmt(values):
        return " / ".join(f"{values[j]:.4f}" for j in PASS_METRICS)

    out.append(f"\n#### {data_name}, {sde_name.upper()} SDE (n = {n}, eps = "
               f"{sde.sampling_eps:g})\n")
    out.append(f"References (SW2 / weight TV / cov err): Monte-Carlo floor "
               f"{fmt(mc_mean)} (sd {fmt(mc_sd)}); PC N=1000 ({base_nfe} NFE) {fmt(base)}; "
               f"ODE dopri5 tol 1e-5 ({ode_nfe} NFE, same x(T)) {fmt(ode)} "
               f"({'passes' if passes(ode, base, mc_sd) else 'fails'}).\n")
    out.append("Entries: cov err at the largest NFE <= the column's (Heun: 2 steps + 1, so one "
               "less at even columns); `*` = within 2 MC sd of PC N=1000 on SW2, weight TV and "
               "cov err together. Fitted grids: "
               + (f"{len(fit_evals)} fits, {fit_wall:.0f} s, {min(fit_evals)}-{max(fit_evals)} "
                  f"evaluations of 256 fitting draws each (not in the NFE)." if fit_evals else
                  "none.") + "\n")
    out.append("| sampler | grid | " + " | ".join(f"{t}" for t in nfes) + " |")
    out.append("|---|---|" + "--:|" * len(nfes))
    for _, label, grid, cells in rows:
        entries = []
        for target in nfes:
            if target not in cells:
                entries.append("-")
                continue
            nfe, m = cells[target]
            entries.append(f"{m[2]:.3f}{'*' if passes(m, base, mc_sd) else ''}"
                           + (f" ({nfe})" if nfe != target else ""))
        out.append(f"| {label} | {grid} | " + " | ".join(entries) + " |")

    # the smallest NFE at which some sampler passes, and the best at <= 10 NFE on each side
    def first(keep):
        for target in nfes:
            ok = [(excess(c[target][1], base, mc_sd), label, grid, c[target])
                  for side, label, grid, c in rows if keep(side, grid) and target in c
                  and passes(c[target][1], base, mc_sd)]
            if ok:
                return target, min(ok, key=lambda r: r[0])
        return None

    def reach(found, details=True):
        if found is None:
            return f"none up to {nfes[-1]}"
        target, (_, label, grid, (_, m)) = found
        return f"{target} ({label}, {grid}" + (f": {fmt(m)})" if details else ")")

    reach_all = reach(first(lambda side, grid: side == "toolkit"))
    reach_named = reach(first(lambda side, grid: side == "toolkit" and grid != "fitted"), False)
    reach_kd = (reach(first(lambda side, grid: side == "k-diffusion"), False) if kd is not None
                else "-")

    def best(side, limit=10):
        cands = [(excess(c[t][1], base, mc_sd), label, grid, c[t]) for s, label, grid, c in rows
                 if s == side for t in c if t <= limit]
        return min(cands, key=lambda r: r[0]) if cands else None

    ours, theirs = best("toolkit"), best("k-diffusion")
    ours_s = f"{ours[1]}, {ours[2]}, NFE {ours[3][0]}: {fmt(ours[3][1])}"
    if theirs is not None:
        theirs_s = f"{theirs[1]}, {theirs[2]}, NFE {theirs[3][0]}: {fmt(theirs[3][1])}"
        ratio = " / ".join(f"{ours[3][1][j] / theirs[3][1][j]:.2f}" if theirs[3][1][j] > 0
                           else "-" for j in PASS_METRICS)
    else:
        theirs_s, ratio = "(k-diffusion not installed)", "-"
    summary.append(f"| {data_name} | {sde_name.upper()} | {fmt(base)} | {reach_all} | "
                   f"{reach_named} | {reach_kd} | {ours_s} | {theirs_s} | {ratio} |")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer NFE values and samples")
    p.add_argument("--n2", type=int, default=None, help="samples for ring2d (default 10000)")
    p.add_argument("--n64", type=int, default=None, help="samples for mix64 (default 2000)")
    p.add_argument("--sdes", default="ve,vp,subvp")
    p.add_argument("--data", default="ring2d,mix64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-k-diffusion", action="store_true", help="skip k-diffusion's samplers")
    p.add_argument("--score-dtype", default="float32", choices=("float32", "float64"),
                   help="precision of the batched exact score (float32: about 2e-6 relative)")
    p.add_argument("--output", help="also write the markdown here (atomically)")
    args = p.parse_args(argv)
    n2 = args.n2 or (2000 if args.quick else 10000)
    n64 = args.n64 or (500 if args.quick else 2000)
    sdes = [s.strip() for s in args.sdes.split(",") if s.strip()]
    data = [d.strip() for d in args.data.split(",") if d.strip()]
    for s in sdes:
        if s not in SDES:
            p.error(f"unknown SDE {s!r}; known: {', '.join(SDES)}")
    for d in data:
        if d not in DATA:
            p.error(f"unknown data {d!r}; known: {', '.join(DATA)}")
    kd = None if args.no_k_diffusion else load_k_diffusion()

    out = [f"Date: {datetime.date.today()}; torch {torch.__version__}, Python "
           f"{platform.python_version()}, {torch.get_num_threads()} thread(s)"
           + (f", k-diffusion {_version('k-diffusion')}" if kd is not None else
              ", k-diffusion not installed") + ".",
           "Command: `OMP_NUM_THREADS=1 python -m benchmarks.samplers "
           + " ".join(argv if argv is not None else sys.argv[1:]) + "`"]
    t0 = time.perf_counter()
    summary = []
    for d in data:
        for s in sdes:
            run(d, s, n2 if d == "ring2d" else n64, args.seed, args.quick, out,
                getattr(torch, args.score_dtype), summary, kd)
    out.append("\n#### Summary: fewest evaluations that reach PC N=1000, and the toolkit "
               "against k-diffusion at <= 10 NFE\n")
    out.append("'Reaches' = SW2, weight TV and cov err each at most PC N=1000's plus 2 Monte-Carlo "
               "sd. 'Best' = the smallest excess max_j (error_j - PC_j) / sd_j over those three "
               "metrics, among all samplers and grids at <= 10 NFE. Ratio = toolkit best / "
               "k-diffusion best, per metric (SW2 / weight TV / cov err).\n")
    out.append("| data | SDE | PC N=1000 (SW2 / TV / cov) | smallest NFE reaching it | ... "
               "named grids only | ... k-diffusion | toolkit best <= 10 NFE | k-diffusion best "
               "<= 10 NFE | ratio |")
    out.append("|---|---|--:|---|---|---|---|---|--:|")
    out.extend(summary)
    out.append(f"\nTotal wall time {time.perf_counter() - t0:.0f} s.")
    text = "\n".join(out) + "\n"
    print(text)
    if args.output:
        write_text(args.output, text)


def _version(dist_name):
    from importlib import metadata
    try:
        return metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    main()
