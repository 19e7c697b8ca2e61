"""Fast deterministic samplers of the probability-flow ODE with a fixed time grid.

Every linear SDE here has the kernel N(alpha(t) x(0), sigma(t)^2 I) (`common.coefficients`), and
its probability-flow ODE depends on alpha and sigma only. With s = sigma / alpha (Karras et al.
2022's sigma) and x_hat = x / alpha it is

    dx_hat / ds = (x_hat - D(x, t)) / s = -sigma(t) score(x, t),
    D(x, t) = (x + sigma^2 score(x, t)) / alpha   (Tweedie's denoiser),

and in lambda = log(alpha / sigma) its solution is the exponential integral of Lu et al. (2022b)
in terms of D. So the same two samplers serve VE (alpha = 1), VP and sub-VP:

    heun          Karras et al. (2022), Algorithm 1 (deterministic, S_churn = 0): Heun's
                  2nd-order method in (s, x_hat) on the rho = 7 grid; NFE = 2 steps (+1).
    dpm_solver++  DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): multistep 2nd-order
                  exponential integrator in data prediction D, on the uniform-logSNR grid;
                  NFE = steps (+1); order=3 gives DPM-Solver++(3M).

With `denoise` (default) the last step jumps from eps to t = 0 by D(x, eps), one more
evaluation: the EDM sampler's final Euler step to sigma = 0, and the counterpart of the PC
sampler's noise removal.
"""

import math

import torch

from solvers.common import coefficients, denoise_tweedie, progress_bar, time_vector
from solvers.grids import get_grid


def _grid(sde, steps, eps, grid, rho, grid_options):
    options = dict(grid_options or {})
    if rho is not None:
        options["rho"] = rho
    fn = get_grid(grid)
    try:
        t = fn(sde, steps, eps, **options)
    except TypeError as e:
        raise ValueError(f"time grid {grid!r} does not take options {sorted(options)}: {e}") \
            from None
    alpha, sigma = coefficients(sde, t)
    return t, alpha, sigma


def heun(score_fn, sde, x, *, steps=18, eps=None, denoise=True, grid="karras", rho=None,
         grid_options=None, second_order=True, generator=None, progress=False, callback=None):
    """EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1) for any linear SDE.

    `steps` intervals of `grid` (default 'karras', rho = 7) from T to eps; each takes an Euler
    step of dx_hat/ds = -sigma score and corrects it with the slope at its end (Heun); the
    last one ends at eps. second_order=False: Euler only (NFE = steps). Returns x(eps), or
    D(x(eps), eps) with `denoise`."""
    eps = sde.sampling_eps if eps is None else eps
    t, alpha, sigma = _grid(sde, steps, eps, grid, rho, grid_options)
    s = (sigma / alpha).tolist()
    t, alpha, sigma = t.tolist(), alpha.tolist(), sigma.tolist()

    def slope(x_hat, i):
        return -sigma[i] * score_fn(alpha[i] * x_hat, time_vector(t[i], x_hat))

    bar = progress_bar(steps, progress, desc="heun")
    x_hat = x / alpha[0]
    for i in range(steps):
        ds = s[i + 1] - s[i]
        d = slope(x_hat, i)
        x_next = x_hat + ds * d
        if second_order:
            x_next = x_hat + ds * 0.5 * (d + slope(x_next, i + 1))
        x_hat = x_next
        if callback is not None:
            x_cur = alpha[i + 1] * x_hat
            callback(i, time_vector(t[i + 1], x_cur), x_cur, x_cur)
        bar.update()
    bar.close()
    x = alpha[-1] * x_hat
    if denoise:
        x = denoise_tweedie(score_fn, sde, x, time_vector(eps, x))
    return x


def dpm_solver_pp(score_fn, sde, x, *, steps=20, eps=None, denoise=True, order=2,
                  grid="logsnr", rho=None, grid_options=None, lower_order_final=True,
                  generator=None, progress=False, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) and its third-order multistep variant
    (3M, as in the reference implementation) for any linear SDE.

    With lambda_i = log(alpha_i / sigma_i), h = lambda_i - lambda_{i-1}, phi_1 = expm1(-h) and
    the data predictions D_j = D(x_j, t_j):
        x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i phi_1 D',
    order 1 (DDIM): D' = D_{i-1};
    order 2: D' = D_{i-1} + (D_{i-1} - D_{i-2}) / (2 r), r = h_{i-1} / h;
    order 3: x_i = (sigma_i/sigma_{i-1}) x_{i-1} - alpha_i (phi_1 D_{i-1} - phi_2 D1 + phi_3 D2),
             phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 1/2, with D1, D2 the first and second
             divided differences of the last three D (in lambda, scaled by h).
    The first steps use the orders their history allows; with `lower_order_final` and
    steps < 15 the last step is first order (and, for order 3, the one before second order),
    as in the reference implementation."""
    if order not in (1, 2, 3):
        raise ValueError(f"dpm_solver++ order must be 1, 2 or 3, got {order!r}")
    eps = sde.sampling_eps if eps is None else eps
    t, alpha, sigma = _grid(sde, steps, eps, grid, rho, grid_options)
    lam = torch.log(alpha / sigma).tolist()
    t, alpha, sigma = t.tolist(), alpha.tolist(), sigma.tolist()

    bar = progress_bar(steps, progress, desc="dpm_solver++")
    history = []  # (D_j, lambda_j) of the last steps, newest last
    for i in range(steps):
        history = (history + [(denoise_tweedie(score_fn, sde, x, time_vector(t[i], x)),
                               lam[i])])[-3:]
        k = min(order, len(history))
        if lower_order_final and steps < 15:
            k = min(k, steps - i)
        h = lam[i + 1] - lam[i]
        phi_1 = math.expm1(-h)
        d0 = history[-1][0]
        if k == 1:
            update = phi_1 * d0
        elif k == 2:
            (d1, l1) = history[-2]
            r0 = (lam[i] - l1) / h
            update = phi_1 * (d0 + (d0 - d1) / (2 * r0))
        else:
            (d2, l2), (d1, l1) = history[-3], history[-2]
            r0, r1 = (lam[i] - l1) / h, (l1 - l2) / h
            dd0, dd1 = (d0 - d1) / r0, (d1 - d2) / r1
            first = dd0 + r0 / (r0 + r1) * (dd0 - dd1)
            second = (dd0 - dd1) / (r0 + r1)
            phi_2 = phi_1 / h + 1
            phi_3 = phi_2 / h - 0.5
            update = phi_1 * d0 - phi_2 * first + phi_3 * second
        x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * update
        if callback is not None:
            callback(i, time_vector(t[i + 1], x), x, x)
        bar.update()
    bar.close()
    if denoise:
        x = denoise_tweedie(score_fn, sde, x, time_vector(eps, x))
    return x
