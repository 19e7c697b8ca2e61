"""Parameter sets, closed forms and hostile objects shared by several test files."""

import os

import torch

from solvers.common import coefficients


def pc_cases(steps):
    """(sde name, sampler options): one predictor-corrector pair per SDE, covering every
    predictor kind and both corrector choices."""
    return [("ve", dict(predictor="reverse_diffusion", corrector="langevin", steps=steps)),
            ("vp", dict(predictor="ancestral_sampling", corrector="none", steps=steps)),
            ("subvp", dict(predictor="euler_maruyama", corrector="langevin", steps=steps))]


def exact_flow(sde, mu, cov, x, t0, t1):
    """x(t1) of the probability-flow ODE from x(t0) = x, for Gaussian data N(mu, cov): in the
    eigenbasis of cov each coordinate scales by sqrt(v(t1) / v(t0)), v = alpha^2 lambda + sigma^2,
    around the moving mean alpha mu."""
    lam, U = torch.linalg.eigh(cov)
    a0, s0 = coefficients(sde, torch.tensor([float(t0)], dtype=torch.float64))
    a1, s1 = coefficients(sde, torch.tensor([float(t1)], dtype=torch.float64))
    v0, v1 = a0 ** 2 * lam + s0 ** 2, a1 ** 2 * lam + s1 ** 2
    y = (x.double() - a0 * mu) @ U
    return a1 * mu + (y * torch.sqrt(v1 / v0)) @ U.T


class Payload:
    """Unpickling this would create the folder `marker`: a loader must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def likelihood_gaussian(D, shape, seed=0):
    """A Gaussian in D = prod(shape) dimensions with a random covariance and a small mean (the
    likelihood tests' data: a small mean keeps VE's prior mismatch negligible)."""
    from sde_lib import oracle
    g = torch.Generator().manual_seed(seed)
    cov = oracle.random_covariance(D, generator=g)
    mean = 0.05 * torch.randn(D, generator=g, dtype=torch.float64)
    return oracle.gaussian(mean, cov, event_shape=shape)


def likelihood_mixture(D, shape, seed=1):
    """A three-component Gaussian mixture in D = prod(shape) dimensions with zero overall mean
    (the likelihood tests' data)."""
    from sde_lib import oracle
    g = torch.Generator().manual_seed(seed)
    covs = torch.stack([oracle.random_covariance(D, generator=g, min_eig=0.02, max_eig=0.3)
                        for _ in range(3)])
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    means = 0.3 * torch.randn(3, D, generator=g, dtype=torch.float64)
    return oracle.gaussian_mixture(means - weights @ means, covs, weights, event_shape=shape)


def counting_gaussian_score(mean, var, shape):
    """(score_fn, VP SDE): the exact score of N(mean, var I) on images of `shape` under the VP
    SDE, counting its calls in `score_fn.calls` (the bits/dim tests' model)."""
    import math
    from sde_lib import VPSDE, oracle
    sde = VPSDE()
    D = math.prod(shape)
    p = oracle.gaussian(torch.full((D,), float(mean), dtype=torch.float64), float(var),
                        event_shape=shape).marginal(sde)

    def fn(x, t):
        fn.calls += 1
        return p.score(x, t)

    fn.calls = 0
    return fn, sde
