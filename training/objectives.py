"""Score-estimation objectives beside denoising score matching (DSM).

Score matching (Hyvarinen 2005) fits s(x) ~ grad log p(x) by minimising

    J(s) = E_p[ tr(grad_x s(x)) + 1/2 ||s(x)||^2 ]  =  1/2 E_p ||s - grad log p||^2 - const,

which needs no target score, only samples of p:

* ``exact_sm``: the Jacobian trace exactly, with D backward passes (low dimensions only).
* ``ssm``: sliced score matching (Song, Garg, Shi & Ermon 2019),
  E_v[ v^T (grad_x s) v + 1/2 (v^T s)^2 ] with random projections v, E[v v^T] = I.
* ``ssm_vr``: its variance-reduced form, with 1/2 (v^T s)^2 replaced by its mean 1/2 ||s||^2.

For noise-conditional (labels) and time-conditional (t) models the objective is applied at each
noise level to the perturbed data x~ = mean + std z (the SDE's perturbation kernel) and weighted
by lambda = std^2, SMLD's and the original's DSM weighting. Since x~ ~ p_std, the minimiser is the
score of the perturbed distribution, the same as DSM's. The per-sample values are scaled to match
the original DSM losses up to a constant independent of s:

    reduce_mean=False:  lambda (tr + 1/2 ||s||^2)      <->  1/2 sum (std s + z)^2
    reduce_mean=True:   lambda (2 tr + ||s||^2) / D    <->  mean (std s + z)^2

Models must treat batch entries independently (per-sample normalisation, eval-mode batch norm):
the traces are taken from gradients of batch sums.

Registry: ``get_objective(name)`` for 'ssm', 'ssm_vr', 'exact_sm'. Each is called as
``fn(score_fn, x, t_or_labels, *, sde=..., sigmas=..., z=None, generator=None,
batch_mean=True, **options)`` with clean data x and the times or labels already drawn, and
returns the batch-mean loss (or [B]). 'dsm' is training/losses.py's adapter of `dsm_loss` and
`smld_loss`, registered there with the same decorator; importing the `training` package imports
both modules, so every objective is registered whichever module is imported first.
``objective_from_config`` reads ``config.training.objective`` (default 'dsm').
"""

import functools
import math

import torch

from likelihood.divergence import random_projections
from sde_base.registry import Registry
from sde_lib import expand_to

OBJECTIVES = Registry("objective")


def register_objective(name, fn=None):
    """Register `fn` under `name` (usable as a decorator); names are unique."""
    return OBJECTIVES.register(name, fn)


def objective_names():
    return OBJECTIVES.names()


def get_objective(name, **options):
    """The objective registered as `name`, with `options` bound as keyword defaults."""
    fn = OBJECTIVES.get(name)
    return functools.partial(fn, **options) if options else fn


def objective_from_config(config):
    """`get_objective` for `config.training.objective` (default 'dsm'), with the options
    `config.training.reduce_mean`, `ssm_n_particles` (1), `ssm_noise_type` ('rademacher'),
    `likelihood_weighting` (False) bound."""
    tr = config.training
    name = str(tr.get("objective", "dsm")).lower()
    if name == "dsm":
        return get_objective("dsm")
    options = {"reduce_mean": bool(tr.get("reduce_mean", False)),
               "weighting": "likelihood" if tr.get("likelihood_weighting", False) else "sigma2"}
    if name in ("ssm", "ssm_vr"):
        options["n_particles"] = int(tr.get("ssm_n_particles", 1))
        options["noise_type"] = str(tr.get("ssm_noise_type", "rademacher"))
    return get_objective(name, **options)


# ----------------------------------------------------------------------------- estimators


def _leaf(x):
    return x.detach().requires_grad_(True)


def sliced_score_matching(fn, x, *, n_particles=1, variance_reduction=True,
                          noise_type="rademacher", create_graph=True, generator=None):
    """Per-sample sliced score matching of s = fn(x) on samples x [B, ...]: [B].

    Estimates tr(grad s) + 1/2 ||s||^2 by the mean over `n_particles` probes of
    v^T (grad s) v + 1/2 (v^T s)^2, or + 1/2 ||s||^2 with `variance_reduction` (SSM-VR).
    v^T (grad s) v = v . grad_x (v . s), one backward pass per probe."""
    if n_particles < 1:
        raise ValueError(f"n_particles must be >= 1, got {n_particles}")
    x = _leaf(x)
    s = fn(x)
    if s.shape != x.shape:
        raise ValueError(f"the score must have the data's shape {tuple(x.shape)}, got {tuple(s.shape)}")
    total = 0.0
    for _ in range(n_particles):
        v = random_projections(x.shape, noise_type, generator, x.device, x.dtype)
        vs = (v * s).flatten(1).sum(1)
        (jv,) = torch.autograd.grad(vs.sum(), x, create_graph=create_graph, retain_graph=True)
        total = total + (v * jv).flatten(1).sum(1)
        if not variance_reduction:
            total = total + 0.5 * vs ** 2
    total = total / n_particles
    if variance_reduction:
        total = total + 0.5 * s.flatten(1).pow(2).sum(1)
    return total


def jacobian_trace(fn, x, *, create_graph=True, max_dim=256):
    """s = fn(x) and tr(grad_x s) per sample, exactly: one backward pass per dimension."""
    dim = x[0].numel()
    if dim > max_dim:
        raise ValueError(f"the exact Jacobian trace costs D = {dim} backward passes, above "
                         f"max_dim = {max_dim}; use 'ssm'/'ssm_vr' or raise max_dim")
    x = _leaf(x)
    s = fn(x)
    if s.shape != x.shape:
        raise ValueError(f"the score must have the data's shape {tuple(x.shape)}, got {tuple(s.shape)}")
    sf = s.reshape(s.shape[0], -1)
    trace = 0.0
    for i in range(dim):
        (g,) = torch.autograd.grad(sf[:, i].sum(), x, create_graph=create_graph, retain_graph=True)
        trace = trace + g.reshape(g.shape[0], -1)[:, i]
    return s, trace


def exact_score_matching(fn, x, *, create_graph=True, max_dim=256):
    """Per-sample score matching tr(grad s) + 1/2 ||s||^2 of s = fn(x) with the exact trace: [B]."""
    s, trace = jacobian_trace(fn, x, create_graph=create_graph, max_dim=max_dim)
    return trace + 0.5 * s.flatten(1).pow(2).sum(1)


# ----------------------------------------------------------------------------- noise levels


def perturbation_kernel(x, t_or_labels, *, sde=None, sigmas=None):
    """Mean and std ([B]) of the perturbation kernel at each entry of `t_or_labels`.

    Float t [B]: `sde.marginal_prob(x, t)` (time-conditional models). Integer labels [B]:
    std = sigmas[labels] with mean x (noise-conditional, SMLD); without `sigmas`, the kernel of
    the SDE's discrete model (`sde.discrete_kernel`): VE's SMLD levels (label 0 = sigma_max),
    VP's DDPM sqrt(alphas_cumprod[labels]) x and sqrt(1 - alphas_cumprod[labels])."""
    c = t_or_labels
    if not torch.is_tensor(c) or c.dim() != 1 or c.shape[0] != x.shape[0]:
        raise ValueError(f"t_or_labels must be a tensor of shape [B] = [{x.shape[0]}], got "
                         f"{tuple(c.shape) if torch.is_tensor(c) else type(c).__name__}")
    if torch.is_floating_point(c):
        if sde is None:
            raise ValueError("float times t need the sde (sde=...) for the perturbation kernel")
        return sde.marginal_prob(x, c)
    if sigmas is not None:
        sigmas = torch.as_tensor(sigmas, device=x.device)
        if c.min() < 0 or c.max() >= len(sigmas):
            raise ValueError(f"labels must lie in [0, {len(sigmas)}), got "
                             f"[{int(c.min())}, {int(c.max())}]")
        return x, sigmas[c].to(x.dtype)
    if sde is None or sde.discrete_model is None:
        raise ValueError("integer labels need sigmas=... or an SDE with a discrete model (VE, VP; "
                         f"sde=...); got sde={type(sde).__name__ if sde is not None else None}")
    a, s = sde.discrete_kernel(c.to(x.device))
    return expand_to(a.to(x.dtype), x) * x, s.to(x.dtype)


def _weights(std, t_or_labels, weighting, sde):
    if weighting == "sigma2":
        return std ** 2
    if weighting == "none":
        return torch.ones_like(std)
    if weighting == "likelihood":
        if sde is None or not torch.is_floating_point(t_or_labels):
            raise ValueError("weighting='likelihood' (g(t)^2) needs float times t and the sde")
        dummy = torch.zeros(std.shape[0], 1, device=std.device, dtype=std.dtype)
        return sde.sde(dummy, t_or_labels)[1] ** 2
    if callable(weighting):
        return weighting(std)
    raise ValueError(f"weighting must be 'sigma2', 'likelihood', 'none' or a callable, got {weighting!r}")


def _noise_conditional(per_sample, score_fn, x, t_or_labels, *, sde, sigmas, weighting,
                       reduce_mean, z, generator, batch_mean):
    """Apply `per_sample(fn, x~)` at x~ = mean + std z and weight it: the batch mean, or [B]."""
    mean, std = perturbation_kernel(x, t_or_labels, sde=sde, sigmas=sigmas)
    weights = _weights(std, t_or_labels, weighting, sde)
    if z is None:
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    elif z.shape != x.shape:
        raise ValueError(f"z must have the data's shape {tuple(x.shape)}, got {tuple(z.shape)}")
    perturbed = mean + expand_to(std, x) * z
    values = per_sample(lambda y: score_fn(y, t_or_labels), perturbed)
    if reduce_mean:
        values = 2.0 * values / math.prod(x.shape[1:])
    losses = weights * values
    return losses.mean() if batch_mean else losses


@register_objective("ssm_vr")
def sliced_score_matching_loss(score_fn, x, t_or_labels, *, sde=None, sigmas=None,
                               n_particles=1, variance_reduction=True, noise_type="rademacher",
                               weighting="sigma2", reduce_mean=False, z=None, generator=None,
                               batch_mean=True):
    """Sliced score matching of `score_fn(x~, t_or_labels)` on perturbed clean data x [B, ...].

    Fits the score of p_std at each level; see `perturbation_kernel` for t vs labels and the
    module docstring for the weighting and reduction. The perturbation noise z is drawn from
    `generator` (first) unless given, then the probes. Returns the batch mean, or the
    per-sample losses [B] with batch_mean=False."""
    per_sample = functools.partial(sliced_score_matching, n_particles=n_particles,
                                   variance_reduction=variance_reduction,
                                   noise_type=noise_type, generator=generator)
    return _noise_conditional(per_sample, score_fn, x, t_or_labels, sde=sde, sigmas=sigmas,
                              weighting=weighting, reduce_mean=reduce_mean, z=z,
                              generator=generator, batch_mean=batch_mean)


register_objective("ssm", functools.partial(sliced_score_matching_loss, variance_reduction=False))


@register_objective("exact_sm")
def exact_score_matching_loss(score_fn, x, t_or_labels, *, sde=None, sigmas=None,
                              weighting="sigma2", reduce_mean=False, max_dim=256, z=None,
                              generator=None, batch_mean=True):
    """Score matching with the exact Jacobian trace (D backward passes) on perturbed data;
    arguments as for `sliced_score_matching_loss`."""
    per_sample = functools.partial(exact_score_matching, max_dim=max_dim)
    return _noise_conditional(per_sample, score_fn, x, t_or_labels, sde=sde, sigmas=sigmas,
                              weighting=weighting, reduce_mean=reduce_mean, z=z,
                              generator=generator, batch_mean=batch_mean)
