"""Sampling with the probability-flow ODE (Song et al. 2021, Sec. 4.3, Eq. 13): the ODE sampler
(T -> eps), `encode` (data x(eps) -> latent x(T)) and `decode` (latent -> data), through the one
integrator of solvers/flow.py (torchdiffeq's methods, default 'dopri5', or 'scipy_<METHOD>' for
parity with the original). The solver controls the error of the whole batch as one vector (RMS
norm), like the original. Tolerances default to the original's rtol = atol = 1e-5.
"""

import torch

from sde_lib import expand_to
from solvers.common import denoise_tweedie
from solvers.evaluations import CountingScore, nonfinite_rows
from solvers.progress import progress_bar
from solvers.shapes import time_vector
from solvers.declared import Option, positive_float, register_sampler
from solvers.flow import probability_flow_drift, solve
from solvers.result import EncodeResult, SampleResult


def integrate(score_fn, sde, x, t_start, t_end, *, rtol=1e-5, atol=1e-5, method="dopri5",
              ode_options=None, progress=False, callback=None):
    """x(t_end) from x(t_start) = x along the probability-flow ODE (either direction).

    callback(i, t, x, x), if given, sees every evaluation of the drift (trial steps included).

    The solver controls the error of the whole batch as one vector, so a sample whose drift
    turns NaN/inf would stall every other (the step size collapses); such a sample is set
    aside instead: its drift is taken as 0 from then on and it comes back as NaN."""
    drift = probability_flow_drift(score_fn, sde)
    bar = progress_bar(None, progress, desc="ode")
    count = [0]
    bad = [None]   # [B] bool: samples set aside

    def f(t, x):
        vec_t = time_vector(float(t), x)
        if callback is not None:
            callback(count[0], vec_t, x, x)
        count[0] += 1
        bar.update()
        d = drift(x, vec_t)
        nonfinite = nonfinite_rows(d)
        if nonfinite is not None:
            bad[0] = nonfinite if bad[0] is None else bad[0] | nonfinite
        if bad[0] is not None:
            d = torch.where(expand_to(bad[0], d), torch.zeros_like(d), d)
        return d

    try:
        out = solve(f, x, t_start, t_end, rtol=rtol, atol=atol, method=method,
                    options=ode_options)
    finally:
        bar.close()
    if bad[0] is not None:
        out = torch.where(expand_to(bad[0], out), torch.full_like(out, float("nan")), out)
    return out


def denoise_step(score_fn, sde, x, eps):
    """The noise-free last step at t = eps. For the original's SDEs (`sde.original_denoising`:
    VE, VP, sub-VP) the original's: one reverse-diffusion step without noise, x - f_rev with
    (f_rev, G) the reverse discretisation, of length T/N, which approximates Tweedie's
    posterior mean E[x(0) | x(eps)] when T/N is about eps (1e-3 against 1e-5 or 1e-3 by
    default). For the others, Tweedie's formula itself (`solvers.common.denoise_tweedie`):
    EDM's T/N-long step (0.08 at sigma = 0.002) overshot the posterior mean 79-fold."""
    if not sde.original_denoising:
        return denoise_tweedie(score_fn, sde, x, time_vector(eps, x))
    f, _ = sde.reverse(score_fn, probability_flow=False).discretize(x, time_vector(eps, x))
    return x - f


@register_sampler("ode", options=(
    Option("rtol", positive_float, 1e-5, "relative tolerance of the adaptive ODE solver"),
    Option("atol", positive_float, 1e-5, "absolute tolerance of the adaptive ODE solver"),
    Option("method", str, "dopri5", "torchdiffeq method, or scipy_<method> of solve_ivp"),
    Option("ode_options", None, None, "the method's own options (a dict)")))
def ode_sampler(score_fn, sde, x, *, eps, denoise, generator, progress, callback, rtol, atol,
                method, ode_options):
    """Solve the probability-flow ODE from x = x(T) to t = eps; with `denoise`, finish with
    one noise-free reverse-diffusion step at eps (counted in the NFE here; the original's count,
    solve_ivp's nfev, left it out). Deterministic: `generator` is unused."""
    eps = sde.sampling_eps if eps is None else eps
    x = integrate(score_fn, sde, x, sde.T, eps, rtol=rtol, atol=atol, method=method,
                  ode_options=ode_options, progress=progress, callback=callback)
    if denoise:
        x = denoise_step(score_fn, sde, x, eps)
    return x


def _check_eps(sde, eps):
    eps = sde.sampling_eps if eps is None else float(eps)
    if not 0 <= eps < sde.T:
        raise ValueError(f"eps must lie in [0, T) = [0, {sde.T}), got {eps}")
    return eps


@torch.no_grad()
def encode(score_fn, sde, x, *, eps=None, rtol=1e-5, atol=1e-5, method="dopri5",
           ode_options=None, progress=False):
    """The latent z = x(T) of data x = x(eps) under the probability-flow ODE (integrated from
    eps up to T). eps defaults to sde.sampling_eps. Returns EncodeResult(z, nfe)."""
    eps = _check_eps(sde, eps)
    counted = CountingScore(score_fn)
    z = integrate(counted, sde, x, eps, sde.T, rtol=rtol, atol=atol, method=method,
                  ode_options=ode_options, progress=progress)
    return EncodeResult(z, counted.nfe, {"eps": eps, "method": method, "rtol": rtol,
                                         "atol": atol})


@torch.no_grad()
def decode(score_fn, sde, z, *, eps=None, denoise=False, rtol=1e-5, atol=1e-5,
           method="dopri5", ode_options=None, progress=False):
    """Data x(eps) from the latent z = x(T) (the inverse of `encode`; no denoising step unless
    asked, so that decode(encode(x)) = x). Returns SampleResult(samples, nfe)."""
    eps = _check_eps(sde, eps)
    counted = CountingScore(score_fn)
    x = ode_sampler(counted, sde, z, eps=eps, denoise=denoise, rtol=rtol, atol=atol,
                    method=method, ode_options=ode_options, progress=progress)
    return SampleResult(x, counted.nfe, {"eps": eps, "method": method, "rtol": rtol,
                                        "atol": atol, "denoise": denoise})
