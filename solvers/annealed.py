"""Annealed Langevin dynamics of NCSN (Song & Ermon 2019, Algorithm 1) over the discrete noise
levels of a VE SDE, with NCSNv2's final denoising step (Song & Ermon 2020, Sec. 4 / App.), and
NCSN's inpainting (2019, Sec. 5 / App. B.3).

    res = annealed_langevin(score_fn, sde, (64, 3, 32, 32), n_steps_each=5, step_lr=6.2e-6,
                            generator=g)                                 # res.samples, res.nfe
    sde, kw = from_advice(sde_lib.advisor.advise(train_images))
    res = annealed_langevin(score_fn, sde, shape, **kw)
    res = annealed_inpaint(score_fn, sde, data, mask, **kw)

Noise levels: sigma_1 > ... > sigma_L are `sde.discrete_sigmas` reversed (L = sde.N); level i
is visited at t_i = T (1 - (i - 1)/(L - 1)), the time whose kernel std is exactly sigma_i and
whose discrete VE label round((T - t)(L - 1)) is i - 1 (`networks.get_score_fn(...,
continuous=False)`), so each level is visited once with its own sigma. At level i,
`n_steps_each` Langevin steps x <- x + a_i s(x, sigma_i) + sqrt(2 a_i) z with
a_i = step_lr sigma_i^2 / sigma_L^2; with `denoise`, a last step x <- x + sigma_L^2 s(x, sigma_L)
(Tweedie's posterior mean at sigma_L, NCSNv2).

Why not `solvers.sample(predictor='none', corrector='ald', ...)`: that PC loop visits each
discrete label once too (t = linspace(T, eps, N) rounds to labels 0..N-1 for N < 1/(2 eps)), but
(1) its times sit off the levels by t_i - t_level = (i - 1) eps / (L - 1), so a
continuous-time score (the oracle, NCSN++) and its step rule see sigma(t_i) = sigma_i
(sigma_max/sigma_min)^((i-1) eps/(L-1)), not sigma_i, and (2) its `denoise` returns the last
Langevin mean x + a_L s, not x + sigma_L^2 s. The two agree to about eps log(sigma_max/sigma_min)
relative (tests/test_annealed_langevin.py checks this) with `denoise=False`.
"""

import math

import torch

from sde_lib import VESDE, geometric_sigmas
from solvers.evaluations import CountingScore, check_finite
from solvers.noise import randn, randn_like
from solvers.operators import check_mask
from solvers.progress import progress_bar
from solvers.result import SampleResult
from solvers.shapes import time_vector


def annealed_levels(sde):
    """(times [L], sigmas [L]) of the discrete VE noise levels, largest sigma first: t_i =
    linspace(T, 0, L), sigma_i = `sde_lib.geometric_sigmas` (sde.discrete_sigmas reversed, in
    float64)."""
    if getattr(sde, "discrete_model", None) != "smld":
        raise TypeError(f"annealed Langevin dynamics runs over the SMLD noise levels of an SDE "
                        f"whose discrete model is 'smld' (VESDE), not {type(sde).__name__}")
    if sde.N < 2:
        raise ValueError(f"annealed Langevin dynamics needs at least 2 noise levels, "
                         f"got sde.N = {sde.N}")
    L = sde.N
    times = torch.linspace(sde.T, 0.0, L, dtype=torch.float64)
    sigmas = geometric_sigmas(sde.sigma_min, sde.sigma_max, L)
    return times, sigmas


def _check_settings(n_steps_each, step_lr):
    if int(n_steps_each) != n_steps_each or n_steps_each < 1:
        raise ValueError(f"n_steps_each must be a positive integer, got {n_steps_each!r}")
    if not (isinstance(step_lr, (int, float)) and math.isfinite(step_lr) and step_lr > 0):
        raise ValueError(f"step_lr must be a positive number, got {step_lr!r}")


def _anneal(score_fn, sde, x, *, n_steps_each, step_lr, denoise, generator, project, progress,
            callback):
    """Algorithm 1 from x (the state before level 1); `project(x, i, t, sigma) -> x` runs
    before the first step of level i and after every step."""
    times, sigmas = annealed_levels(sde)
    sigma_L = float(sigmas[-1])
    bar = progress_bar(len(times), progress, desc="ald")
    for i in range(len(times)):
        t = time_vector(times[i], x)
        sigma = float(sigmas[i])
        step = step_lr * (sigma / sigma_L) ** 2
        if project is not None:
            x = project(x, i, t, sigma)
        for _ in range(n_steps_each):
            grad = score_fn(x, t)
            x = x + step * grad + math.sqrt(2 * step) * randn_like(x, generator)
            if project is not None:
                x = project(x, i, t, sigma)
        if callback is not None:
            callback(i, t, x)
        bar.update()
    bar.close()
    if denoise:
        x = x + sigma_L ** 2 * score_fn(x, time_vector(times[-1], x))
    return x


@torch.no_grad()
def annealed_langevin(score_fn, sde, shape=None, *, n_steps_each=5, step_lr=6.2e-6, denoise=True,
                      generator=None, x_init=None, project=None, progress=False, callback=None,
                      device=None, dtype=torch.float32, on_nonfinite="raise"):
    """NCSN's annealed Langevin dynamics (Algorithm 1) over `sde`'s discrete levels (see the
    module docstring), from x_init or a prior draw N(0, sigma_max^2 I) (`sde.prior_sampling`).

    n_steps_each: Langevin steps per level (T of the paper; NCSN 100, NCSNv2 5). step_lr: eps
    of a_i = eps sigma_i^2 / sigma_L^2 (NCSN 2e-5, NCSNv2 CIFAR-10 6.2e-6; the advisor's
    `step_lr`). denoise: NCSNv2's last step x + sigma_L^2 s(x, sigma_L). generator: every draw.
    project(x, i, t, sigma) -> x: applied before level i's first step and after each step
    (conditional sampling). callback(i, t, x): after each level.
    on_nonfinite: 'raise' (default) stops at the level where the score returned NaN/inf, naming
    it; 'keep' goes on and lists the bad samples in info['nonfinite'] (`solvers.sample`).
    Returns SampleResult; nfe = L n_steps_each (+1 with denoise)."""
    _check_settings(n_steps_each, step_lr)
    annealed_levels(sde)
    if x_init is not None:
        if not torch.is_tensor(x_init) or x_init.dim() < 2:
            raise ValueError(f"x_init must be a tensor [B, ...], got "
                             f"{shape_or_type(x_init)}")
        if shape is not None and tuple(shape) != tuple(x_init.shape):
            raise ValueError(f"shape {tuple(shape)} does not match x_init's shape "
                             f"{tuple(x_init.shape)}")
        x = x_init.clone()
    else:
        if shape is None or len(shape) < 2 or any(int(s) != s or s < 1 for s in shape):
            raise ValueError(f"shape must be (batch, *sample_shape) of positive integers, "
                             f"got {shape!r}")
        where = generator.device if generator is not None else device
        x = sde.prior_sampling(tuple(int(s) for s in shape), generator=generator, device=where,
                               dtype=dtype).to(device)
    counted = CountingScore(score_fn, on_nonfinite)
    counted.step = 0

    def level_done(i, t, x):
        counted.step = i + 1
        if callback is not None:
            callback(i, t, x)

    x = _anneal(counted, sde, x, n_steps_each=int(n_steps_each), step_lr=float(step_lr),
                denoise=denoise, generator=generator, project=project, progress=progress,
                callback=level_done)
    info = {"sampler": "annealed_langevin", "levels": sde.N, "n_steps_each": int(n_steps_each),
            "step_lr": float(step_lr), "denoise": bool(denoise), "sigma_max": sde.sigma_max,
            "sigma_min": sde.sigma_min}
    if on_nonfinite == "keep":
        info["nonfinite"] = dict(sorted(counted.nonfinite.items()))
    return SampleResult(x, counted.nfe, info)


def from_advice(advice):
    """(VESDE(sigma_min, sigma_max, N=num_scales), {'n_steps_each', 'step_lr'}) from a
    `sde_lib.advisor.Advice` (NCSNv2 Techniques 1, 2, 4), ready for `annealed_langevin`."""
    for name in ("sigma_min", "sigma_max", "num_scales", "n_steps_each", "step_lr"):
        if not hasattr(advice, name):
            raise ValueError(f"advice has no {name!r}: pass a sde_lib.advisor.Advice")
    sde = VESDE(sigma_min=advice.sigma_min, sigma_max=advice.sigma_max, N=advice.num_scales)
    return sde, {"n_steps_each": int(advice.n_steps_each), "step_lr": float(advice.step_lr)}


@torch.no_grad()
def annealed_inpaint(score_fn, sde, data, mask, *, n_steps_each=5, step_lr=6.2e-6, denoise=True,
                     generator=None, x_init=None, progress=False, callback=None):
    """NCSN's inpainting by annealed Langevin dynamics (Song & Ermon 2019, App. B.3): at each
    level i the known pixels (mask = 1, broadcastable to data [B, ...]) are set to
    data + sigma_i z (one z per level) before the first step and after every step, and the
    Langevin steps move the whole image. The unknown pixels start from the prior (or x_init).
    With `denoise` NCSNv2's last step follows; the known pixels of the result are then `data`
    exactly. `data` must be finite where the mask is 1; its unknown pixels are never read.
    Returns SampleResult."""
    if not torch.is_tensor(data) or data.dim() < 2:
        raise ValueError(f"data must be a tensor [B, ...], got "
                         f"{shape_or_type(data)}")
    mask = check_mask(mask, data.shape).to(device=data.device, dtype=data.dtype)
    known = mask != 0
    check_finite("inpainting data", data, where=known)
    if x_init is None:
        where = generator.device if generator is not None else data.device
        x_init = sde.prior_sampling(tuple(data.shape), generator=generator, device=where,
                                    dtype=data.dtype).to(data.device)
    elif not torch.is_tensor(x_init) or x_init.shape != data.shape:
        raise ValueError(f"x_init must have the data's shape {tuple(data.shape)}, got "
                         f"{shape_or_type(x_init)}")
    noisy = {}

    def project(x, i, t, sigma):
        if noisy.get("level") != i:
            z = randn(data.shape, generator=generator, device=data.device, dtype=data.dtype)
            noisy.update(level=i, known=data + sigma * z)
        return torch.where(known, noisy["known"], x)

    res = annealed_langevin(score_fn, sde, n_steps_each=n_steps_each, step_lr=step_lr,
                            denoise=denoise, generator=generator, x_init=x_init, project=project,
                            progress=progress, callback=callback)
    x = torch.where(known, data, res.samples)
    return SampleResult(x, res.nfe, {**res.info, "sampler": "annealed_inpaint"})
