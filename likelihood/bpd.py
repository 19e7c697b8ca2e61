"""Bits per dimension of discrete (8-bit) images from the continuous density of the flow.

Discretisation offset. A pixel with L levels (L = 2^bits, 256 for 8-bit data) takes the values
x_k = lo + (hi - lo) k / (L - 1), k = 0..L-1, in the data range (lo, hi). Uniform dequantisation
draws y = lo + (hi - lo) (k + u) / L with u ~ U[0, 1): the bins
[lo + (hi - lo) k / L, lo + (hi - lo) (k + 1) / L) have width Delta = (hi - lo) / L and tile
[lo, hi). For the discrete model P(k) = integral of p over the bin of k (D pixels), Jensen's
inequality gives log P(k) >= D log Delta + E_u[log p(y)], so

    bits/dim = -log2 P(k) / D <= E_u[-log p(y)] / (D ln 2) + log2(L / (hi - lo)).

The offset log2(L / (hi - lo)) is 8 for 8-bit data in [0, 1] and 7 in [-1, 1]: the original's
hard-coded `7 - inverse_scaler(-1)` for those two ranges, which it gets right only for them. y is
the original's (255 x + u) / 256 mapped linearly into the data range.

Any dequantizer. For any density q supported in the bin of k, Jensen's inequality gives
log P(k) >= E_q[log p(y)] + H(q), so bits/dim <= E_q[-log p(y)] / (D ln 2) - H(q) / (D ln 2): the
offset is minus q's entropy per dimension in bits. Uniform on a bin of width Delta: H = D log Delta,
the offset above. Truncated normal (i-DODE, Zheng et al. 2023, training-free): y = x_k + s e with
e ~ N(0, 1) truncated to |e| <= a, a = Delta' / (2 s), on the bin of width Delta' = (hi - lo) / (L - 1)
centred on the level x_k; per dimension H = log(sqrt(2 pi e) s C) - a phi(a) / C, C = 2 Phi(a) - 1,
so the offset is -H / ln 2 (it tends to log2((L - 1) / (hi - lo)) as s grows: uniform on these
bins). Its default s is sigma(eps) / alpha(eps) of the SDE at the likelihood's eps: the
dequantized image then looks like the forward process's x(eps) given the clean image, which is
what the model was trained on (i-DODE's point), up to the truncation.

eps: p is the density of the flow at t = eps (see `likelihood.ode`), so the bits/dim are those of
x(eps), the dequantized image plus the kernel's noise at eps; this is the original's choice, kept so
numbers compare with the paper's. The eps used is in the result.
"""

import dataclasses
import math
import warnings

import torch

from likelihood.bound import bound
from likelihood.draws import draw
from likelihood.importance import noise_to_signal
from likelihood.ode import log_likelihood

METHODS = ("ode", "bound")


def pixel_levels(bits=8, levels=None):
    """The number of pixel values L: `levels` if given, else 2^bits."""
    L = 2 ** bits if levels is None else levels
    if int(L) != L or L < 2:
        raise ValueError(f"the number of pixel levels must be an integer >= 2, got {L!r} "
                         f"(bits={bits}, levels={levels})")
    return int(L)


def _check_range(data_range):
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a pair (lo, hi), got {data_range!r}") from None
    if not lo < hi:
        raise ValueError(f"data_range must have lo < hi, got {data_range!r}")
    return lo, hi


def discretization_offset(data_range, bits=8, levels=None):
    """log2(L / (hi - lo)): bits/dim added to -log p / (D ln 2) for L-level data in (lo, hi)."""
    lo, hi = _check_range(data_range)
    return math.log2(pixel_levels(bits, levels)) - math.log2(hi - lo)


def bpd_from_logp(logp, dim, data_range, bits=8, levels=None):
    """-logp / (dim ln 2) + the discretisation offset: bits/dim from a log-density in nats."""
    return -logp / (dim * math.log(2)) + discretization_offset(data_range, bits, levels)


def _levels_of(images, data_range, levels):
    """k = (L - 1)(x - lo) / (hi - lo) (float64, unrounded), and its largest distance to an
    integer."""
    lo, hi = _check_range(data_range)
    k = (images.double() - lo) * ((levels - 1) / (hi - lo))
    return k, (k - k.round()).abs().max().item()


def uniform_dequantization(images, data_range, bits=8, levels=None, generator=None):
    """y = lo + (hi - lo) (k + u) / L, u ~ U[0, 1) drawn on the generator's device (then moved;
    a `RowGenerators` draws row b's noise from generator b, `likelihood.draws`),
    k the images' pixel levels; a ValueError if images lie off the L-level grid (by more than 1e-3
    of a level). Same dtype and device as images."""
    lo, hi = _check_range(data_range)
    L = pixel_levels(bits, levels)
    k = _check_levels(images, (lo, hi), L, "dequantized")
    u = draw(_uniform64, images.shape, generator, images.device)
    y = lo + (hi - lo) * (k + u) / L
    return y.to(images.dtype)


def _uniform64(shape, generator, device):
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def _check_levels(images, data_range, L, what):
    k, off = _levels_of(images, data_range, L)
    if off > 1e-3:
        raise ValueError(
            f"images are not on the {L}-level grid of data_range {tuple(data_range)} (a value is "
            f"{off:.3g} of a level away from the nearest level): pass levels= for data with "
            f"another number of values, or dequantize=False if they are already {what}")
    return k.round()


def truncated_normal_entropy(std, half_width):
    """Entropy (nats) of N(0, std^2) truncated to [-half_width, half_width]:
    log(sqrt(2 pi e) std C) - a phi(a) / C, a = half_width / std, C = 2 Phi(a) - 1."""
    if not (std > 0 and half_width > 0):
        raise ValueError(f"the truncated normal needs std > 0 and half_width > 0, got std={std}, "
                         f"half_width={half_width}")
    a = half_width / std
    C = math.erf(a / math.sqrt(2))
    phi = math.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    return math.log(math.sqrt(2 * math.pi * math.e) * std * C) - a * phi / C


def truncated_normal_offset(data_range, std, bits=8, levels=None):
    """-H / ln 2: bits/dim added to -log p / (D ln 2) for truncated-normal dequantization with
    std `std` (data units) on bins of width (hi - lo) / (L - 1) centred on the levels."""
    lo, hi = _check_range(data_range)
    L = pixel_levels(bits, levels)
    return -truncated_normal_entropy(float(std), 0.5 * (hi - lo) / (L - 1)) / math.log(2)


def truncated_normal_dequantization(images, data_range, std, bits=8, levels=None,
                                    generator=None):
    """y = x_k + std e, e ~ N(0, 1) truncated to the bin |y - x_k| <= (hi - lo) / (2 (L - 1)),
    by the inverse CDF of one uniform per value (drawn on the generator's device, float64).
    A ValueError if images lie off the L-level grid. Same dtype and device as images."""
    lo, hi = _check_range(data_range)
    L = pixel_levels(bits, levels)
    k = _check_levels(images, (lo, hi), L, "dequantized")
    std = float(std)
    a = 0.5 * (hi - lo) / (L - 1) / std
    if not a > 0:
        raise ValueError(f"the truncated-normal std must be positive, got {std}")
    e = truncated_normal(images.shape, a, generator=generator, device=images.device)
    y = lo + (hi - lo) * k / (L - 1) + std * e
    return y.to(images.dtype)


def truncated_normal(shape, a, generator=None, device=None):
    """Draws of N(0, 1) truncated to [-a, a] (float64, on `device`), by the inverse CDF of one
    uniform per value drawn on the generator's device."""
    dev = generator.device if generator is not None else device
    u = draw(_uniform64, shape, generator, dev)
    lo_cdf = torch.special.ndtr(torch.tensor(-float(a), dtype=torch.float64, device=dev))
    e = torch.special.ndtri(lo_cdf + u * (1 - 2 * lo_cdf)).clamp(-a, a)
    return e.to(device if device is not None else dev)


DEQUANTIZERS = ("uniform", "truncated_normal")


def dequantize_images(images, data_range, method="uniform", *, bits=8, levels=None, std=None,
               generator=None):
    """(y, offset): dequantized images and the bits/dim offset of `method` (module docstring):
    'uniform' (the original's bins, offset log2(L / (hi - lo))) or 'truncated_normal' (std in
    data units, required)."""
    if method == "uniform":
        y = uniform_dequantization(images, data_range, bits, levels, generator)
        return y, discretization_offset(data_range, bits, levels)
    if method == "truncated_normal":
        if std is None:
            raise ValueError("truncated-normal dequantization needs its std (data units)")
        y = truncated_normal_dequantization(images, data_range, std, bits, levels, generator)
        return y, truncated_normal_offset(data_range, std, bits, levels)
    raise ValueError(f"unknown dequantization {method!r}; known: {', '.join(DEQUANTIZERS)}")


def check_images(images, data_range):
    """A ValueError unless images is a finite float [B, C, H, W] tensor within data_range."""
    lo, hi = _check_range(data_range)
    if not torch.is_tensor(images) or not torch.is_floating_point(images):
        got = images.dtype if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a float tensor [B, C, H, W], got {got}")
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must have shape [B, C, H, W], got {tuple(images.shape)}")
    nan = torch.isnan(images)
    if nan.any():
        raise ValueError(f"images contain {int(nan.sum())} NaN values")
    below, above = images < lo, images > hi
    if below.any() or above.any():
        raise ValueError(f"images must lie in data_range [{lo}, {hi}]; got values in "
                         f"[{images.min().item():.6g}, {images.max().item():.6g}] "
                         f"({int(below.sum() + above.sum())} outside). Is data_range right for "
                         f"the data scaler (config.data.centered)?")


@dataclasses.dataclass
class BitsPerDimResult:
    """bpd: [B]; bpd_stderr: [B] the standard error in bits/dim (of the probes for 'ode', of
    the draws for 'bound'); offset: the dequantizer's offset used; x: the (dequantized) input;
    likelihood: the LikelihoodResult ('ode') or BoundResult ('bound'); method, dequantize: the
    settings used."""
    bpd: torch.Tensor
    bpd_stderr: torch.Tensor
    offset: float
    x: torch.Tensor
    likelihood: object
    method: str = "ode"
    dequantize: str = "uniform"

    @property
    def nfe(self):
        return self.likelihood.nfe

    @property
    def eps(self):
        return self.likelihood.eps


def bits_per_dim_details(score_fn, sde, images, *, data_range, bits=8, levels=None,
                         dequantize=True, dequantization_std=None, method="ode", generator=None,
                         **kwargs):
    """Bits/dim of L-level images [B, C, H, W] in data_range, with the details.

    method: 'ode' (`log_likelihood`: an estimate of log p_eps through the probability-flow ODE)
    or 'bound' (`likelihood.bound`: an upper bound on the NLL of the reverse SDE's model, no ODE).
    dequantize: True or 'uniform' (images hold pixel levels, dequantized here with `generator`,
    which then also draws the probes or the bound's draws), 'truncated_normal' (std
    `dequantization_std` in data units, default sigma(eps) / alpha(eps) of the SDE), or False
    (images are already dequantized; the uniform offset is used, and a warning is given if they
    all lie on the pixel grid, whose bits/dim would come out too low or negative). Other keywords
    go to `log_likelihood` or `bound`."""
    check_images(images, data_range)
    if method not in METHODS:
        raise ValueError(f"unknown likelihood method {method!r}; known: {', '.join(METHODS)}")
    L = pixel_levels(bits, levels)
    kind = "uniform" if dequantize is True else dequantize
    if kind:
        if kind == "truncated_normal" and dequantization_std is None:
            eps = kwargs.get("eps")
            dequantization_std = noise_to_signal(sde, sde.likelihood_eps if eps is None else eps)
        x, offset = dequantize_images(images, data_range, kind, levels=L,
                                      std=dequantization_std, generator=generator)
    else:
        x, offset, kind = images, discretization_offset(data_range, levels=L), "none"
        if _levels_of(images, data_range, L)[1] <= 1e-3:
            warnings.warn("images all lie on the pixel grid but dequantize=False: the density of "
                          "non-dequantized data gives too-low, even negative, bits/dim",
                          stacklevel=2)
    D = images[0].numel()
    if method == "ode":
        res = log_likelihood(score_fn, sde, x, generator=generator, **kwargs)
        nll, nll_stderr = -res.logp, res.logp_stderr
    else:
        res = bound(score_fn, sde, x, generator=generator, **kwargs)
        nll, nll_stderr = res.nll.to(x.dtype), res.nll_stderr.to(x.dtype)
    bpd = nll / (D * math.log(2)) + offset
    return BitsPerDimResult(bpd=bpd, bpd_stderr=nll_stderr / (D * math.log(2)), offset=offset,
                            x=x, likelihood=res, method=method, dequantize=kind)


def bits_per_dim(score_fn, sde, images, *, data_range, bits=8, levels=None, dequantize=True,
                 generator=None, **kwargs):
    """Bits/dim [B] of L-level images in data_range; see `bits_per_dim_details`."""
    return bits_per_dim_details(score_fn, sde, images, data_range=data_range, bits=bits,
                                levels=levels, dequantize=dequantize, generator=generator,
                                **kwargs).bpd
