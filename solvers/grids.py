"""Time grids for the fixed-step fast samplers: `steps + 1` times from T down to eps
(float64, [steps + 1], first exactly T, last exactly eps).

Grids are defined through the kernel coefficients alpha(t), sigma(t) (`common.coefficients`),
so each works for VE, VP, sub-VP and any other linear SDE:

    uniform   : uniform in t (the PC sampler's grid).
    karras    : Karras et al. (2022, Eq. 5) rho-spacing of the noise level s = sigma / alpha
                (EDM's sigma; sigma itself for VE), s_i = (s_max^(1/rho) + i/n (s_min^(1/rho) -
                s_max^(1/rho)))^rho, rho = 7: short steps at low noise.
    karras_t  : the same rho-spacing applied to t itself (default rho = 2: with rho = 7 in t the
                high-noise end gets too few steps).
    logsnr    : uniform in lambda = log(alpha / sigma) (DPM-Solver's 'logSNR' grid).

Register another with `@register_grid("name")`: grid(sde, steps, eps, **options) -> t.

A sampler's `grid=` is a grid's name (with `steps` and the grid's options) or the times
themselves: an explicit 1-D tensor (or list) of times, largest first, which then sets the number
of steps (`resolve_grid` checks it).
"""

import torch

from solvers.common import coefficients
from sde_base.registry import Registry

GRIDS = Registry("time grid")


register_grid, get_grid = GRIDS.register, GRIDS.get  # (name, fn=None, *, replace=False); (name)


def noise_level(sde, t):
    """s(t) = sigma(t) / alpha(t), increasing in t: the noise-to-signal ratio of x(t) / alpha."""
    alpha, sigma = coefficients(sde, t)
    return sigma / alpha


def log_snr(sde, t):
    """lambda(t) = log(alpha(t) / sigma(t)) = -log s(t), decreasing in t."""
    return -torch.log(noise_level(sde, t))


def invert_noise_level(sde, s, lo=0.0, hi=None, iters=100):
    """The times t in [lo, hi] with noise_level(sde, t) = s (bisection in float64; s(t) is
    increasing for every SDE here). Values outside the range clamp to its ends."""
    s = torch.as_tensor(s, dtype=torch.float64)
    hi = sde.T if hi is None else hi
    a = torch.full_like(s, float(lo))
    b = torch.full_like(s, float(hi))
    for _ in range(iters):
        mid = 0.5 * (a + b)
        below = noise_level(sde, mid) < s
        a = torch.where(below, mid, a)
        b = torch.where(below, b, mid)
    return 0.5 * (a + b)


def _pin(t, sde, eps):
    t[0], t[-1] = sde.T, eps
    return t


def _ends(sde, eps):
    t = torch.tensor([sde.T, eps], dtype=torch.float64)
    return noise_level(sde, t)


def _check(steps, eps, sde):
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps}")
    return int(steps)


@register_grid("uniform")
def uniform(sde, steps, eps):
    steps = _check(steps, eps, sde)
    return _pin(torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64), sde, eps)


def _rho_spacing(hi, lo, steps, rho):
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho!r}")
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    return (hi ** (1 / rho) + u * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


@register_grid("karras")
def karras(sde, steps, eps, rho=7.0):
    steps = _check(steps, eps, sde)
    s_max, s_min = _ends(sde, eps)
    s = _rho_spacing(s_max, s_min, steps, rho)
    return _pin(invert_noise_level(sde, s, lo=eps), sde, eps)


@register_grid("karras_t")
def karras_t(sde, steps, eps, rho=2.0):
    steps = _check(steps, eps, sde)
    return _pin(_rho_spacing(torch.tensor(float(sde.T), dtype=torch.float64),
                             torch.tensor(float(eps), dtype=torch.float64), steps, rho), sde, eps)


@register_grid("logsnr")
def logsnr(sde, steps, eps):
    steps = _check(steps, eps, sde)
    s_max, s_min = _ends(sde, eps)
    lam = torch.linspace(-torch.log(s_max).item(), -torch.log(s_min).item(), steps + 1,
                         dtype=torch.float64)
    return _pin(invert_noise_level(sde, torch.exp(-lam), lo=eps), sde, eps)


def time_grid(text):
    """A grid's name, or comma-separated times (largest first) as a float64 tensor: a grid as
    text (the command line's --grid)."""
    if text in GRIDS:
        return text
    try:
        times = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"not a grid name ({', '.join(GRIDS.names())}) nor comma-separated "
                         f"times: {text!r}") from None
    if len(times) < 2:
        raise ValueError(f"an explicit grid needs at least 2 times, got {text!r}")
    return torch.tensor(times, dtype=torch.float64)


def resolve_grid(sde, grid, steps, eps, **options):
    """The sampler's times as a float64 CPU tensor [n + 1], largest first.

    grid: a name in GRIDS (called with `steps`, eps and `options`) or an explicit 1-D sequence
    of times: finite, strictly decreasing, within [eps, T], at least two; it sets the number of
    steps (a `steps` that disagrees, or grid options, are an error). The sampler starts from x at
    its first time and ends at its last."""
    if isinstance(grid, str) or callable(grid):
        fn = get_grid(grid)
        try:
            return fn(sde, steps, eps, **options)
        except TypeError as e:
            raise ValueError(f"time grid {grid!r} does not take options {sorted(options)}: "
                             f"{e}") from None
    try:
        t = (grid.detach() if torch.is_tensor(grid) else
             torch.as_tensor(grid, dtype=torch.float64)).to(device="cpu", dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"grid must be a grid's name ({', '.join(GRIDS.names())}) or a 1-D "
                         f"tensor of times, got {type(grid).__name__}") from None
    if options:
        raise ValueError(f"options {sorted(options)} apply to named grids only, not to an "
                         f"explicit tensor of times")
    if t.dim() != 1 or t.numel() < 2:
        raise ValueError(f"an explicit grid must be a 1-D tensor of at least 2 times, got shape "
                         f"{list(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"an explicit grid must be finite, got {t.tolist()}")
    diffs = t[1:] - t[:-1]
    if (diffs >= 0).any():
        i = int(torch.nonzero(diffs >= 0)[0])
        raise ValueError(f"an explicit grid must be strictly decreasing (largest time first), "
                         f"but t[{i}] = {t[i].item():g} <= t[{i + 1}] = {t[i + 1].item():g}")
    tol = 1e-9 * sde.T
    if t[0] > sde.T + tol or t[-1] < eps - tol:
        raise ValueError(f"an explicit grid must lie within [eps, T] = [{eps:g}, {sde.T:g}], got "
                         f"times from {t[0].item():g} down to {t[-1].item():g} (pass a smaller "
                         f"eps to end lower)")
    if steps is not None and steps != t.numel() - 1:
        raise ValueError(f"steps={steps} does not match the explicit grid's {t.numel() - 1} "
                         f"steps ({t.numel()} times); give one or the other")
    return t.clamp(min=eps, max=sde.T)
