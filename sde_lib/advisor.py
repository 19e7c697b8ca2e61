"""Noise-schedule advisor: NCSNv2's Techniques 1, 2 and 4 (Song & Ermon 2020).

From a training set it proposes the VE/SMLD noise scales and the annealed Langevin settings:

* Technique 1 (initial noise scale): sigma_1 = sigma_max = the largest pairwise Euclidean
  distance between training points, so that the prior N(0, sigma_max^2 I) covers every pair of
  data points (`max_pairwise_distance`, `estimate_sigma_max`).
* Technique 2 (other noise scales): a geometric sequence with ratio gamma = sigma_{i-1}/sigma_i
  solving  Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) = 0.5
  (`solve_gamma`). In D dimensions ||x|| for x ~ N(0, sigma^2 I) is close to
  N(sqrt(D) sigma, sigma^2 / 2); the left side is the probability that a draw at level
  sigma_i falls in the +-3-std shell of level sigma_{i-1}, so adjacent levels overlap.
  Number of scales: L = 1 + ceil(log(sigma_max / sigma_min) / log gamma*), the fewest scales
  whose realised ratio (sigma_max / sigma_min)^(1/(L-1)) <= gamma* keeps the overlap >= 0.5.
* Technique 4 (step size): Proposition 3. Langevin at level sigma_i with step
  alpha_i = eps sigma_i^2 / sigma_L^2 on p = N(0, sigma_i^2), started from
  N(0, gamma^2 sigma_i^2) (the previous level), gives after T steps N(0, s_T^2) with

      s_T^2 / sigma_i^2 = r^(2T) (gamma^2 - c) + c,   r = 1 - eps/sigma_L^2,
      c = 2 eps / (sigma_L^2 - sigma_L^2 r^2) = 2 / (2 - eps/sigma_L^2),

  independent of i (`langevin_variance_ratio`). eps is chosen so this ratio is closest to 1
  (`best_step_size`); the ratio is a convex combination of gamma^2 > 1 and c > 1, so "closest
  to 1" is its minimum.

In the toolkit's `ald` corrector (the original's AnnealedLangevinDynamics) the step is
alpha_i = 2 (snr sigma_i)^2 for VE, so eps = 2 snr^2 sigma_min^2, snr = sqrt(eps / (2 sigma_min^2)).
CIFAR-10 (NCSNv2 config): n_steps_each = 5, snr = 0.176, i.e. eps = 6.2e-6.

Command line: ``python -m sde_lib.run advise --config NAME_OR_PATH`` (the config's training
set), ``--dataset digits|mnist [--data-dir DIR] [--split test]``, or ``--data FILE``.
"""

import dataclasses
import math

import numpy as np
import torch
from scipy import optimize
from scipy.special import ndtr

# ----------------------------------------------------------------------------- Technique 1


def max_pairwise_distance(x, *, chunk_size=2048):
    """Exact max_{i<j} ||x_i - x_j|| of x [n, ...] (float64, in row chunks of `chunk_size`)."""
    x = torch.as_tensor(x).reshape(len(x), -1).to(torch.float64)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 points for a pairwise distance, got {n}")
    x = x - x.mean(0)  # translation-invariant; centring keeps the expansion below accurate
    sq = (x * x).sum(1)
    best = 0.0
    for start in range(0, n, chunk_size):
        rows = x[start:start + chunk_size]
        # ||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b, only against the points from `start` on
        d2 = sq[start:start + chunk_size, None] + sq[None, start:] - 2.0 * rows @ x[start:].T
        best = max(best, float(d2.max()))
    return math.sqrt(max(best, 0.0))


def diameter_upper_bound(x):
    """r_(1) + r_(2), the two largest distances from the centroid: by the triangle inequality
    no pair of points of x [n, ...] is farther apart. Costs O(n D)."""
    x = torch.as_tensor(x).reshape(len(x), -1).to(torch.float64)
    r = (x - x.mean(0)).norm(dim=1)
    top = torch.topk(r, min(2, len(r))).values
    return float(top.sum())


@dataclasses.dataclass
class SigmaMaxEstimate:
    """Technique 1 on a data set: the largest pairwise distance and how well it is known.

    value: the estimate (exact when `exact`); std: spread (standard deviation) of the maxima
    of the `n_subsets` random subsets, 0 when exact; subset_maxima: those maxima;
    lower/upper: a certified bracket of the whole set's maximum (lower = value, an observed
    distance; upper = `diameter_upper_bound` over all points)."""

    value: float
    std: float
    lower: float
    upper: float
    exact: bool
    n_points: int
    sample_size: int
    subset_maxima: tuple


def estimate_sigma_max(data, *, sample_size=10000, n_subsets=4, generator=None):
    """Largest pairwise Euclidean distance of `data` [n, ...] (NCSNv2 Technique 1).

    Exact when n <= sample_size. Otherwise the max over `n_subsets` independent random subsets
    of `sample_size` points each (a lower bound of the set's maximum, since it is a distance
    between two points of the set); the standard deviation of the subset maxima measures how
    much the answer depends on which points were drawn, and `diameter_upper_bound` over the
    whole set bounds it from above.
    """
    x = torch.as_tensor(data)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 data points, got {n}")
    if sample_size < 2 or n_subsets < 1:
        raise ValueError(f"need sample_size >= 2 and n_subsets >= 1, got {sample_size}, {n_subsets}")
    x = x.reshape(n, -1)
    if not torch.isfinite(x).all():
        raise ValueError("data contains NaN or infinite values")
    if n <= sample_size:
        d = max_pairwise_distance(x)
        return SigmaMaxEstimate(d, 0.0, d, d, True, n, n, (d,))
    maxima = []
    for _ in range(n_subsets):
        idx = torch.randperm(n, generator=generator)[:sample_size]
        maxima.append(max_pairwise_distance(x[idx]))
    value = max(maxima)
    std = float(np.std(maxima, ddof=1)) if len(maxima) > 1 else float("nan")
    upper = max(diameter_upper_bound(x), value)
    return SigmaMaxEstimate(value, std, value, upper, False, n, sample_size, tuple(maxima))


# ----------------------------------------------------------------------------- Technique 2


def overlap_probability(gamma, dim):
    """Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) (Technique 2)."""
    a = math.sqrt(2.0 * dim) * (gamma - 1.0)
    return float(ndtr(a + 3.0 * gamma) - ndtr(a - 3.0 * gamma))


def solve_gamma(dim, overlap=0.5):
    """The ratio gamma > 1 with `overlap_probability(gamma, dim) == overlap` (brentq, xtol 1e-15).

    At gamma = 1 the overlap is Phi(3) - Phi(-3) = 0.9973; it falls to 0 as gamma grows only
    when sqrt(2D) > 3, so D >= 5 is needed."""
    dim = int(dim)
    if dim < 5:
        raise ValueError(f"Technique 2 needs data dimension D >= 5 (sqrt(2D) > 3), got D={dim}")
    if not 0 < overlap < overlap_probability(1.0, dim):
        raise ValueError(f"overlap must lie in (0, {overlap_probability(1.0, dim):.4f}), got {overlap}")

    def f(g):
        return overlap_probability(g, dim) - overlap

    hi = 1.0 + 1.0 / math.sqrt(dim)
    while f(hi) > 0:  # widen until the bracket holds the crossing
        hi = 1.0 + 2.0 * (hi - 1.0)
        if hi > 1e6:
            raise RuntimeError(f"no gamma found for D={dim}, overlap={overlap}")
    return optimize.brentq(f, 1.0, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)


def num_scales_for(sigma_max, sigma_min, gamma):
    """L = 1 + ceil(log(sigma_max/sigma_min) / log gamma): the fewest geometric scales from
    sigma_max to sigma_min whose ratio does not exceed gamma."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if gamma <= 1:
        raise ValueError(f"gamma must exceed 1, got {gamma}")
    steps = math.log(sigma_max / sigma_min) / math.log(gamma)
    return 1 + math.ceil(steps - 1e-9)  # tolerance: an exact fit needs no extra scale


# ----------------------------------------------------------------------------- Technique 4


def langevin_variance_ratio(eps, gamma, n_steps, sigma_min):
    """s_T^2 / sigma_i^2 of Proposition 3 after T = n_steps Langevin steps of size
    eps sigma_i^2 / sigma_min^2 on N(0, sigma_i^2) from N(0, gamma^2 sigma_i^2)."""
    u = eps / sigma_min ** 2
    r = 1.0 - u
    c = 2.0 * eps / (sigma_min ** 2 - sigma_min ** 2 * r ** 2)
    return r ** (2 * n_steps) * (gamma ** 2 - c) + c


def best_step_size(gamma, n_steps, sigma_min):
    """eps in (0, sigma_min^2) bringing `langevin_variance_ratio` closest to 1 (Technique 4).

    Returns (eps, ratio). Grid on log(eps / sigma_min^2), then a bounded scalar refinement."""
    if n_steps < 1 or int(n_steps) != n_steps:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps}")

    def gap(log_u):
        return abs(langevin_variance_ratio(math.exp(log_u) * sigma_min ** 2, gamma, n_steps,
                                           sigma_min) - 1.0)

    grid = np.linspace(math.log(1e-10), math.log(1.0 - 1e-9), 2001)
    k = int(np.argmin([gap(v) for v in grid]))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    res = optimize.minimize_scalar(gap, bounds=(lo, hi), method="bounded",
                                   options={"xatol": 1e-12})
    log_u = res.x if res.fun <= gap(grid[k]) else grid[k]
    eps = math.exp(log_u) * sigma_min ** 2
    return eps, langevin_variance_ratio(eps, gamma, n_steps, sigma_min)


def step_size_table(gamma, sigma_min, n_steps_list=(1, 2, 5, 10, 20, 50, 100)):
    """[(T, eps, s_T^2/sigma_i^2)] of `best_step_size` for several T: what more steps buy."""
    return [(int(T),) + best_step_size(gamma, T, sigma_min) for T in n_steps_list]


def snr_from_step_size(eps, sigma_min):
    """The `ald` corrector's snr for NCSNv2's eps: 2 (snr sigma_i)^2 = eps sigma_i^2 / sigma_min^2."""
    return math.sqrt(eps / (2.0 * sigma_min ** 2))


# ----------------------------------------------------------------------------- advice


def _round_up(value, digits=4):
    """`value` rounded up at `digits` significant digits (sigma_max must not fall below)."""
    if value <= 0:
        return value
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(value)))
    return math.ceil(value * scale - 1e-9) / scale


@dataclasses.dataclass
class Advice:
    """NCSNv2's noise settings for one data set (see the module docstring).

    sigma_max: the recommended largest scale (the max pairwise distance rounded up at 4
    significant digits, or as given); distance: the Technique 1 estimate behind it (None
    without data); gamma_star: the root of
    Technique 2's equation; gamma: the realised ratio (sigma_max/sigma_min)^(1/(L-1));
    overlap: Technique 2's probability at gamma; step_lr: eps of Technique 4; snr: the same
    step for the `ald` corrector; variance_ratio: s_T^2/sigma_i^2 achieved."""

    dim: int
    n_points: int
    sigma_max: float
    distance: object  # SigmaMaxEstimate, or None when sigma_max was given
    sigma_min: float
    gamma_star: float
    num_scales: int
    gamma: float
    overlap: float
    n_steps_each: int
    step_lr: float
    snr: float
    variance_ratio: float

    def config_lines(self):
        """Config assignments to paste into an ml_collections config of this toolkit.

        ml_collections keeps a field's type: where a parent config holds an int (the original's
        `model.sigma_max = 50`), change it there to a float before assigning 16.08 and the like."""
        return [
            "config.training.sde = 'vesde'",
            f"config.model.sigma_min = {self.sigma_min!r}",
            f"config.model.sigma_max = {self.sigma_max!r}",
            f"config.model.num_scales = {self.num_scales}",
            "config.sampling.predictor = 'none'",
            "config.sampling.corrector = 'ald'",
            f"config.sampling.n_steps_each = {self.n_steps_each}",
            f"config.sampling.snr = {self.snr:.4g}  # ald step 2 (snr sigma_i)^2 = "
            f"step_lr sigma_i^2 / sigma_min^2, step_lr = {self.step_lr:.4g}",
        ]

    def summary(self):
        """A human-readable account of the three techniques' numbers."""
        d = self.distance
        if d is None:
            t1 = f"Technique 1: not applied (no data); sigma_max = {self.sigma_max:g} as given"
        else:
            how = ("exact over all points" if d.exact else
                   f"max over {len(d.subset_maxima)} random subsets of {d.sample_size} points; "
                   f"subset maxima std {d.std:.4g}; certified bracket "
                   f"[{d.lower:.6g}, {d.upper:.6g}]")
            t1 = (f"Technique 1: max pairwise distance {d.value:.6g} ({how}) -> "
                  f"sigma_max = {self.sigma_max:g}")
        return "\n".join([
            (f"data: {self.n_points} points, dimension D = {self.dim}" if self.n_points
             else f"no data; dimension D = {self.dim}"),
            t1,
            f"Technique 2: gamma* = {self.gamma_star:.8f} (overlap 0.5); "
            f"L = {self.num_scales} scales from {self.sigma_max:g} to {self.sigma_min:g}, "
            f"realised gamma = {self.gamma:.6f}, overlap {self.overlap:.4f}",
            f"Technique 4: T = {self.n_steps_each} steps per scale, step_lr eps = {self.step_lr:.4g} "
            f"(snr {self.snr:.4g}), s_T^2/sigma_i^2 = {self.variance_ratio:.6f}",
        ])

    def to_dict(self):
        return dataclasses.asdict(self)


def advise(data, *, sigma_min=0.01, n_steps_each=5, sample_size=10000, n_subsets=4,
           overlap=0.5, generator=None):
    """NCSNv2's Techniques 1, 2 and 4 for `data` [n, ...] in the model's range (after the data
    scaler): sigma_max, the number of scales and the annealed Langevin step size."""
    x = torch.as_tensor(data)
    if x.dim() < 2:
        raise ValueError(f"data must have shape [n, ...] with at least one feature, got {tuple(x.shape)}")
    dist = estimate_sigma_max(x, sample_size=sample_size, n_subsets=n_subsets, generator=generator)
    if not dist.value > sigma_min:
        raise ValueError(f"the largest pairwise distance {dist.value:g} does not exceed "
                         f"sigma_min = {sigma_min:g}; lower sigma_min")
    advice = advise_for_dimension(math.prod(x.shape[1:]), _round_up(dist.value),
                                  sigma_min=sigma_min, n_steps_each=n_steps_each, overlap=overlap)
    return dataclasses.replace(advice, n_points=x.shape[0], distance=dist)


def advise_for_dimension(dim, sigma_max, *, sigma_min=0.01, n_steps_each=5, overlap=0.5):
    """Techniques 2 and 4 alone, for data of dimension `dim` and a known sigma_max."""
    gamma_star = solve_gamma(dim, overlap)
    L = num_scales_for(sigma_max, sigma_min, gamma_star)
    gamma = (sigma_max / sigma_min) ** (1.0 / (L - 1))
    eps, ratio = best_step_size(gamma, n_steps_each, sigma_min)
    return Advice(dim=int(dim), n_points=0, sigma_max=float(sigma_max), distance=None,
                  sigma_min=float(sigma_min), gamma_star=gamma_star, num_scales=L, gamma=gamma,
                  overlap=overlap_probability(gamma, dim), n_steps_each=int(n_steps_each),
                  step_lr=eps, snr=snr_from_step_size(eps, sigma_min), variance_ratio=ratio)
