"""Adaptive-step solver of the reverse-time SDE (Jolicoeur-Martineau et al. 2021, "Gotta Go
Fast When Generating Data with Score-Based Models", Algorithm 1).

Each sample has its own time t and step h. A step draws z once and forms

    K1 = -h f_rev(x, t) + g(t) sqrt(h) z,            x' = x + K1           (Euler-Maruyama)
    K2 = -h f_rev(x', t - h) + g(t - h) sqrt(h) z,   x'' = x + (K1 + K2)/2 (improved Euler)

(f_rev = f - g^2 score, the reverse drift of Eq. 6), with the local error E = (K2 - K1) / 2
measured by the scaled norm E_2 = ||E / delta||_2 / sqrt(n),
delta = max(atol, rtol max(|x'|, |x'_prev|)) (elementwise, x'_prev the last accepted x').
If E_2 <= 1 the step is accepted with the extrapolated x'' and t -= h; in either case
h <- min(t - eps, safety h E_2^(-exponent)). Defaults: h_init = 0.01, safety = 0.9,
exponent = 0.9, rtol = 0.01 (the authors' code); atol = 0.0078 (the paper's value for data in
[-1, 1]). NFE = 2 per iteration (the whole batch is evaluated until its slowest sample is done),
+1 for the final Tweedie denoising at eps.
"""

import torch

from sde_lib import expand_to
from solvers.common import denoise_tweedie
from solvers.evaluations import nonfinite_rows
from solvers.noise import randn_like
from solvers.progress import progress_bar
from solvers.declared import Option, positive_float, positive_int, register_sampler


@register_sampler("adaptive", options=(
    Option("rtol", positive_float, 0.01, "relative tolerance of the local error"),
    Option("atol", positive_float, 0.0078, "absolute tolerance of the local error"),
    Option("h_init", positive_float, 0.01, "first step size"),
    Option("safety", positive_float, 0.9, "safety factor of the step-size rule"),
    Option("exponent", positive_float, 0.9, "exponent of the step-size rule"),
    Option("error_norm", str, "sample", "error norm per sample (the paper's) or over the batch",
           choices=("sample", "batch")),
    Option("max_iters", positive_int, 10000, "iterations before giving up")))
def adaptive(score_fn, sde, x, *, eps, denoise, generator, progress, callback, rtol, atol,
             h_init, safety, exponent, error_norm, max_iters):
    """Sample the reverse SDE from x = x(T) to eps with adaptive steps.

    error_norm='sample' (default, the paper's): each sample has its own step, controlled by its
    own error norm. That norm averages over the n dimensions of one sample; for small n (say
    n < 16) it fluctuates with the draw z, and accepting or rejecting steps on it biases the
    samples (in 2-D the variance comes out about twice too large). error_norm='batch': one step
    for the whole batch, controlled by the RMS error over all its elements: unbiased in low
    dimension, at the cost of coupling the samples of a batch.
    A sample whose drift turns NaN/inf is set aside (finished at once, returned as NaN), so it
    neither stalls the loop nor enters the batch error norm."""
    for name, v in (("rtol", rtol), ("atol", atol), ("h_init", h_init), ("safety", safety),
                    ("exponent", exponent)):
        if not v > 0:
            raise ValueError(f"adaptive: {name} must be positive, got {v!r}")
    eps = sde.sampling_eps if eps is None else eps
    rsde = sde.reverse(score_fn)
    B = x.shape[0]
    n = x[0].numel()
    t = torch.full((B,), float(sde.T), dtype=torch.float64, device=x.device)
    h = torch.full_like(t, min(float(h_init), sde.T - eps))
    x_prev = x
    bad = torch.zeros_like(t, dtype=torch.bool)
    bar = progress_bar(None, progress, desc="adaptive")
    for it in range(max_iters):
        if not (t > eps).any():
            break
        z = randn_like(x, generator)
        hx = expand_to(h.to(x.dtype), x)
        drift, g = rsde.sde(x, t.to(x.dtype))
        k1 = -hx * drift + expand_to(g, x) * hx.sqrt() * z
        x1 = x + k1
        drift, g = rsde.sde(x1, (t - h).to(x.dtype))
        k2 = -hx * drift + expand_to(g, x) * hx.sqrt() * z
        x2 = x + 0.5 * (k1 + k2)
        delta = torch.clamp(rtol * torch.maximum(x1.abs(), x_prev.abs()), min=atol)
        ratio2 = (0.5 * (k2 - k1) / delta).flatten(1).pow(2).to(torch.float64)
        nonfinite = nonfinite_rows(ratio2)
        if nonfinite is not None:
            # a sample whose drift went NaN/inf can never pass the error test: set it aside
            # (finished, returned as NaN) instead of stalling the loop or the batch norm
            bad = bad | nonfinite
            t = torch.where(nonfinite, torch.full_like(t, eps), t)
            ratio2 = torch.where(expand_to(nonfinite, ratio2), torch.zeros_like(ratio2), ratio2)
        if error_norm == "sample":
            err = ratio2.sum(1).div(n).sqrt()
        else:
            active = (t > eps) & ~bad
            err = (ratio2[active].mean().sqrt() if bool(active.any())
                   else torch.zeros((), dtype=ratio2.dtype, device=ratio2.device)).expand(B)
        accept = (err <= 1) & (h > 0) & ~bad
        a = expand_to(accept, x)
        x = torch.where(a, x2, x)
        x_prev = torch.where(a, x1, x_prev)
        last = accept & (h >= t - eps)
        t = torch.where(last, torch.full_like(t, eps), torch.where(accept, t - h, t))
        grow = torch.where(err > 0, safety * h * err.clamp(min=1e-300) ** (-exponent),
                           torch.full_like(h, float("inf")))
        h = torch.where(bad, torch.zeros_like(h), torch.minimum((t - eps).clamp(min=0), grow))
        if callback is not None:
            callback(it, t.to(x.dtype), x, x)
        bar.update()
        bar.set_postfix(t_max=float(t.max()))
    else:
        raise RuntimeError(f"adaptive: {max_iters} iterations without reaching eps = {eps} "
                           f"(t is still up to {float(t.max()):.3g}); loosen rtol/atol or raise "
                           f"max_iters")
    bar.close()
    if denoise:
        x = denoise_tweedie(score_fn, sde, x, torch.full((B,), eps, dtype=x.dtype,
                                                         device=x.device))
    if bool(bad.any()):
        x = torch.where(expand_to(bad, x), torch.full_like(x, float("nan")), x)
    return x
