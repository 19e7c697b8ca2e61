"""The samplers' view of an SDE: the (alpha, sigma) form of its kernel, its discretisation with
another number of steps, and Tweedie's denoiser."""

import copy

import torch

from sde_lib import VESDE, expand_to
from sde_lib.sdes import BetaSchedule


def with_steps(sde, steps):
    """`sde` with N = `steps` discretisation steps (the same SDE if N already matches).

    The original PC sampler always takes N = sde.N steps; here `steps` may differ, and the
    discrete noise levels of VE (SMLD sigmas) and VP/sub-VP (DDPM betas) are rebuilt for
    `steps` levels so that each step of the discretised predictors spans one level. Another SDE
    subclass is copied with its N changed (its own `discretize` must read `self.N`)."""
    steps = int(steps)
    if steps == sde.N:
        return sde
    if isinstance(sde, VESDE):
        return type(sde)(sigma_min=sde.sigma_min, sigma_max=sde.sigma_max, N=steps)
    if isinstance(sde, BetaSchedule):
        return type(sde)(beta_min=sde.beta_0, beta_max=sde.beta_1, N=steps)
    out = copy.copy(sde)
    out.N = steps
    return out


def coefficients(sde, t):
    """alpha(t), sigma(t) of the perturbation kernel N(alpha(t) x(0), sigma(t)^2 I) at [B] times t.

    Every SDE here is linear, so its probability-flow ODE is determined by these two functions
    (VE: alpha = 1, sigma = sigma(t); VP: alpha = exp(int -beta/2), sigma = sqrt(1 - alpha^2);
    sub-VP: sigma = 1 - alpha^2)."""
    ones = torch.ones(t.shape[0], 1, dtype=t.dtype, device=t.device)
    mean, std = sde.marginal_prob(ones, t)
    return mean[:, 0], std


def denoise_tweedie(score_fn, sde, x, t):
    """E[x(0) | x(t) = x] = (x + sigma(t)^2 score(x, t)) / alpha(t) (Tweedie's formula): the
    noise-free last step of the fast samplers (the "denoiser" D of Karras et al. 2022)."""
    alpha, sigma = coefficients(sde, t)
    return (x + expand_to(sigma ** 2, x) * score_fn(x, t)) / expand_to(alpha, x)
