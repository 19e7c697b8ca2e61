"""Small helpers the samplers share: seeded noise, time vectors, the (alpha, sigma) form of an
SDE, the Tweedie denoiser, evaluation counting and progress bars."""

import copy

import torch

from sde_lib import VESDE, expand_to
from sde_lib.sdes import _BetaSchedule


def randn(shape, generator=None, device=None, dtype=torch.float32):
    """Standard normal noise drawn from `generator` on the generator's own device, then moved
    to `device`: a CPU generator gives the same numbers whatever device the sampler runs on."""
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    z = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype)
    return z.to(device)


def randn_like(x, generator=None):
    return randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def time_vector(t, x):
    """The time `t` (a float or 0-d tensor) as a [B] tensor for `x` of shape [B, ...]."""
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


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
    if isinstance(sde, _BetaSchedule):
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


class CountingScore:
    """Wrap a score function and count its evaluations (one per call, whatever the batch)."""

    def __init__(self, score_fn):
        self.score_fn = score_fn
        self.nfe = 0

    def __call__(self, x, t):
        self.nfe += 1
        return self.score_fn(x, t)


def progress_bar(total=None, enabled=False, desc=None):
    """A tqdm bar when `enabled`, else a do-nothing stand-in with the same `update`/`close`."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False)


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass
