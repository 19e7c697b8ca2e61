"""Time grids fitted to a model: the n-step grid with which a sampler best reproduces the
model's own probability-flow map on a fitting batch.

The idea of optimising the steps against an accurate solution of the same ODE (Xue et al. 2024,
"Accelerating diffusion sampling with optimized time steps"; Tong et al. 2024, LD3), done here
without gradients, so any score function (a network under no_grad, an exact oracle) works:

  1. a teacher solves the ODE accurately from a fitting batch x(T) (UniPC-3, `teacher_steps`
     uniform-logSNR steps);
  2. the grid is parametrised by its log-SNR increments, lambda_k = lambda(T) + (lambda(eps) -
     lambda(T)) sum_{j<k} softmax(theta)_j (so it always runs from T to eps, strictly
     decreasing in t), started from the best of a few named grids;
  3. Powell's method (scipy) minimises the mean per-sample distance between the sampler's
     output and the teacher's: mean_b ||x_b - x_b^teacher||. (The mean distance, not the RMS:
     the RMS is dominated by the few samples that change mode, and fitting it left the
     within-mode covariances off; measured in benchmarks/RESULTS.md.)

Each objective evaluation is one run of the sampler on the fitting batch (n + 1 evaluations
for n steps), so a fit costs about maxfev (n + 1) + teacher_steps + 1 evaluations of the fitting
batch, once per model, sampler and n. A fit with local truncation errors (GITS, Chen et al.
2024) was tried first and did worse than the named grids on the benchmark; it is not kept.

    fit = fit_grid(score_fn, sde, sde.prior_sampling((256, *shape), generator=g), steps=9)
    sample(score_fn, sde, shape, sampler="unipc", grid=fit.grid)
"""

import math
from dataclasses import dataclass, field

import torch

from solvers.grids import get_grid, invert_noise_level, log_snr


@dataclass
class GridFit:
    """grid: the fitted times (float64 [steps + 1], T first); loss / init_loss: the mean
    distance to the teacher after / before fitting (from `init`, the best named start);
    evaluations: score evaluations spent on the fitting batch."""
    grid: torch.Tensor
    loss: float
    init_loss: float
    init: str
    evaluations: int
    options: dict = field(default_factory=dict)


@torch.no_grad()
def fit_grid(score_fn, sde, x, steps, *, sampler="unipc", sampler_options=None, eps=None,
             denoise=True, inits=("logsnr", "karras_t", "karras"), teacher_steps=200,
             maxfev=300):
    """Fit a `steps`-step grid for `sampler` (with `sampler_options`) on the fitting batch
    x = x(T) (prior draws; a few hundred). Returns a GridFit; pass `fit.grid` as `grid=`."""
    from scipy import optimize

    from solvers.evaluations import CountingScore
    from solvers.sampling import SAMPLERS

    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not torch.is_tensor(x) or x.dim() < 2 or x.shape[0] < 2:
        raise ValueError(f"x must be a batch of at least 2 prior draws [B, ...], got "
                         f"{type(x).__name__ if not torch.is_tensor(x) else list(x.shape)}")
    steps = int(steps)
    eps = sde.sampling_eps if eps is None else eps
    options = dict(sampler_options or {})
    counted = CountingScore(score_fn)
    run = SAMPLERS.get(sampler)
    teach = SAMPLERS.get("unipc")
    common = dict(eps=eps, denoise=denoise, generator=None, progress=False, callback=None)
    teacher = teach(counted, sde, x, steps=teacher_steps, order=3, **common)
    teacher = teacher.reshape(x.shape[0], -1).double()

    lam_ends = log_snr(sde, torch.tensor([sde.T, eps], dtype=torch.float64))
    lam_T, lam_eps = lam_ends.tolist()

    def grid_of(theta):
        w = torch.softmax(torch.as_tensor(theta, dtype=torch.float64), 0)
        lam = lam_T + (lam_eps - lam_T) * torch.cat([w.new_zeros(1), torch.cumsum(w, 0)])
        t = invert_noise_level(sde, torch.exp(-lam), lo=eps)
        t[0], t[-1] = sde.T, eps
        return t

    def theta_of(t):
        lam = log_snr(sde, t)
        inc = ((lam[1:] - lam[:-1]) / (lam_eps - lam_T)).clamp(min=1e-12)
        return torch.log(inc).numpy()

    def loss(theta):
        t = grid_of(theta)
        if not bool((t[1:] < t[:-1]).all()):
            return math.inf
        out = run(counted, sde, x, grid=t, **common, **options)
        d = (out.reshape(x.shape[0], -1).double() - teacher).norm(dim=1).mean()
        return float(d) if torch.isfinite(d) else math.inf

    starts = []
    for name in inits:
        theta = theta_of(get_grid(name)(sde, steps, eps))
        starts.append((loss(theta), name, theta))
    init_loss, init, theta0 = min(starts, key=lambda s: s[0])
    if steps == 1:   # nothing to move
        return GridFit(grid_of(theta0), init_loss, init_loss, init, counted.nfe, options)
    res = optimize.minimize(loss, theta0, method="Powell",
                            options=dict(maxfev=int(maxfev), xtol=1e-3, ftol=1e-4))
    best = (res.fun, res.x) if res.fun < init_loss else (init_loss, theta0)
    return GridFit(grid_of(best[1]), float(best[0]), init_loss, init, counted.nfe, options)
