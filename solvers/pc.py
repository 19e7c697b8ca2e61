"""The predictor-corrector sampler (Song et al. 2021, Sec. 4.2, Algorithm 1)."""

import inspect

import torch

from solvers.common import finite_positive, progress_bar, time_vector, with_steps
from solvers.correctors import get_corrector
from solvers.predictors import get_predictor


def pc_sampler(score_fn, sde, x, *, predictor="reverse_diffusion", corrector="langevin",
               steps=None, snr=0.16, n_corrector_steps=1, eps=None, denoise=True,
               probability_flow=False, corrector_first=True, predictor_options=None,
               corrector_options=None, project=None, callback=None, generator=None,
               progress=False):
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
    steps = sde.N if steps is None else steps
    if isinstance(steps, bool) or int(steps) != steps or steps < 2:
        raise ValueError(f"the PC sampler needs steps >= 2 (its times are linspace(T, eps, "
                         f"steps), so one step would stay at T and return the prior draw), got "
                         f"{steps!r}")
    steps = int(steps)
    if not finite_positive(snr):
        raise ValueError(f"snr must be a finite positive number, got {snr!r}")
    predict = get_predictor(predictor)
    correct = get_corrector(corrector)
    predictor_options = _check_options(predict, predictor_options, "predictor", predictor,
                                       ("score_fn", "sde", "x", "t", "probability_flow",
                                        "generator"))
    corrector_options = _check_options(correct, corrector_options, "corrector", corrector,
                                       ("score_fn", "sde", "x", "t", "snr", "n_steps", "eps",
                                        "generator"))
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


def _check_options(fn, options, kind, name, reserved):
    """The options of a predictor/corrector, with a clear error for ones it does not take."""
    options = dict(options or {})
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return options
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return options
    own = sorted(k for k in params if k not in reserved)
    unknown = sorted(k for k in options if k not in own)
    if unknown:
        label = name if isinstance(name, str) else getattr(fn, "__name__", repr(fn))
        raise ValueError(f"{kind} {label!r} does not take {', '.join(unknown)}; its options: "
                         f"{', '.join(own) or '(none)'}")
    return options
