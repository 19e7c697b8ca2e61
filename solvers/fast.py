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

`grid` is a grid's name (solvers.grids) or an explicit 1-D tensor of times, largest first, which
then sets the number of steps; heun also takes EDM's churn (Algorithm 2). UniPC is in
solvers/unipc.py, grids fitted to a model in solvers/fitted_grid.py.
"""

import math

import torch

from solvers.common import coefficients, denoise_tweedie
from solvers.declared import Option, register_sampler
from solvers.grids import invert_noise_level, resolve_grid
from solvers.noise import randn_like
from solvers.progress import progress_bar, step_done
from solvers.shapes import time_vector


def grid_coefficients(sde, steps, eps, grid, rho, grid_options):
    """(t, alpha, sigma) of a sampler's grid (`grids.resolve_grid`: a name or explicit times)."""
    options = dict(grid_options or {})
    if rho is not None:
        options["rho"] = rho
    t = resolve_grid(sde, grid, steps, eps, **options)
    alpha, sigma = coefficients(sde, t)
    return t, alpha, sigma


def close_and_denoise(score_fn, sde, x, t_last, denoise, bar):
    """The end of a deterministic sampler: close the progress bar; with `denoise`, one Tweedie
    denoising step at the last time."""
    bar.close()
    return denoise_tweedie(score_fn, sde, x, time_vector(t_last, x)) if denoise else x


def log_snr_grid(sde, steps, eps, grid, rho, grid_options):
    """The multistep solvers' grid as lists (t, alpha, sigma, lambda = log(alpha / sigma)), from
    T to eps (default: the SDE's sampling eps)."""
    eps = sde.sampling_eps if eps is None else eps
    t, alpha, sigma = grid_coefficients(sde, steps, eps, grid, rho, grid_options)
    lam = torch.log(alpha / sigma).tolist()
    return t.tolist(), alpha.tolist(), sigma.tolist(), lam


@register_sampler("heun", steps=18, grid="karras", options=(
    Option("second_order", bool, True, "Heun's correction (False: Euler steps)"),
    Option("S_churn", float, 0.0, "EDM's churn (0: deterministic)"),
    Option("S_tmin", float, 0.0, "lowest noise level s = sigma / alpha that churns"),
    Option("S_tmax", float, float("inf"), "highest noise level that churns"),
    Option("S_noise", float, 1.0, "scale of the churn's noise")))
def heun(score_fn, sde, x, *, eps, denoise, generator, progress, callback, steps, grid, rho,
         grid_options, second_order, S_churn, S_tmin, S_tmax, S_noise):
    """EDM's Heun sampler (Karras et al. 2022, Algorithms 1 and 2) for any linear SDE.

    `steps` intervals (default 18) of `grid` (default 'karras', rho = 7; or explicit times) from
    T to eps; each takes an Euler step of dx_hat/ds = -sigma score and corrects it with the slope
    at its end (Heun), except the last, which ends at eps. second_order=False: Euler only
    (NFE = steps). Returns x(eps), or D(x(eps), eps) with `denoise`.

    Churn (Algorithm 2, stochastic; all 0 by default = Algorithm 1): at a step whose noise level
    s_i = sigma_i / alpha_i lies in [S_tmin, S_tmax] (EDM's sigma units), gamma = min(S_churn /
    steps, sqrt(2) - 1) and the state is first moved up to s_hat = s_i (1 + gamma) (at most s(T))
    by adding noise of std sqrt(s_hat^2 - s_i^2) S_noise to x_hat (from `generator`); the step
    then runs from s_hat. The same in (s, x_hat) for VE, VP and sub-VP."""
    eps = sde.sampling_eps if eps is None else eps
    t, alpha, sigma = grid_coefficients(sde, steps, eps, grid, rho, grid_options)
    steps = len(t) - 1
    s = (sigma / alpha).tolist()
    t, alpha, sigma = t.tolist(), alpha.tolist(), sigma.tolist()
    churn = _churn_rule(sde, steps, S_churn, S_tmin, S_tmax, S_noise)

    def slope_at(x_hat, t_i, alpha_i, sigma_i):
        return -sigma_i * score_fn(alpha_i * x_hat, time_vector(t_i, x_hat))

    bar = progress_bar(steps, progress, desc="heun")
    x_hat = x / alpha[0]
    for i in range(steps):
        t_i, alpha_i, sigma_i, s_i = t[i], alpha[i], sigma[i], s[i]
        if churn is not None:
            x_hat, (t_i, alpha_i, sigma_i, s_i) = churn(x_hat, (t_i, alpha_i, sigma_i, s_i),
                                                        generator)
        ds = s[i + 1] - s_i
        d = slope_at(x_hat, t_i, alpha_i, sigma_i)
        x_next = x_hat + ds * d
        if second_order:
            x_next = x_hat + ds * 0.5 * (d + slope_at(x_next, t[i + 1], alpha[i + 1],
                                                      sigma[i + 1]))
        x_hat = x_next
        if callback is not None:
            x_cur = alpha[i + 1] * x_hat
            callback(i, time_vector(t[i + 1], x_cur), x_cur, x_cur)
        bar.update()
    return close_and_denoise(score_fn, sde, alpha[-1] * x_hat, t[-1], denoise, bar)



def _churn_rule(sde, steps, S_churn, S_tmin, S_tmax, S_noise):
    """EDM's churn step (Karras et al. 2022, Algorithm 2, lines 4-6) as a function
    (x_hat, (t, alpha, sigma, s), generator) -> (x_hat, (t_hat, alpha_hat, sigma_hat, s_hat)),
    or None when S_churn = 0 (the deterministic Algorithm 1)."""
    for name, value in (("S_churn", S_churn), ("S_tmin", S_tmin), ("S_noise", S_noise)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    if not S_tmax >= S_tmin:
        raise ValueError(f"S_tmax must be at least S_tmin = {S_tmin}, got {S_tmax!r}")
    if S_churn == 0:
        return None
    gamma = min(S_churn / steps, math.sqrt(2) - 1)
    a_T, sig_T = (v.item() for v in coefficients(sde, torch.tensor([float(sde.T)],
                                                                   dtype=torch.float64)))
    s_top = sig_T / a_T

    def churn(x_hat, point, generator):
        t, _, _, s = point
        if not S_tmin <= s <= S_tmax or s >= s_top:
            return x_hat, point
        t_hat = invert_noise_level(sde, torch.tensor([min(s * (1 + gamma), s_top)]),
                                   lo=t).item()
        alpha_hat, sigma_hat = _at(sde, t_hat)
        s_hat = sigma_hat / alpha_hat
        noise = math.sqrt(max(s_hat ** 2 - s ** 2, 0.0)) * S_noise
        x_hat = x_hat + noise * randn_like(x_hat, generator)
        return x_hat, (t_hat, alpha_hat, sigma_hat, s_hat)

    return churn


def _at(sde, t):
    """(alpha(t), sigma(t)) as floats for a float time t."""
    alpha, sigma = coefficients(sde, torch.tensor([float(t)], dtype=torch.float64))
    return alpha.item(), sigma.item()


@register_sampler("dpm_solver++", steps=20, grid="logsnr", options=(
    Option("order", int, 2, "the multistep order (3: DPM-Solver++(3M))", choices=(1, 2, 3)),
    Option("lower_order_final", bool, True, "lower orders at the last steps when steps < 15")))
def dpm_solver_pp(score_fn, sde, x, *, eps, denoise, generator, progress, callback, steps, grid,
                  rho, grid_options, order, lower_order_final):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) and its third-order multistep variant
    (3M, as in the reference implementation) for any linear SDE, on `steps` intervals (default
    20) of `grid` (default 'logsnr'; or explicit times).

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
    t, alpha, sigma, lam = log_snr_grid(sde, steps, eps, grid, rho, grid_options)
    steps = len(t) - 1

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
        step_done(i, t[i + 1], x, callback, bar)
    return close_and_denoise(score_fn, sde, x, t[-1], denoise, bar)

