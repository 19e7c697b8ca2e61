"""The predictor-corrector sampler (Song et al. 2021, Sec. 4.2, Algorithm 1)."""

import math

import torch

from solvers.common import with_steps
from solvers.correctors import CORRECTORS, get_corrector
from solvers.declared import (SDE_N, Option, check_declared, count, positive_float,
                              register_sampler)
from solvers.predictors import PREDICTORS, get_predictor
from solvers.progress import progress_bar
from solvers.shapes import time_vector


@register_sampler("pc", steps=SDE_N, options=(
    Option("predictor", str, "reverse_diffusion", "PC predictor", choices=PREDICTORS, flag=True),
    Option("corrector", str, "langevin", "PC corrector", choices=CORRECTORS, flag=True),
    Option("snr", positive_float, 0.16, "signal-to-noise ratio of the Langevin corrector's "
           "step", flag=True),
    Option("n_corrector_steps", count, 1, "corrector steps per noise level", flag=True),
    Option("probability_flow", bool, False, "predictor steps of the probability-flow ODE"),
    Option("corrector_first", bool, True, "corrector before predictor (the original's order)"),
    Option("predictor_options", None, None, "the predictor's own options (a dict)"),
    Option("corrector_options", None, None, "the corrector's own options (a dict)"),
    Option("project", None, None, "project(x, x_mean, t) -> (x, x_mean) after every update",
           hook=True)))
def pc_sampler(score_fn, sde, x, *, eps, denoise, generator, progress, callback, steps,
               predictor, corrector, snr, n_corrector_steps, probability_flow, corrector_first,
               predictor_options, corrector_options, project):
    """Run the PC sampler from x = x(T) (a prior draw) down to t = eps.

    Times: t_i = linspace(T, eps, N), N = `steps` (default sde.N); the discretised predictors
    and the Langevin step size use an SDE with N levels (`with_steps`). At each t_i the
    corrector runs BEFORE the predictor (the original's order, which gave the published numbers;
    `corrector_first=False` swaps them). Each predictor/corrector is looked up by name in
    PREDICTORS/CORRECTORS (or passed as a function). With `denoise` the result is the last
    update's noise-free mean (the original's `noise_removal`), else the last noisy state.

    Hooks, for conditional samplers built on this loop:
      project(x, x_mean, t) -> (x, x_mean): applied after every predictor and corrector update
        (e.g. inpainting puts the known pixels, noised to time t, back in);
      callback(i, t, x, x_mean): called after each step i, for monitoring.
    Returns the final x; score evaluations: N (n_corrector_steps + 1) for a predictor and
    corrector that each evaluate the score once per step (the original's count).
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 2:
        raise ValueError(f"the PC sampler needs steps >= 2 (its times are linspace(T, eps, "
                         f"steps), so one step would stay at T and return the prior draw), got "
                         f"{steps!r}")
    steps = int(steps)
    if not _finite_positive(snr):
        raise ValueError(f"snr must be a finite positive number, got {snr!r}")
    if (isinstance(n_corrector_steps, bool) or int(n_corrector_steps) != n_corrector_steps
            or n_corrector_steps < 0):
        raise ValueError(f"n_corrector_steps must be a non-negative integer, "
                         f"got {n_corrector_steps!r}")
    n_corrector_steps = int(n_corrector_steps)
    predict = get_predictor(predictor)
    correct = get_corrector(corrector)
    predictor_options = check_declared(predict, predictor_options, "predictor")
    corrector_options = check_declared(correct, corrector_options, "corrector")
    sde_n = with_steps(sde, steps)
    betas = getattr(sde_n, "discrete_betas", None)
    if betas is not None and float(betas.max()) >= 1:
        raise ValueError(
            f"{type(sde).__name__} with steps={steps}: its DDPM discretisation has betas up to "
            f"{float(betas.max()):.3g} >= 1, where the reverse-diffusion and ancestral steps and "
            f"the Langevin step size are undefined; use more steps (beta_max / steps < 1), or "
            f"a fast sampler (heun, dpm_solver++) for few steps")
    if eps is None:
        eps = sde.sampling_eps
    timesteps = torch.linspace(sde.T, eps, steps, dtype=torch.float64)

    def run_predictor(x, t):
        return predict(score_fn, sde_n, x, t, probability_flow=probability_flow,
                       generator=generator, **predictor_options)

    def run_corrector(x, t):
        return correct(score_fn, sde_n, x, t, snr=snr, n_steps=n_corrector_steps, eps=eps,
                       generator=generator, **corrector_options)

    stages = (run_corrector, run_predictor) if corrector_first else (run_predictor, run_corrector)
    bar = progress_bar(steps, progress, desc="pc")
    x_mean = x
    for i in range(steps):
        t = time_vector(timesteps[i], x)
        for stage in stages:
            x, x_mean = stage(x, t)
            if project is not None:
                x, x_mean = project(x, x_mean, t)
        if callback is not None:
            callback(i, t, x, x_mean)
        bar.update()
    bar.close()
    return x_mean if denoise else x


def _finite_positive(v):
    """Whether v is a number (or one-element tensor) that is finite and > 0."""
    try:
        return math.isfinite(float(v)) and float(v) > 0
    except (TypeError, ValueError, RuntimeError):
        return False
