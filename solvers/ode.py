"""The probability-flow ODE (Song et al. 2021, Sec. 4.3, Eq. 13),

    dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t),

solved with an adaptive Runge-Kutta method: sampling (T -> eps), `encode` (data x(eps) ->
latent x(T)) and `decode` (latent -> data).

Solvers: any torchdiffeq method (default 'dopri5', the Dormand-Prince 5(4) pair of SciPy's
RK45), which runs on the tensor's own device with no NumPy round trips; or 'scipy_<METHOD>'
(e.g. 'scipy_RK45', the original's solver) which flattens the state to a float64 NumPy vector
and calls scipy.integrate.solve_ivp, for parity with the original. Both control the error of the
whole batch as one vector (RMS norm), like the original. Tolerances default to the original's
rtol = atol = 1e-5.
"""

import torch

from sde_lib import expand_to
from solvers.common import CountingScore, nonfinite_rows, progress_bar, time_vector
from solvers.result import EncodeResult, SampleResult

_SCIPY_PREFIX = "scipy_"


def probability_flow_drift(score_fn, sde):
    """The drift of Eq. (13) as a function (x, t) -> dx/dt, t a [B] tensor."""
    rsde = sde.reverse(score_fn, probability_flow=True)

    def drift(x, t):
        return rsde.sde(x, t)[0]

    return drift


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
    lo, hi = sorted((float(t_start), float(t_end)))

    def f(x, t):
        # The solver's steps stay in [lo, hi]; only a trial evaluation that picks the first
        # step size could fall outside, and it is clamped.
        vec_t = time_vector(min(max(float(t), lo), hi), x)
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
        if isinstance(method, str) and method.startswith(_SCIPY_PREFIX):
            out = _integrate_scipy(f, x, t_start, t_end, rtol, atol,
                                   method[len(_SCIPY_PREFIX):], ode_options)
        else:
            out = _integrate_torchdiffeq(f, x, t_start, t_end, rtol, atol, method, ode_options)
    finally:
        bar.close()
    if bad[0] is not None:
        out = torch.where(expand_to(bad[0], out), torch.full_like(out, float("nan")), out)
    return out


def _integrate_torchdiffeq(f, x, t_start, t_end, rtol, atol, method, options):
    import torchdiffeq
    from torchdiffeq._impl.odeint import SOLVERS

    if method not in SOLVERS:
        raise ValueError(f"unknown ODE method {method!r}; known: torchdiffeq's "
                         f"{', '.join(sorted(SOLVERS))}, or 'scipy_<method>' of "
                         f"scipy.integrate.solve_ivp (e.g. 'scipy_RK45')")
    from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver

    t = torch.tensor([float(t_start), float(t_end)], dtype=torch.float64, device=x.device)
    options = dict(options or {})
    if issubclass(SOLVERS[method], RKAdaptiveStepsizeODESolver) and "step_t" not in options:
        # torchdiffeq steps past the end and interpolates back; the score is not defined
        # beyond [0, T], so make the last step end exactly at t_end.
        options["step_t"] = t[1:]
    sol = torchdiffeq.odeint(lambda s, y: f(y, s), x, t, rtol=rtol, atol=atol, method=method,
                             options=options)
    return sol[-1]


def _integrate_scipy(f, x, t_start, t_end, rtol, atol, method, options):
    """The original's solver: solve_ivp on the flattened float64 state; the score runs in the
    tensor's dtype on its device."""
    import numpy as np
    from scipy import integrate as scipy_integrate

    shape, device, dtype = x.shape, x.device, x.dtype

    def rhs(t, y):
        xt = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        return f(xt, t).detach().cpu().numpy().reshape(-1).astype(np.float64)

    y0 = x.detach().cpu().numpy().reshape(-1).astype(np.float64)
    try:
        sol = scipy_integrate.solve_ivp(rhs, (float(t_start), float(t_end)), y0, rtol=rtol,
                                        atol=atol, method=method, **(options or {}))
    except ValueError as e:
        if "method" in str(e).lower():
            raise ValueError(f"unknown ODE method 'scipy_{method}': {e}") from None
        raise
    if not sol.success:
        raise RuntimeError(f"scipy solve_ivp ({method}) failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(shape).to(device=device, dtype=dtype)


def denoise_step(score_fn, sde, x, eps):
    """One noise-free reverse-diffusion step at t = eps (the original ODE sampler's denoising):
    x - f_rev with (f_rev, G) = the reverse discretisation."""
    f, _ = sde.reverse(score_fn, probability_flow=False).discretize(x, time_vector(eps, x))
    return x - f


def ode_sampler(score_fn, sde, x, *, eps=None, denoise=True, rtol=1e-5, atol=1e-5,
                method="dopri5", ode_options=None, generator=None, progress=False,
                callback=None):
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
