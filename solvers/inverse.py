"""Linear inverse problems y = A x (+ sigma_y n) solved with a score model as the prior.

Operators (`LinearOperator`: `forward` = A, `transpose` = A^T, `pinv` = A^+, `gram_solve`):

    Mask(mask)              inpainting: A x = mask * x (y keeps the image shape, zeros where
                            unknown); A = A^T = A^+ is the orthogonal projector on the known pixels.
    Colorization()          y = the grey image (R + G + B) / 3 of an RGB x (see COLOR_BASIS).
    SuperResolution(k)      y = k x k average pooling; A^+ = nearest upsampling.
    Blur(kernel)            y = circular convolution with `kernel`; A, A^T, A^+ in Fourier space.
    MatrixOperator(A)       a dense [m, D] matrix on flattened samples.
    FunctionOperator(forward, transpose, pinv=None): any user-given linear map.

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
noise level of T; 'original' keeps the known part clean at T as the original code did
(PITFALLS); 'prior' is a plain prior draw (the guidance methods' start).
"""

import math

import torch
import torch.nn.functional as F

from sde_lib import expand_to
from solvers.common import coefficients, randn
from solvers.result import SampleResult

METHODS = ("projection", "dps", "pigdm", "tmpd")
INITS = ("marginal", "original", "prior")


# ----------------------------------------------------------------------------- operators

class LinearOperator:
    """A linear map A from samples x [B, *x_shape] to observations y [B, *y_shape].

    Subclasses give `forward` (A x) and `transpose` (A^T y); `pinv` (A^+ y) is needed by the
    projection method and the exact final projection; `gram_solve` ((c A A^T + s I)^{-1} v) by
    'dps'/'pigdm' (default: conjugate gradients); `select(sl)` restricts per-sample parameters
    to a batch slice."""

    def forward(self, x):
        raise NotImplementedError

    def transpose(self, y):
        raise NotImplementedError

    def pinv(self, y):
        raise NotImplementedError(f"{type(self).__name__} has no pseudo-inverse; give one "
                                  f"(FunctionOperator(..., pinv=...)) or use a guidance method")

    @property
    def has_pinv(self):
        """Whether this operator defines `pinv` (a subclass overriding it)."""
        return type(self).pinv is not LinearOperator.pinv

    def project(self, x):
        """A^+ A x: the observed component of x."""
        return self.pinv(self.forward(x))

    def select(self, sl):
        return self

    def gram_solve(self, v, c, s, iters=100, tol=1e-10):
        """(c A A^T + s I)^{-1} v with c, s >= 0 ([B] or scalars), by conjugate gradients
        (on the range of A where s = 0)."""
        c = _per_sample(c, v)
        s = _per_sample(s, v)

        def op(u):
            return c * self.forward(self.transpose(u)) + s * u

        x = torch.zeros_like(v)
        r = v.clone()
        p = r.clone()
        rr = _bdot(r, r)
        for _ in range(iters):
            if (rr.sqrt() <= tol * (1 + _bdot(v, v).sqrt())).all():
                break
            Ap = op(p)
            pAp = _bdot(p, Ap)
            a = torch.where(pAp > 0, rr / pAp.clamp(min=1e-300), torch.zeros_like(rr))
            x = x + expand_to(a, p) * p
            r = r - expand_to(a, p) * Ap
            rr_new = _bdot(r, r)
            p = r + expand_to(torch.where(rr > 0, rr_new / rr.clamp(min=1e-300),
                                          torch.zeros_like(rr)), p) * p
            rr = rr_new
        return x


def _bdot(a, b):
    return (a * b).flatten(1).sum(1)


def _per_sample(c, like):
    """A scalar or [B] coefficient shaped to broadcast against `like` [B, ...]."""
    c = torch.as_tensor(c, dtype=like.dtype, device=like.device)
    return expand_to(c, like) if c.dim() == 1 else c


def _safe_div(v, d):
    """v / d, with 0 where d == 0 (directions outside the range of A)."""
    return torch.where(d > 0, v / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(v))


class Mask(LinearOperator):
    """Inpainting: A x = mask * x with a 0/1 `mask` broadcastable to x (1 = known). A is the
    orthogonal projector on the known pixels, so A = A^T = A^+ and A A^T = A."""

    def __init__(self, mask):
        self.mask = check_mask(mask)

    def forward(self, x):
        return x * self.mask.to(x)

    transpose = pinv = forward

    def select(self, sl):
        return Mask(self.mask[sl]) if self.mask.dim() > 0 and self.mask.shape[0] > 1 else self

    def gram_solve(self, v, c, s, **_):
        return _safe_div(v, _per_sample(c, v) * self.mask.to(v) + _per_sample(s, v))


# The colour basis: an orthonormal basis of RGB space whose first vector is the grey direction
# (1, 1, 1)/sqrt(3); the other two are colour differences orthogonal to it and to each other,
# (-2, 1, 1)/sqrt(6) (red against the others) and (0, 1, -1)/sqrt(2) (green against blue): the
# Gram-Schmidt (Helmert) completion of (1, 1, 1). Columns are the basis vectors; the original's
# colorizer uses the same matrix `M` (to float32 rounding), decoupling x into
# coordinates c = M^T x: c_1 = (R + G + B)/sqrt(3) = sqrt(3) * grey, c_2, c_3 free. Observing the
# grey image fixes exactly c_1, so A^+ A x = (grey, grey, grey) and the projection method replaces
# the grey level of x while leaving the two colour-difference coordinates to the prior.
COLOR_BASIS = torch.tensor([[1 / math.sqrt(3), -2 / math.sqrt(6), 0.0],
                            [1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)],
                            [1 / math.sqrt(3), 1 / math.sqrt(6), -1 / math.sqrt(2)]],
                           dtype=torch.float64)


def decouple(x):
    """Colour coordinates c = M^T x of RGB images [B, 3, H, W] (M = COLOR_BASIS)."""
    return torch.einsum("bihw,ij->bjhw", x, COLOR_BASIS.to(x))


def couple(c):
    """RGB images x = M c from colour coordinates (the inverse of `decouple`, M orthogonal)."""
    return torch.einsum("bjhw,ij->bihw", c, COLOR_BASIS.to(c))


class Colorization(LinearOperator):
    """y = grey image (R + G + B) / 3, [B, 1, H, W], of RGB x [B, 3, H, W]. In the colour basis
    (COLOR_BASIS) y = c_1 / sqrt(3): A A^T = I / 3, A^T y = y/3 on every channel, A^+ y = y on
    every channel."""

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"colorization acts on RGB images [B, 3, H, W], got {tuple(x.shape)}")
        return x.mean(1, keepdim=True)

    def transpose(self, y):
        return y.expand(-1, 3, -1, -1) / 3.0

    def pinv(self, y):
        return y.expand(-1, 3, -1, -1).clone()

    def gram_solve(self, v, c, s, **_):
        return _safe_div(v, _per_sample(c, v) / 3.0 + _per_sample(s, v))


class SuperResolution(LinearOperator):
    """y = k x k average pooling of x [B, C, kH, kW]; A A^T = I / k^2, A^+ y = nearest-neighbour
    upsampling of y (block-constant images), A^T y = A^+ y / k^2."""

    def __init__(self, factor):
        if int(factor) != factor or factor < 1:
            raise ValueError(f"super-resolution factor must be a positive integer, got {factor!r}")
        self.factor = int(factor)

    def forward(self, x):
        k = self.factor
        if x.dim() != 4 or x.shape[-1] % k or x.shape[-2] % k:
            raise ValueError(f"super-resolution by {k} needs images [B, C, H, W] with H and W "
                             f"divisible by {k}, got {tuple(x.shape)}")
        return F.avg_pool2d(x, k)

    def pinv(self, y):
        k = self.factor
        return y.repeat_interleave(k, -2).repeat_interleave(k, -1)

    def transpose(self, y):
        return self.pinv(y) / self.factor ** 2

    def gram_solve(self, v, c, s, **_):
        return _safe_div(v, _per_sample(c, v) / self.factor ** 2 + _per_sample(s, v))


class Blur(LinearOperator):
    """y = kernel * x, a circular (periodic) convolution of each channel of x [B, C, H, W] with
    `kernel` [kh, kw] centred at (kh // 2, kw // 2). Periodic boundaries make A diagonal in the
    2-D Fourier basis with frequency response h: A^T has conj(h), A^+ has conj(h) / |h|^2 where
    |h| > rcond * max |h| (else 0), and A A^T has |h|^2."""

    def __init__(self, kernel, rcond=1e-3):
        kernel = torch.as_tensor(kernel, dtype=torch.float64)
        if kernel.dim() != 2:
            raise ValueError(f"blur kernel must be 2-D [kh, kw], got shape {tuple(kernel.shape)}")
        self.kernel = kernel
        self.rcond = float(rcond)

    def _response(self, x):
        H, W = x.shape[-2:]
        kh, kw = self.kernel.shape
        if kh > H or kw > W:
            raise ValueError(f"blur kernel {kh}x{kw} is larger than the images {H}x{W}")
        full = torch.zeros(H, W, dtype=torch.float64)
        full[:kh, :kw] = self.kernel
        full = torch.roll(full, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))
        return torch.fft.fft2(full).to(x.device)

    def _apply(self, x, gain):
        out = torch.fft.ifft2(torch.fft.fft2(x.to(torch.float64)) * gain).real
        return out.to(x.dtype)

    def forward(self, x):
        return self._apply(x, self._response(x))

    def transpose(self, y):
        return self._apply(y, self._response(y).conj())

    def pinv(self, y):
        h = self._response(y)
        a2 = h.abs() ** 2
        keep = h.abs() > self.rcond * h.abs().max()
        return self._apply(y, torch.where(keep, h.conj() / torch.where(keep, a2, 1.0), 0.0))

    def gram_solve(self, v, c, s, **_):
        a2 = self._response(v).abs() ** 2
        c = _per_sample(c, v).to(torch.float64)
        s = _per_sample(s, v).to(torch.float64)
        d = c * a2 + s
        out = torch.fft.ifft2(_safe_div_complex(torch.fft.fft2(v.to(torch.float64)), d)).real
        return out.to(v.dtype)


def _safe_div_complex(v, d):
    ok = d > 0
    return torch.where(ok, v / torch.where(ok, d, torch.ones_like(d)), torch.zeros_like(v))


class MatrixOperator(LinearOperator):
    """A dense matrix A [m, D] acting on flattened samples of `event_shape` (D elements):
    y = x.flatten(1) @ A^T, [B, m]. A^+ is computed once with torch.linalg.pinv."""

    def __init__(self, matrix, event_shape, rcond=1e-10):
        matrix = torch.as_tensor(matrix, dtype=torch.float64)
        self.event_shape = tuple(int(s) for s in event_shape)
        if matrix.dim() != 2 or matrix.shape[1] != math.prod(self.event_shape):
            raise ValueError(f"matrix must have shape [m, {math.prod(self.event_shape)}] for "
                             f"event_shape {self.event_shape}, got {tuple(matrix.shape)}")
        self.matrix = matrix
        self.matrix_pinv = torch.linalg.pinv(matrix, rtol=rcond)
        self.gram = matrix @ matrix.T

    def forward(self, x):
        return x.flatten(1) @ self.matrix.T.to(x)

    def transpose(self, y):
        return (y @ self.matrix.to(y)).reshape(y.shape[0], *self.event_shape)

    def pinv(self, y):
        return (y @ self.matrix_pinv.T.to(y)).reshape(y.shape[0], *self.event_shape)

    def gram_solve(self, v, c, s, **_):
        c = torch.as_tensor(c, dtype=torch.float64, device=v.device).reshape(-1, 1, 1)
        s = torch.as_tensor(s, dtype=torch.float64, device=v.device).reshape(-1, 1, 1)
        gram = self.gram.to(v.device)
        M = c * gram + s * torch.eye(gram.shape[0], dtype=torch.float64, device=v.device)
        M = M.expand(v.shape[0], -1, -1)
        sol = torch.linalg.lstsq(M, v.to(torch.float64).unsqueeze(-1)).solution.squeeze(-1)
        return sol.to(v.dtype)


class FunctionOperator(LinearOperator):
    """A user-given linear map from its functions: forward(x) = A x, transpose(y) = A^T y and,
    optionally, pinv(y) = A^+ y."""

    def __init__(self, forward, transpose, pinv=None):
        if not (callable(forward) and callable(transpose)):
            raise TypeError("forward and transpose must be callables")
        if pinv is not None and not callable(pinv):
            raise TypeError("pinv must be a callable or None")
        self._forward, self._transpose, self._pinv = forward, transpose, pinv

    def forward(self, x):
        return self._forward(x)

    def transpose(self, y):
        return self._transpose(y)

    @property
    def has_pinv(self):
        return self._pinv is not None

    def pinv(self, y):
        if self._pinv is None:
            return LinearOperator.pinv(self, y)
        return self._pinv(y)


def check_mask(mask, shape=None):
    """`mask` as a float tensor of 0s and 1s; with `shape`, it must broadcast to it."""
    if not torch.is_tensor(mask):
        mask = torch.as_tensor(mask)
    if mask.dtype == torch.bool:
        mask = mask.float()
    if not torch.is_floating_point(mask):
        mask = mask.float()
    bad = (mask != 0) & (mask != 1)
    if bad.any():
        vals = torch.unique(mask[bad])[:5].tolist()
        raise ValueError(f"mask must hold only 0 (unknown) and 1 (known), found "
                         f"{int(bad.sum())} other values, e.g. {vals}")
    if shape is not None:
        shape = tuple(shape)
        try:
            ok = torch.broadcast_shapes(mask.shape, shape) == torch.Size(shape)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the data "
                             f"shape {shape}")
    return mask


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
    basis = eye[:, None, :].expand(m, B, m).reshape(m * B, *y.shape[1:])
    V = operator.transpose(basis).reshape(m, B, *xg.shape[1:])
    norms = V.flatten(2).pow(2).sum(2)                       # [m, B] = diag(A A^T)
    active = (norms > 0).any(1).nonzero().flatten()
    V, norms = V[active], norms[active]
    K = active.numel()
    W, = torch.autograd.grad(x0, xg, grad_outputs=V.to(xg.dtype), is_grads_batched=True)
    AW = operator.forward(W.reshape(K * B, *xg.shape[1:]).detach()).reshape(K, B, m)[..., active]
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


def _probe_score(score_fn, sde, x):
    """Evaluate score_fn once on x[:1] at T and check the output shape (a clear error early)."""
    x1 = x[:1]
    try:
        out = score_fn(x1, torch.full((1,), float(sde.T), device=x.device, dtype=x.dtype))
    except Exception as e:
        raise ValueError(f"the score function fails on samples of shape {list(x.shape[1:])}: "
                         f"{type(e).__name__}: {e}") from e
    if not torch.is_tensor(out) or out.shape != x1.shape:
        got = list(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(f"the score function returns {got} for samples of shape "
                         f"{list(x1.shape)}")


def chunks(n, batch_size):
    """Batch slices of at most `batch_size` (all of n when None)."""
    if batch_size is None:
        return [slice(0, n)]
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    b = int(batch_size)
    return [slice(i, min(i + b, n)) for i in range(0, n, b)]


def run_chunks(build, sde, n, *, batch_size=None, generator=None, **sample_kwargs):
    """Run `solvers.sample` on each batch chunk: build(sl) -> (score_fn, x_init, options,
    finish) gives the chunk's score, start and extra sampler options; finish(x) (or None)
    post-processes its samples. Returns SampleResult (nfe: the largest over chunks)."""
    from solvers.sampling import sample
    outs, nfes, info = [], [], {}
    for sl in chunks(n, batch_size):
        score, x_init, options, finish = build(sl)
        res = sample(score, sde, x_init=x_init, generator=generator, check_shape=False,
                     **options, **sample_kwargs)
        outs.append(res.samples if finish is None else finish(res.samples))
        nfes.append(res.nfe)
        info = {k: v for k, v in res.info.items() if k != "nfe_per_batch"}
    info["nfe_per_batch"] = nfes
    info["batches"] = len(nfes)
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
                         f"{type(y).__name__ if not torch.is_tensor(y) else tuple(y.shape)}")
    if not isinstance(operator, LinearOperator):
        raise TypeError(f"operator must be a LinearOperator (forward = A x, transpose = A^T y, "
                        f"optionally pinv); got {type(operator).__name__}: wrap functions in "
                        f"FunctionOperator(forward, transpose, pinv)")
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
    _probe_score(score_fn, sde, torch.zeros((1,) + x_shape[1:], device=device, dtype=dtype))
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
