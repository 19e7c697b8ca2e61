"""UniPC (Zhao et al. 2023): a unified predictor-corrector for the probability-flow ODE, in the
data-prediction form, for any linear SDE through its kernel coefficients alpha(t), sigma(t).

With lambda = log(alpha / sigma), D(x, t) = (x + sigma^2 score) / alpha (Tweedie's denoiser) and
h = lambda_i - lambda_{i-1}, the exact step is x_i = (sigma_i / sigma_{i-1}) x_{i-1}
+ sigma_i int e^lambda D dlambda (Lu et al. 2022b, Eq. 9). UniPC approximates D by its history:

    UniP-p  (predictor, order p):  x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i phi_1 D_{i-1}
                                         - alpha_i B(h) sum_{m<p} a_m D1_m,
    UniC-p  (corrector, order p+1): the same with the new D_i = D(x_i, t_i) as one more point,
                                    coefficients c_m; D_i is reused by the next step (no extra NFE),

phi_1 = expm1(-h), D1_m = (D_{i-1-m} - D_{i-1}) / r_m, r_m = (lambda_{i-1-m} - lambda_{i-1}) / h
(r_p = 1 for the new point), and the coefficients solve R a = g (Zhao et al. 2023, Algorithm 2
in data prediction; Eq. 7 of its Appendix): R_{km} = r_m^(k-1), g_k = phi_{k+1}(-h) k! / B(h),
with phi_{k+1} built by phi_{k+1} = phi_k / (-h) - 1 / k!. For p = 2 the predictor uses
a = 1/2 (the paper's choice, which makes UniP-2 DPM-Solver++(2M)). B(h) = -h ('bh1') or
expm1(-h) ('bh2'), the paper's two variants.

Steps: the first steps use the orders their history allows; with `lower_order_final` and fewer
than 10 steps the last steps lower the order to the steps that remain (as the reference does).
The last step has no corrector; with `denoise` it ends with D(x(eps), eps) instead (one more
evaluation: "denoise to zero"). NFE = steps (+1 with `denoise`), one less with `analytic_first`.
"""

import math

import torch

from sde_lib import expand_to
from solvers.common import coefficients, denoise_tweedie
from solvers.declared import Option, register_sampler
from solvers.fast import close_and_denoise, log_snr_grid
from solvers.progress import progress_bar, step_done
from solvers.shapes import time_vector

VARIANTS = ("bh1", "bh2")


def unipc_coefficients(h, rs, variant):
    """(a, c, B): UniP's coefficients [p-1], UniC's [p] and B(h) for a step of log-SNR length
    h > 0 with the history's ratios rs = [r_1, ..., r_{p-1}] (r_m < 0: earlier points)."""
    hh = -h
    B = hh if variant == "bh1" else math.expm1(hh)
    p = len(rs) + 1
    r = torch.tensor(list(rs) + [1.0], dtype=torch.float64)
    R = torch.stack([r ** k for k in range(p)])            # R[k, m] = r_m^k
    g = []
    phi_k = math.expm1(hh) / hh - 1
    factorial = 1
    for k in range(1, p + 1):
        g.append(phi_k * factorial / B)
        factorial *= k + 1
        phi_k = phi_k / hh - 1 / factorial
    g = torch.tensor(g, dtype=torch.float64)
    if p == 1:
        a = torch.zeros(0, dtype=torch.float64)
        c = torch.tensor([0.5], dtype=torch.float64)
    else:
        a = (torch.tensor([0.5], dtype=torch.float64) if p == 2
             else torch.linalg.solve(R[:-1, :-1], g[:-1]))
        c = torch.linalg.solve(R, g)
    return a.tolist(), c.tolist(), B


def gaussian_denoiser(sde, mean=0.0, variance=1.0):
    """D(x, t) of data N(mean, variance I): alpha variance (x - alpha mean) / (alpha^2 variance
    + sigma^2) + mean. At t = T it is what the first evaluation of an accurate model returns when
    the data have this mean and variance (the 'analytical first step' of Zhou et al. 2024,
    AMED-Solver, which saves that evaluation)."""
    if not (isinstance(variance, (int, float)) and variance > 0):
        raise ValueError(f"analytic_first variance must be a positive number, got {variance!r}")

    def denoiser(x, t):
        alpha, sigma = coefficients(sde, t)
        alpha, sigma = expand_to(alpha, x), expand_to(sigma, x)
        m = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
        return m + alpha * variance * (x - alpha * m) / (alpha ** 2 * variance + sigma ** 2)

    return denoiser


@register_sampler("unipc", steps=10, grid="logsnr", options=(
    Option("order", int, 3, "the predictor's order p (the corrector's is p + 1)",
           choices=(1, 2, 3)),
    Option("variant", str, "bh2", "B(h): bh1 = h, bh2 = e^h - 1", choices=VARIANTS),
    Option("use_corrector", bool, True, "UniC after each UniP step (False: UniP alone)"),
    Option("lower_order_final", bool, True, "lower orders at the last steps when steps < 10"),
    Option("analytic_first", None, None, "(mean, variance) of the data: a Gaussian first step "
           "that saves one evaluation")))
def unipc(score_fn, sde, x, *, eps, denoise, generator, progress, callback, steps, grid, rho,
          grid_options, order, variant, use_corrector, lower_order_final, analytic_first):
    """UniPC in data prediction (Zhao et al. 2023) for any linear SDE.

    steps: intervals (default 10) of `grid` (default 'logsnr'; a grid name or explicit times).
    order: the predictor's order p in 1..3 (UniPC-p; the corrector raises it to p + 1).
    variant: 'bh2' (B(h) = e^h - 1; default: on the exact-score mixtures of
      benchmarks/samplers.py it is as good as or better than 'bh1' at 5-10 NFE, where 'bh1' can
      diverge, and identical from 12 NFE on) or 'bh1' (B(h) = h, which the paper suggests for
      unconditional sampling with few steps). use_corrector=False: UniP alone.
    analytic_first: None, or (mean, variance) of the data (a float or a tensor of the sample
      shape for the mean): the first D(x(T), T) is taken from the Gaussian with these moments
      (`gaussian_denoiser`) instead of the score, saving one evaluation.
    NFE = steps (+1 with `denoise`, -1 with `analytic_first`)."""
    t, alpha, sigma, lam = log_snr_grid(sde, steps, eps, grid, rho, grid_options)
    steps = len(t) - 1

    if analytic_first is None:
        d_first = denoise_tweedie(score_fn, sde, x, time_vector(t[0], x))
    else:
        try:
            mean, variance = analytic_first
        except (TypeError, ValueError):
            raise ValueError(f"analytic_first must be None or a pair (mean, variance), got "
                             f"{analytic_first!r}") from None
        d_first = gaussian_denoiser(sde, mean, variance)(x, time_vector(t[0], x))
    history = [(d_first, lam[0])]   # (D_j, lambda_j), newest last
    bar = progress_bar(steps, progress, desc="unipc")
    for i in range(steps):
        p = min(order, len(history))
        if lower_order_final and steps < 10:
            p = min(p, steps - i)
        h = lam[i + 1] - lam[i]
        d_prev, _ = history[-1]
        rs = [(history[-1 - m][1] - lam[i]) / h for m in range(1, p)]
        d1s = [(history[-1 - m][0] - d_prev) / r for m, r in zip(range(1, p), rs)]
        a, c, B = unipc_coefficients(h, rs, variant)
        base = (sigma[i + 1] / sigma[i]) * x - (alpha[i + 1] * math.expm1(-h)) * d_prev
        x_new = base
        if a:
            x_new = base - (alpha[i + 1] * B) * sum(ak * dk for ak, dk in zip(a, d1s))
        last = i == steps - 1
        if not last:
            d_new = denoise_tweedie(score_fn, sde, x_new, time_vector(t[i + 1], x_new))
            if use_corrector:
                res = c[-1] * (d_new - d_prev)
                for ck, dk in zip(c[:-1], d1s):
                    res = res + ck * dk
                x_new = base - (alpha[i + 1] * B) * res
            history = (history + [(d_new, lam[i + 1])])[-order:]
        x = x_new
        step_done(i, t[i + 1], x, callback, bar)
    return close_and_denoise(score_fn, sde, x, t[-1], denoise, bar)

