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

eps: p is the density of the flow at t = eps (see `likelihood.ode`), so the bits/dim are those of
x(eps), the dequantized image plus the kernel's noise at eps; this is the original's choice, kept so
numbers compare with the paper's. The eps used is in the result.
"""

import dataclasses
import math
import warnings

import torch

from likelihood.ode import LikelihoodResult, log_likelihood


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
    """y = lo + (hi - lo) (k + u) / L, u ~ U[0, 1) drawn on the generator's device (then moved),
    k the images' pixel levels; a ValueError if images lie off the L-level grid (by more than 1e-3
    of a level). Same dtype and device as images."""
    lo, hi = _check_range(data_range)
    L = pixel_levels(bits, levels)
    k, off = _levels_of(images, (lo, hi), L)
    if off > 1e-3:
        raise ValueError(
            f"images are not on the {L}-level grid of data_range {(lo, hi)} (a value is {off:.3g} "
            f"of a level away from the nearest level): pass levels= for data with another number "
            f"of values, or dequantize=False if they are already dequantized")
    device = generator.device if generator is not None else images.device
    u = torch.rand(images.shape, generator=generator, device=device, dtype=torch.float64)
    y = lo + (hi - lo) * (k.round() + u.to(images.device)) / L
    return y.to(images.dtype)


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
    """bpd: [B]; bpd_stderr: [B] the probes' standard error in bits/dim; offset: the
    discretisation offset used; x: the (dequantized) input; likelihood: the LikelihoodResult."""
    bpd: torch.Tensor
    bpd_stderr: torch.Tensor
    offset: float
    x: torch.Tensor
    likelihood: LikelihoodResult

    @property
    def nfe(self):
        return self.likelihood.nfe

    @property
    def eps(self):
        return self.likelihood.eps


def bits_per_dim_details(score_fn, sde, images, *, data_range, bits=8, levels=None,
                         dequantize=True, generator=None, **kwargs):
    """Bits/dim of L-level images [B, C, H, W] in data_range, with the details.

    dequantize=True: images hold pixel levels (e.g. uint8 / 255, then scaled) and are dequantized
    uniformly here with `generator` (which then also draws the probes). dequantize=False: images
    are already dequantized; a warning is given if they all lie on the pixel grid, whose
    bits/dim would come out too low or negative. Other keywords go to `log_likelihood`."""
    check_images(images, data_range)
    L = pixel_levels(bits, levels)
    if dequantize:
        x = uniform_dequantization(images, data_range, levels=L, generator=generator)
    else:
        x = images
        if _levels_of(images, data_range, L)[1] <= 1e-3:
            warnings.warn("images all lie on the pixel grid but dequantize=False: the density of "
                          "non-dequantized data gives too-low, even negative, bits/dim",
                          stacklevel=2)
    res = log_likelihood(score_fn, sde, x, generator=generator, **kwargs)
    offset = discretization_offset(data_range, levels=L)
    D = images[0].numel()
    bpd = bpd_from_logp(res.logp, D, data_range, levels=L)
    return BitsPerDimResult(bpd=bpd, bpd_stderr=res.logp_stderr / (D * math.log(2)),
                            offset=offset, x=x, likelihood=res)


def bits_per_dim(score_fn, sde, images, *, data_range, bits=8, levels=None, dequantize=True,
                 generator=None, **kwargs):
    """Bits/dim [B] of L-level images in data_range; see `bits_per_dim_details`."""
    return bits_per_dim_details(score_fn, sde, images, data_range=data_range, bits=bits,
                                levels=levels, dequantize=dequantize, generator=generator,
                                **kwargs).bpd
