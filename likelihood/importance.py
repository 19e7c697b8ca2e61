"""Importance sampling of the time t with density proportional to g(t)^2 / sigma(t)^2 on [eps, T]
(Song, Durkan, Murray & Ermon 2021, "Maximum likelihood training of score-based diffusion
models", Sec. 5).

For a linear SDE with kernel N(alpha(t) x(0), sigma(t)^2 I) the kernel's moments obey
d sigma^2 / dt = 2 f(t) sigma^2 + g^2 and d alpha / dt = f(t) alpha, so

    g(t)^2 / sigma(t)^2 = -d/dt log SNR(t),   SNR(t) = alpha(t)^2 / sigma(t)^2,

and the normaliser is Z = log SNR(eps) - log SNR(T). Drawing t with density g^2 / (Z sigma^2) is
drawing log SNR uniformly on [log SNR(T), log SNR(eps)]: t = SNR^-1(SNR(eps) e^(-u Z)), u ~ U[0, 1).
The inverse is found by bisection on `sde.marginal_prob` (to float64 precision), so any SDE
with a consistent `sde`/`marginal_prob` pair works without edits, whatever its T.
"""

import math

import torch

BISECTION_STEPS = 64


def _coefficients(sde, t):
    """alpha(t), sigma(t), g(t) ([n], float64) through the SDE's generic methods."""
    ones = torch.ones(t.shape[0], 1, dtype=torch.float64, device=t.device)
    mean, std = sde.marginal_prob(ones, t)
    g = sde.sde(torch.zeros_like(ones), t)[1]
    return mean[:, 0].to(torch.float64), std.to(torch.float64), g.to(torch.float64)


def log_snr(sde, t):
    """log(alpha(t)^2 / sigma(t)^2), float64 [n]."""
    alpha, sigma, _ = _coefficients(sde, t.to(torch.float64))
    return 2 * (torch.log(alpha.abs()) - torch.log(sigma))


def noise_to_signal(sde, t):
    """sigma(t) / alpha(t) at a float time t: the kernel's std in data units."""
    alpha, sigma, _ = _coefficients(sde, torch.full((1,), float(t), dtype=torch.float64))
    return float(sigma[0] / alpha[0].abs())


def g2_over_sigma2(sde, t):
    """g(t)^2 / sigma(t)^2, float64 [n]: the density (up to Z) of the importance distribution."""
    _, sigma, g = _coefficients(sde, t.to(torch.float64))
    return (g / sigma) ** 2


class ImportanceTime:
    """The distribution of t with density g^2 / (Z sigma^2) on [eps, T] (module docstring).

    `sample(n, generator)` draws n times with one `torch.rand(n)` from `generator` (as many draws
    as uniform t), `density(t)` is that density, `weight(t)` = 1 / ((T - eps) density(t)) turns a
    uniform-t average into the same expectation under these draws, `Z` the normaliser."""

    def __init__(self, sde, eps):
        eps = float(eps)
        if not 0 < eps < sde.T:
            raise ValueError(f"importance sampling of t needs 0 < eps < T = {sde.T}, got eps={eps}")
        self.sde, self.eps, self.T = sde, eps, float(sde.T)
        ends = torch.tensor([eps, self.T], dtype=torch.float64)
        self.lam_eps, self.lam_T = log_snr(sde, ends).tolist()
        self.Z = self.lam_eps - self.lam_T
        if not (math.isfinite(self.Z) and self.Z > 0):
            raise ValueError(f"log SNR must fall from t = eps to T for importance sampling, got "
                             f"{self.lam_eps:.4g} at eps and {self.lam_T:.4g} at T")

    def invert(self, lam):
        """t in [eps, T] with log SNR(t) = lam ([n] float64), by bisection."""
        lo = torch.full_like(lam, self.eps)
        hi = torch.full_like(lam, self.T)
        for _ in range(BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            above = log_snr(self.sde, mid) > lam  # log SNR falls with t: the root is later
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def quantile(self, u):
        """The inverse CDF: t with P(T <= t) = u, for u in [0, 1] (float64)."""
        return self.invert(self.lam_eps - u.to(torch.float64) * self.Z)

    def sample(self, n, generator=None, device=None, dtype=torch.float32):
        """n times [n] with density g^2 / (Z sigma^2), from one uniform draw per time."""
        dev = generator.device if generator is not None else device
        u = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
        return self.quantile(u).to(device=device if device is not None else dev, dtype=dtype)

    def density(self, t):
        """g(t)^2 / (Z sigma(t)^2), float64 [n]."""
        return g2_over_sigma2(self.sde, t) / self.Z

    def weight(self, t):
        """1 / ((T - eps) density(t)) in t's dtype: E_q[weight(t) l(t)] = E_U[eps, T][l(t)]."""
        return (1.0 / ((self.T - self.eps) * self.density(t))).to(t.dtype)
