"""The probability-flow ODE (Song et al. 2021, Sec. 4.3, Eq. 13),

    dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t),

and the one integrator that every solve of it goes through: the ODE sampler, encode/decode
(solvers/ode.py) and the likelihood's augmented ODE (likelihood/ode.py).

Methods: torchdiffeq's (through its public `odeint`; default 'dopri5', the Dormand-Prince 5(4)
pair of SciPy's RK45), which run on the tensor's own device; or 'scipy_<METHOD>' (e.g.
'scipy_RK45', the original's solver), which flattens the state to a float64 NumPy vector for
scipy.integrate.solve_ivp. The adaptive methods' last step ends exactly at the end time: the
score is not defined beyond [0, T], and torchdiffeq would otherwise step past the end and
interpolate back.
"""

import math

import torch

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams",
                 "implicit_adams", "fixed_adams")
SCIPY_PREFIX = "scipy_"


def probability_flow_drift(score_fn, sde):
    """The drift of Eq. (13) as a function (x, t) -> dx/dt, t a [B] tensor."""
    rsde = sde.reverse(score_fn, probability_flow=True)

    def drift(x, t):
        return rsde.sde(x, t)[0]

    return drift


def check_method(method, adaptive=False):
    """`method`, or a ValueError naming the known ones: torchdiffeq's adaptive methods, and unless
    `adaptive` only those are wanted, its fixed-step ones and 'scipy_<method>'."""
    known = ADAPTIVE_METHODS if adaptive else ADAPTIVE_METHODS + FIXED_METHODS
    if method in known or (not adaptive and isinstance(method, str)
                           and method.startswith(SCIPY_PREFIX)):
        return method
    kind = "an adaptive torchdiffeq method" if adaptive else "a torchdiffeq method"
    scipy = "" if adaptive else ", or 'scipy_<method>' of scipy.integrate.solve_ivp (e.g. " \
                                "'scipy_RK45')"
    raise ValueError(f"unknown ODE method {method!r}: give {kind}, one of {', '.join(known)}"
                     f"{scipy}")


def check_tolerances(rtol, atol):
    """rtol and atol as floats, or a ValueError unless both are finite and positive."""
    try:
        rtol, atol = float(rtol), float(atol)
    except (TypeError, ValueError):
        rtol = atol = math.nan
    if not (math.isfinite(rtol) and math.isfinite(atol) and rtol > 0 and atol > 0):
        raise ValueError(f"the ODE tolerances rtol and atol must be finite and positive, got "
                         f"rtol={rtol!r}, atol={atol!r}")
    return rtol, atol


def solve(func, y0, t_start, t_end, *, rtol, atol, method, options=None):
    """y(t_end) of dy/dt = func(t, y) from y(t_start) = y0 (a tensor, or for torchdiffeq's
    methods a tuple of tensors), in either direction. `func` sees t as a float64 0-d tensor kept
    within [t_start, t_end] (only the trial evaluation that picks the first step size could fall
    outside). `options`: the method's own options (torchdiffeq's, e.g. {'norm': ...,
    'max_num_steps': ...}, or solve_ivp's keywords)."""
    check_method(method)
    rtol, atol = check_tolerances(rtol, atol)
    lo, hi = sorted((float(t_start), float(t_end)))

    def f(t, y):
        return func(t.clamp(min=lo, max=hi), y)

    if method.startswith(SCIPY_PREFIX):
        return _solve_scipy(f, y0, t_start, t_end, rtol, atol, method[len(SCIPY_PREFIX):],
                            options)
    import torchdiffeq

    device = (y0[0] if isinstance(y0, tuple) else y0).device
    t = torch.tensor([float(t_start), float(t_end)], dtype=torch.float64, device=device)
    options = dict(options or {})
    if method in ADAPTIVE_METHODS and "step_t" not in options:
        options["step_t"] = t[1:]   # the last step ends exactly at t_end
    sol = torchdiffeq.odeint(f, y0, t, rtol=rtol, atol=atol, method=method, options=options)
    return tuple(s[-1] for s in sol) if isinstance(y0, tuple) else sol[-1]


def _solve_scipy(f, x, t_start, t_end, rtol, atol, method, options):
    """The original's solver: solve_ivp on the flattened float64 state; `f` runs in the
    tensor's dtype on its device."""
    import numpy as np
    from scipy import integrate as scipy_integrate

    shape, device, dtype = x.shape, x.device, x.dtype

    def rhs(t, y):
        xt = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        out = f(torch.tensor(t, dtype=torch.float64), xt)
        return out.detach().cpu().numpy().reshape(-1).astype(np.float64)

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
