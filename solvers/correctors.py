"""Correctors of the PC sampler (Song et al. 2021, Sec. 4.2, Algorithms 4 and 5): score-based
MCMC steps at a fixed time t that move x towards p_t.

Interface (register a new one with `@register_corrector("name", options=(Option(...), ...))`):

    update(score_fn, sde, x, t, *, snr, n_steps, eps, generator=None, **options) -> (x, x_mean)

`sde` has N equal to the number of sampler steps, `eps` is the sampler's last time (the
smallest noise level visited), `options` are the corrector's own declared options (passed as
`corrector_options=` to `solvers.sample`; `solvers.declared`). `x_mean` is the state before the
last step's noise.
"""

import math
import warnings

import torch

from sde_lib import expand_to
from solvers.common import coefficients
from solvers.declared import Option, register_declared
from solvers.noise import randn_like
from sde_base.registry import Registry

CORRECTORS = Registry("corrector")


def register_corrector(name, fn=None, *, options=(), replace=False):
    """Register (or decorate) a corrector's update function with its declared options."""
    return register_declared(CORRECTORS, "corrector", name, fn, options=options,
                             replace=replace)


get_corrector = CORRECTORS.get   # naming the known ones when the name is unknown


def _discrete_alpha(sde, t):
    """alpha_i = 1 - beta_i of the DDPM discretisation (VP and sub-VP), 1 for SDEs without one
    (VE). The original reads `sde.alphas` for VP and sub-VP but sub-VP lacked it there."""
    alphas = getattr(sde, "alphas", None)
    if alphas is None:
        return torch.ones_like(t)
    return alphas.to(device=t.device, dtype=t.dtype)[sde.timestep(t)]


def _finite_mean(v):
    """The mean of the finite entries of v [B] (all of them, the plain mean, when all are
    finite); warns naming how many were left out."""
    mean = v.mean()
    finite = torch.isfinite(v)
    if math.isfinite(float(mean)) or bool(finite.all()):
        return mean
    bad = int((~finite).sum())
    warnings.warn(f"langevin corrector: {bad} of {v.numel()} samples have a NaN/inf score; the "
                  f"batch-averaged score norm leaves them out", RuntimeWarning, stacklevel=3)
    return v[finite].mean() if bad < v.numel() else v.mean()


def _langevin_step(x, grad, noise, step):
    """x_mean = x + step * grad, x = x_mean + sqrt(2 step) z, step: [B]."""
    step = expand_to(step, x)
    x_mean = x + step * grad
    return x_mean + torch.sqrt(2 * step) * noise, x_mean


@register_corrector("langevin", options=(
    Option("norm", str, "batch", "score and noise norms averaged over the batch (the "
           "original's rule) or per sample", choices=("batch", "sample")),))
def langevin(score_fn, sde, x, t, *, snr, n_steps, eps, generator=None, norm):
    """Langevin MCMC with the step size set by a target signal-to-noise ratio (Algorithm 5):
    step = 2 alpha_i (snr ||z|| / ||score||)^2, alpha_i = 1 - beta_i for VP/sub-VP, 1 for VE.

    norm='batch' (default, the original's rule): ||z|| and ||score|| are the per-sample L2
    norms averaged over the batch, so each sample's step depends on its batch-mates; samples
    whose score is NaN/inf are left out of the average (with a warning), so that one bad sample
    does not turn the whole batch to NaN.
    norm='sample': each sample uses its own norms (a batch-independent sampler)."""
    alpha = _discrete_alpha(sde, t)
    x_mean = x
    for _ in range(n_steps):
        grad = score_fn(x, t)
        noise = randn_like(x, generator)
        grad_norm = grad.flatten(1).norm(dim=1)
        noise_norm = noise.flatten(1).norm(dim=1)
        if norm == "batch":
            grad_norm, noise_norm = _finite_mean(grad_norm), noise_norm.mean()
        step = 2 * alpha * (snr * noise_norm / grad_norm) ** 2
        x, x_mean = _langevin_step(x, grad, noise, step)
    return x, x_mean


@register_corrector("ald", options=(
    Option("step_lr", float, None, "NCSN's step size at the smallest level (None: the "
           "original's snr rule)"),))
def ald(score_fn, sde, x, t, *, snr, n_steps, eps, generator=None, step_lr):
    """Annealed Langevin dynamics of NCSN (Song & Ermon 2019, Algorithm 1) at noise level
    sigma_i = the kernel's std at t: n_steps of x <- x + a_i score + sqrt(2 a_i) z with

        a_i = step_lr * sigma_i^2 / sigma_L^2,  sigma_L = the std at eps (the smallest level),

    NCSN's step_lr = 2e-5 (with sigma_L = 0.01) and 100 steps per level (n_corrector_steps=100;
    the default here stays 1). step_lr=None (default) is the original score_sde's
    AnnealedLangevinDynamics rule a_i = 2 alpha_i (snr sigma_i)^2 (alpha_i as in `langevin`),
    the same schedule for VE with snr = sqrt(step_lr / (2 sigma_L^2)): step_lr = 2e-5,
    sigma_L = 0.01 gives the NCSN configs' snr = 0.316."""
    _, sigma = coefficients(sde, t)
    if step_lr is None:
        step = 2 * _discrete_alpha(sde, t) * (snr * sigma) ** 2
    else:
        if not step_lr > 0:
            raise ValueError(f"step_lr must be positive, got {step_lr!r}")
        _, sigma_L = coefficients(sde, torch.full_like(t, eps))
        step = step_lr * (sigma / sigma_L) ** 2
    x_mean = x
    for _ in range(n_steps):
        grad = score_fn(x, t)
        x, x_mean = _langevin_step(x, grad, randn_like(x, generator), step)
    return x, x_mean


@register_corrector("none")
def none(score_fn, sde, x, t, *, snr, n_steps, eps, generator=None):
    """No corrector (a predictor-only sampler)."""
    return x, x
