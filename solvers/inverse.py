"""Linear inverse problems y = A x (+ sigma_y n) solved with a score model as the prior.

The operators A (`Mask`, `Colorization`, `SuperResolution`, `Blur`, `MatrixOperator`,
`FunctionOperator`) are in `solvers.operators`; this module holds the posterior samplers.

Methods of `linear_inverse(score_fn, sde, y, operator, noise_std=..., method=...)`:

  'projection'  (noiseless y; the PC sampler, any predictor and corrector). Song et al. 2021,
      Sec. 5 and App. I: after every predictor and corrector update the observed component is
      replaced by the forward-diffused observation,
          x <- x + A^+ (y_t - A x),   y_t = alpha(t) y + sigma(t) A z,   z ~ N(0, I),
      which for a mask is the paper's inpainter (known pixels <- noised data) and for
      Colorization its colorizer. The final sample's observed component is set to y exactly.
      It is an approximation: the unknown part follows the reverse SDE of the *joint* prior
      given a noised copy of y, not the conditional p_t(x_t | y). For a correlated Gaussian prior
      its predictor-only samples keep a bias that does not vanish with more steps; the Langevin
      corrector reduces it as steps grow (numbers in benchmarks/RESULTS.md).

  Guidance methods (noisy or noiseless y; every sampler: PC with any predictor/corrector, ode,
  heun, dpm_solver++, adaptive). The score is replaced by the posterior score
      grad log p_t(x | y) = score(x, t) + scale * grad_x log p(y | x_t = x),
  with p(y | x_t) taken Gaussian around Tweedie's denoiser x0_hat(x) = (x + sigma^2 score) / alpha:
      p(y | x_t) ~= N(y; A x0_hat(x), sigma_y^2 I + A C_t A^T),
  and the methods differ only in C_t, the assumed covariance of x_0 given x_t:
    'dps'    C_t = 0 (Chung et al. 2023, diffusion posterior sampling): needs sigma_y > 0; the
             guidance then is -grad ||y - A x0_hat||^2 / (2 sigma_y^2). Not exact: it ignores the
             spread of x_0 given x_t, so it over-trusts x0_hat at high noise (the paper tunes a
             step size `scale` instead). Default for noisy observations.
    'pigdm'  C_t = r_t^2 I, r_t^2 = v sigma^2 / (alpha^2 v + sigma^2) (Song et al. 2023,
             pseudoinverse-guided diffusion; v = `data_variance`, 1 in the paper): exact for an
             isotropic Gaussian prior N(mu, v I); works for sigma_y = 0.
    'tmpd'   C_t = (sigma^2 / alpha) d x0_hat / dx (second-order Tweedie; Boys et al. 2023,
             Tweedie moment projection): exact for every Gaussian prior, noisy or not; costs one
             backward pass per observed coordinate and an m x m solve per sample, so it is for
             small problems (m up to a few hundred).
  With sigma_y = 0 the final sample's observed component is also set to y exactly (x <- x +
  A^+ (y - A x)) when the operator has a pseudo-inverse.

Starting point (`init`): 'marginal' (default) draws the unknown part from the prior and puts the
known part at its marginal at T, A^+ (alpha_T y + sigma_T A z), so every component starts at the
noise level of T; 'original' keeps the known part clean at T as the original code did (which
starts the known part off its marginal at T); 'prior' is a plain prior draw (the guidance
methods' start).
"""

import math

import torch

from sde_lib import expand_to
from solvers.common import coefficients
from solvers.evaluations import check_finite
from solvers.noise import randn
from solvers.operators import LinearOperator
from solvers.result import SampleResult
from solvers.sampling import sample
from solvers.shapes import batch_slices, probe_score, shape_or_type

METHODS = ("projection", "dps", "pigdm", "tmpd")
INITS = ("marginal", "original", "prior")


# ----------------------------------------------------------------------------- the methods

def posterior_score(score_fn, sde, y, operator, *, noise_std=0.0, method="dps", scale=1.0,
                    data_variance=1.0):
    """score(x, t) + scale * grad_x log p(y | x_t = x) under the Gaussian approximation of
    `method` ('dps', 'pigdm' or 'tmpd'; see the module docstring). `y` must have the batch of
    the x the returned function is called with. Gradients run under torch.enable_grad."""
    if method not in ("dps", "pigdm", "tmpd"):
        raise ValueError(f"guidance method must be 'dps', 'pigdm' or 'tmpd', got {method!r}")
    noise_var = float(noise_std) ** 2
    if method == "dps" and noise_var == 0:
        raise ValueError("method 'dps' needs noisy observations (noise_std > 0): its likelihood "
                         "N(y; A x0_hat, noise_std^2 I) is degenerate for noise_std = 0; use "
                         "'pigdm', 'tmpd' or 'projection'")

    def fn(x, t):
        alpha, sigma = coefficients(sde, t)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            s = score_fn(xg, t)
            x0 = (xg + expand_to(sigma ** 2, xg) * s) / expand_to(alpha, xg)
            if method == "tmpd":
                guide = _tmpd_gradient(xg, x0, y, operator, alpha, sigma, noise_var)
            else:
                resid = (y - operator.forward(x0)).detach()
                if method == "dps":
                    c = torch.zeros_like(alpha)
                else:
                    v = float(data_variance)
                    c = v * sigma ** 2 / (alpha ** 2 * v + sigma ** 2)
                u = operator.gram_solve(resid, c, torch.full_like(alpha, noise_var))
                guide, = torch.autograd.grad(x0, xg, grad_outputs=operator.transpose(u))
        return s.detach() + scale * guide.detach()

    return fn


def _tmpd_gradient(xg, x0, y, operator, alpha, sigma, noise_var):
    """J^T A^T (A C A^T + s I)^{-1} (y - A x0_hat) with C = (sigma^2/alpha) J, J = dx0_hat/dx,
    built from one backward pass per observed coordinate (those where A^T e_k != 0)."""
    B = xg.shape[0]
    m = y[0].numel()
    eye = torch.eye(m, dtype=y.dtype, device=y.device)
    # A^T e_k for each observed coordinate k, one batch [B, ...] at a time: the operator may
    # hold per-sample parameters (a [B, ...] mask), so each of its calls sees a batch of B
    V = torch.stack([operator.transpose(eye[k].reshape(y.shape[1:]).expand(y.shape).contiguous())
                     for k in range(m)])                     # [m, B, *x_shape]
    norms = V.flatten(2).pow(2).sum(2)                       # [m, B] = diag(A A^T)
    active = (norms > 0).any(1).nonzero().flatten()
    V, norms = V[active], norms[active]
    W, = torch.autograd.grad(x0, xg, grad_outputs=V.to(xg.dtype), is_grads_batched=True)
    AW = torch.stack([operator.forward(w) for w in W.detach()]).reshape(-1, B, m)[..., active]
    AJA = AW.permute(1, 2, 0).to(torch.float64)              # [B, i, k] = (A J A^T)_{ik}
    AJA = 0.5 * (AJA + AJA.transpose(1, 2))
    c = (sigma ** 2 / alpha).to(torch.float64)[:, None, None]
    null = (norms.T == 0).to(torch.float64)                  # rows outside this sample's range
    M = c * AJA + torch.diag_embed(noise_var + null)
    resid = (y - operator.forward(x0.detach())).reshape(B, m)[:, active].to(torch.float64)
    sol = torch.linalg.solve(M, resid.unsqueeze(-1)).squeeze(-1)     # [B, K]
    return torch.einsum("kb...,bk->b...", W.detach(), sol.to(W.dtype))


def replace_observed(operator, x, y):
    """x - A^+ A x + A^+ y: x with its observed component replaced by that of y (computed in
    this order, a mask's known pixels become exactly y)."""
    return (x - operator.pinv(operator.forward(x))) + operator.pinv(y)


def projection_hook(sde, y, operator, generator=None):
    """project(x, x_mean, t) for the PC sampler: x <- x + A^+ (y_t - A x) with the
    forward-diffused observation y_t = alpha(t) y + sigma(t) A z (fresh z at every call), and
    x_mean <- x_mean + A^+ (alpha(t) y - A x_mean). Like the original, t is the time of the
    step just taken."""

    def project(x, x_mean, t):
        alpha, sigma = coefficients(sde, t)
        z = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        y_mean = expand_to(alpha, y) * y
        y_t = y_mean + expand_to(sigma, y) * operator.forward(z)
        x = replace_observed(operator, x, y_t)
        x_mean = replace_observed(operator, x_mean, y_mean)
        return x, x_mean

    return project


def initial_state(sde, y, operator, x_shape, init="marginal", generator=None, device=None,
                  dtype=torch.float32):
    """x(T) for the inverse problem: a prior draw whose observed component is, for 'marginal',
    the observation diffused to T, A^+ (alpha_T y + sigma_T A z); for 'original', y itself
    (clean at T); for 'prior', left as drawn."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    where = generator.device if generator is not None else device
    x = sde.prior_sampling(x_shape, generator=generator, device=where, dtype=dtype).to(device)
    if init == "prior":
        return x
    y = y.to(device=device, dtype=dtype)
    if init == "original":
        target = y
    else:
        T = torch.full((x_shape[0],), float(sde.T), device=device, dtype=dtype)
        alpha, sigma = coefficients(sde, T)
        z = randn(x_shape, generator=generator, device=device, dtype=dtype)
        target = expand_to(alpha, y) * y + expand_to(sigma, y) * operator.forward(z)
    return replace_observed(operator, x, target)


def run_chunks(build, sde, n, *, batch_size=None, generator=None, **sample_kwargs):
    """Run `solvers.sample` on each batch chunk: build(sl) -> (score_fn, x_init, options,
    finish) gives the chunk's score, start and extra sampler options; finish(x) (or None)
    post-processes its samples. Returns SampleResult (nfe: the largest over chunks)."""
    outs, nfes, info, nonfinite = [], [], {}, {}
    for sl in batch_slices(n, batch_size):
        score, x_init, options, finish = build(sl)
        res = sample(score, sde, x_init=x_init, generator=generator, check_shape=False,
                     **options, **sample_kwargs)
        outs.append(res.samples if finish is None else finish(res.samples))
        nfes.append(res.nfe)
        info = {k: v for k, v in res.info.items() if k != "nfe_per_batch"}
        nonfinite.update({r + sl.start: v for r, v in res.info.get("nonfinite", {}).items()})
    info["nfe_per_batch"] = nfes
    info["batches"] = len(nfes)
    if "nonfinite" in info:
        info["nonfinite"] = nonfinite
    return SampleResult(outs[0] if len(outs) == 1 else torch.cat(outs), max(nfes), info)


def linear_inverse(score_fn, sde, y, operator, *, noise_std=0.0, method=None, init=None,
                   scale=1.0, data_variance=1.0, sampler="pc", batch_size=None, generator=None,
                   device=None, **sample_kwargs):
    """Samples of p(x | y) for observations y = A x + noise_std * n of x drawn from the prior
    whose score is `score_fn` under `sde` (A = `operator`, a `LinearOperator`).

    method: 'projection' (default for noise_std = 0; PC sampler only), 'dps' (default for
      noise_std > 0), 'pigdm' or 'tmpd' (module docstring: what each assumes and costs).
    init: the start x(T), 'marginal' (default for 'projection'), 'original' or 'prior' (default
      for the guidance methods). scale: weight of the guidance term (1 = the posterior score).
    data_variance: v of 'pigdm'. Every other keyword (sampler, predictor, corrector, steps, snr,
    n_corrector_steps, eps, denoise, progress, ...) goes to `solvers.sample`; `generator` drives
    every random draw. With noise_std = 0 and a pseudo-inverse the observed component of the
    result is exactly y. Returns SampleResult(samples [B, *x_shape], nfe, info).
    """
    if not torch.is_tensor(y) or y.dim() < 1 or y.shape[0] < 1:
        raise ValueError(f"y must be a tensor [B, ...] of observations, got "
                         f"{shape_or_type(y)}")
    if not isinstance(operator, LinearOperator):
        raise TypeError(f"operator must be a LinearOperator (forward = A x, transpose = A^T y, "
                        f"optionally pinv); got {type(operator).__name__}: wrap functions in "
                        f"FunctionOperator(forward, transpose, pinv)")
    used = operator.observed(y).to(y.device)
    check_finite("the observations y", y, where=used)
    y = torch.where(used, y, torch.zeros((), dtype=y.dtype, device=y.device))
    noise_std = float(noise_std)
    if not noise_std >= 0 or not math.isfinite(noise_std):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    if method is None:
        method = "projection" if noise_std == 0 else "dps"
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if init is None:
        init = "marginal" if method == "projection" else "prior"
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    has_pinv = operator.has_pinv
    if method == "projection":
        if noise_std > 0:
            raise ValueError("method 'projection' is for noiseless observations (noise_std = 0); "
                             "for noisy ones use 'dps', 'pigdm' or 'tmpd'")
        if sampler != "pc":
            raise ValueError(f"method 'projection' replaces the observed part after each "
                             f"predictor/corrector update of the PC sampler, not of sampler "
                             f"{sampler!r}; use sampler='pc', or method 'pigdm'/'tmpd' (any "
                             f"sampler)")
        if not has_pinv:
            raise ValueError(f"method 'projection' needs the operator's pseudo-inverse; "
                             f"{type(operator).__name__} has none")
    if init != "prior" and not has_pinv:
        raise ValueError(f"init {init!r} needs the operator's pseudo-inverse; use init='prior'")
    if "project" in sample_kwargs:
        raise ValueError("linear_inverse sets the PC sampler's `project` hook itself")
    device = y.device if device is None else torch.device(device)
    dtype = y.dtype if torch.is_floating_point(y) else torch.float32
    y = y.to(device=device, dtype=dtype)
    n = y.shape[0]
    first = operator.select(slice(0, 1))
    x_shape = (n,) + tuple(first.transpose(y[:1]).shape[1:])
    image = first.forward(torch.zeros((1,) + x_shape[1:], device=device, dtype=dtype)).shape
    if tuple(image[1:]) != tuple(y.shape[1:]):
        raise ValueError(f"observations of shape {tuple(y.shape)} do not fit the operator: "
                         f"A maps samples of shape {list(x_shape[1:])} to {list(image[1:])}")
    probe_score(score_fn, sde, x_shape[1:], device, dtype)
    exact_final = noise_std == 0 and has_pinv

    def build(sl):
        op = operator.select(sl)
        ys = y[sl]
        x_init = initial_state(sde, ys, op, (ys.shape[0],) + x_shape[1:], init=init,
                               generator=generator, device=device, dtype=dtype)
        if method == "projection":
            score, options = score_fn, {"project": projection_hook(sde, ys, op, generator)}
        else:
            score = posterior_score(score_fn, sde, ys, op, noise_std=noise_std, method=method,
                                    scale=scale, data_variance=data_variance)
            options = {}
        finish = (lambda x: replace_observed(op, x, ys)) if exact_final else None
        return score, x_init, options, finish

    res = run_chunks(build, sde, n, batch_size=batch_size, generator=generator,
                     sampler=sampler, **sample_kwargs)
    res.info.update({"method": method, "noise_std": noise_std, "init": init,
                     "operator": type(operator).__name__, "scale": scale})
    return res
