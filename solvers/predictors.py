"""Predictors of the PC sampler (Song et al. 2021, Sec. 4.2 and App. G): one step of a
reverse-time SDE solver from time t to the next, lower, noise level.

Interface (register a new one with `@register_predictor("name")`):

    update(score_fn, sde, x, t, *, probability_flow=False, generator=None) -> (x, x_mean)

`sde` is the forward SDE with N equal to the number of sampler steps (see
`solvers.common.with_steps`), so a step spans T / N in time or one discrete noise level; `t` is a
[B] tensor; `x_mean` is the new state without the step's noise (returned by the sampler as the
final, denoised sample). With `probability_flow=True` each predictor takes a noise-free step of the
probability-flow ODE (Eq. 13) instead and returns x == x_mean.
"""

import math

import torch

from sde_lib import expand_to
from solvers.noise import randn_like
from sde_base.registry import Registry

PREDICTORS = Registry("predictor")


# register_predictor(name, fn=None, *, replace=False) registers (or decorates) an update function;
# get_predictor(name) looks one up, naming the known ones when it is unknown.
register_predictor, get_predictor = PREDICTORS.register, PREDICTORS.get


@register_predictor("euler_maruyama")
def euler_maruyama(score_fn, sde, x, t, *, probability_flow=False, generator=None):
    """x_mean = x - f_rev(x, t) dt', x = x_mean + g_rev(t) sqrt(dt') z with dt' = T / N,
    f_rev = f - g^2 score (Eq. 6; g^2 / 2 and no noise for the ODE of Eq. 13)."""
    dt = sde.T / sde.N
    drift, diffusion = sde.reverse(score_fn, probability_flow).sde(x, t)
    x_mean = x - drift * dt
    if probability_flow:
        return x_mean, x_mean
    return x_mean + expand_to(diffusion, x) * math.sqrt(dt) * randn_like(x, generator), x_mean


@register_predictor("reverse_diffusion")
def reverse_diffusion(score_fn, sde, x, t, *, probability_flow=False, generator=None):
    """The reverse of the forward discretisation x_{i+1} = x_i + f_i + G_i z (App. E):
    x_mean = x - f_i + G_i^2 score, x = x_mean + G_i z (SMLD steps for VE, DDPM for VP)."""
    f, G = sde.reverse(score_fn, probability_flow).discretize(x, t)
    x_mean = x - f
    if probability_flow:
        return x_mean, x_mean
    return x_mean + expand_to(G, x) * randn_like(x, generator), x_mean


@register_predictor("ancestral_sampling")
def ancestral_sampling(score_fn, sde, x, t, *, probability_flow=False, generator=None):
    """Ancestral sampling (App. F): a draw from the posterior q(x_{i-1} | x_i, x_0 = x0_hat)
    with Tweedie's x0_hat = (x + sigma_i^2 score) / alpha_i.

    The levels i, i - 1 are the SDE's (`sde.level_coefficients`): SMLD's and DDPM's for the
    SDEs with those discrete models, else the continuous kernel at t and t - T/N.
    SMLD (VE): x_mean = x + (sigma_i^2 - sigma_{i-1}^2) score,
    std = sqrt(sigma_{i-1}^2 (sigma_i^2 - sigma_{i-1}^2) / sigma_i^2).
    DDPM (VP): x_mean = (x + beta_i score) / sqrt(1 - beta_i), std = sqrt(beta_i).
    Other SDEs (sub-VP, cosine VP, EDM; the original supports only VE and VP): the exact
    Gaussian posterior between the two kernels, which for alpha = 1 is the SMLD formula.
    probability_flow=True: the deterministic (DDIM, eta = 0) step
    x_{i-1} = alpha_{i-1} x0_hat + sigma_{i-1} eps_hat, eps_hat = -sigma_i score."""
    if sde.discrete_model == "ddpm" and not probability_flow:
        i = sde.timestep(t)
        beta = expand_to(sde.discrete_betas.to(device=x.device, dtype=x.dtype)[i], x)
        x_mean = (x + beta * score_fn(x, t)) / torch.sqrt(1 - beta)
        return x_mean + beta.sqrt() * randn_like(x, generator), x_mean
    a_t, s_t, a_s, s_s = (expand_to(v, x) for v in sde.level_coefficients(t))
    score = score_fn(x, t)
    x0 = (x + s_t ** 2 * score) / a_t
    if probability_flow:
        x_new = a_s * x0 - s_s * s_t * score
        return x_new, x_new
    if sde.discrete_model == "smld":
        var_step = s_t ** 2 - s_s ** 2
        x_mean = x + var_step * score
        std = torch.sqrt(s_s ** 2 * var_step / s_t ** 2)
    else:
        a = a_t / a_s
        var_step = s_t ** 2 - a ** 2 * s_s ** 2
        x_mean = (a * s_s ** 2 * x + a_s * var_step * x0) / s_t ** 2
        std = torch.sqrt((s_s ** 2 * var_step / s_t ** 2).clamp(min=0))
    return x_mean + std * randn_like(x, generator), x_mean


@register_predictor("none")
def none(score_fn, sde, x, t, *, probability_flow=False, generator=None):
    """No predictor (a corrector-only sampler such as NCSN's annealed Langevin dynamics)."""
    return x, x
