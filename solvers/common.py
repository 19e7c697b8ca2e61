"""The samplers' view of an SDE: the (alpha, sigma) form of its kernel, its discretisation with
another number of steps, and Tweedie's denoiser."""

import torch

from sde_lib import expand_to


def with_steps(sde, steps):
    """`sde` with N = `steps` discretisation steps (`SDE.with_steps`: the same SDE if N already
    matches, else its discrete noise levels rebuilt for `steps` levels, so that each step of
    the discretised predictors spans one level; the original PC sampler always takes N = sde.N)."""
    return sde.with_steps(steps)


def coefficients(sde, t):
    """alpha(t), sigma(t) of the perturbation kernel N(alpha(t) x(0), sigma(t)^2 I) at [B] times t
    (`SDE.coefficients`)."""
    return sde.coefficients(t)


def denoise_tweedie(score_fn, sde, x, t):
    """E[x(0) | x(t) = x] = (x + sigma(t)^2 score(x, t)) / alpha(t) (Tweedie's formula): the
    noise-free last step of the fast samplers (the "denoiser" D of Karras et al. 2022)."""
    alpha, sigma = coefficients(sde, t)
    return (x + expand_to(sigma ** 2, x) * score_fn(x, t)) / expand_to(alpha, x)
