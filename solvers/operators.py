"""Linear operators A of inverse problems y = A x, acting on batches x [B, *x_shape]:
`forward` = A x, `transpose` = A^T y, `pinv` = A^+ y, `gram_solve` = (c A A^T + s I)^{-1} v.

    Mask(mask)              inpainting: A x = mask * x (y keeps the image shape, zeros where
                            unknown); A = A^T = A^+ is the orthogonal projector on the known pixels.
    Colorization()          y = the grey image (R + G + B) / 3 of an RGB x (see COLOR_BASIS).
    SuperResolution(k)      y = k x k average pooling; A^+ = nearest upsampling.
    Blur(kernel)            y = circular convolution with `kernel`; A, A^T, A^+ in Fourier space.
    MatrixOperator(A)       a dense [m, D] matrix on flattened samples.
    FunctionOperator(forward, transpose, pinv=None): any user-given linear map.

The posterior samplers that use them are in `solvers.inverse`.
"""

import math

import torch
import torch.nn.functional as F

from sde_lib import expand_to


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

    def observed(self, y):
        """Boolean, broadcastable to y: the entries of y that A x can reach (the rest are
        ignored, so they may hold anything, NaN included). Default: all of them."""
        return torch.ones((), dtype=torch.bool, device=y.device)

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
    orthogonal projector on the known pixels, so A = A^T = A^+ and A A^T = A. The product is
    taken as a selection (0 where unknown), so a NaN or inf in an unknown pixel of x does not
    leak into A x (NaN * 0 would be NaN)."""

    def __init__(self, mask):
        self.mask = check_mask(mask)

    def forward(self, x):
        known = self.mask.to(device=x.device) != 0
        return torch.where(known, x, torch.zeros((), dtype=x.dtype, device=x.device))

    transpose = pinv = forward

    def observed(self, y):
        return self.mask.to(device=y.device) != 0

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
    if not torch.isfinite(mask).all():
        raise ValueError(f"mask must hold only 0 (unknown) and 1 (known), found "
                         f"{int((~torch.isfinite(mask)).sum())} NaN/inf values")
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
