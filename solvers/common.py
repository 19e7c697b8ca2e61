"""Small helpers the samplers share: seeded noise, time vectors, the (alpha, sigma) form of an
SDE, the Tweedie denoiser, evaluation counting and progress bars."""

import copy
import math

import torch

from sde_lib import VESDE, expand_to
from sde_lib.sdes import BetaSchedule


def describe(v):
    """A tensor's shape (as a tuple), or the type name of anything else: for error messages."""
    return tuple(v.shape) if torch.is_tensor(v) else type(v).__name__


def randn(shape, generator=None, device=None, dtype=torch.float32):
    """Standard normal noise drawn from `generator` on the generator's own device, then moved
    to `device`: a CPU generator gives the same numbers whatever device the sampler runs on."""
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    z = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype)
    return z.to(device)


def randn_like(x, generator=None):
    return randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def time_vector(t, x):
    """The time `t` (a float or 0-d tensor) as a [B] tensor for `x` of shape [B, ...]."""
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


def with_steps(sde, steps):
    """`sde` with N = `steps` discretisation steps (the same SDE if N already matches).

    The original PC sampler always takes N = sde.N steps; here `steps` may differ, and the
    discrete noise levels of VE (SMLD sigmas) and VP/sub-VP (DDPM betas) are rebuilt for
    `steps` levels so that each step of the discretised predictors spans one level. Another SDE
    subclass is copied with its N changed (its own `discretize` must read `self.N`)."""
    steps = int(steps)
    if steps == sde.N:
        return sde
    if isinstance(sde, VESDE):
        return type(sde)(sigma_min=sde.sigma_min, sigma_max=sde.sigma_max, N=steps)
    if isinstance(sde, BetaSchedule):
        return type(sde)(beta_min=sde.beta_0, beta_max=sde.beta_1, N=steps)
    out = copy.copy(sde)
    out.N = steps
    return out


def coefficients(sde, t):
    """alpha(t), sigma(t) of the perturbation kernel N(alpha(t) x(0), sigma(t)^2 I) at [B] times t.

    Every SDE here is linear, so its probability-flow ODE is determined by these two functions
    (VE: alpha = 1, sigma = sigma(t); VP: alpha = exp(int -beta/2), sigma = sqrt(1 - alpha^2);
    sub-VP: sigma = 1 - alpha^2)."""
    ones = torch.ones(t.shape[0], 1, dtype=t.dtype, device=t.device)
    mean, std = sde.marginal_prob(ones, t)
    return mean[:, 0], std


def denoise_tweedie(score_fn, sde, x, t):
    """E[x(0) | x(t) = x] = (x + sigma(t)^2 score(x, t)) / alpha(t) (Tweedie's formula): the
    noise-free last step of the fast samplers (the "denoiser" D of Karras et al. 2022)."""
    alpha, sigma = coefficients(sde, t)
    return (x + expand_to(sigma ** 2, x) * score_fn(x, t)) / expand_to(alpha, x)


class NonFiniteError(FloatingPointError):
    """A score evaluation (or a sampler's result) holds NaN or inf."""


ON_NONFINITE = ("raise", "keep")


def _describe_times(t, rows):
    """The time(s) of the rows `rows` of t ([B] or a scalar) as short text."""
    t = torch.as_tensor(t).detach().flatten()
    t = t[rows.to(t.device)] if t.numel() > 1 else t
    lo, hi = float(t.min()), float(t.max())
    return f"t = {lo:.6g}" if lo == hi else f"t in [{lo:.6g}, {hi:.6g}]"


def _rows_text(rows, limit=10):
    rows = rows.tolist()
    return f"{rows[:limit]}{' ...' if len(rows) > limit else ''}"


def nonfinite_rows(x):
    """None when x [B, ...] is finite, else the [B] boolean mask of the samples (rows) holding
    NaN/inf. Fast path: the sum of x is finite unless x holds NaN/inf (or the sum overflows,
    which falls through to the exact test), so a finite x costs one sum and, on an
    accelerator, one host synchronisation."""
    low = x.dtype in (torch.float16, torch.bfloat16)
    if math.isfinite(float(x.sum(dtype=torch.float32 if low else None))):
        return None
    finite = torch.isfinite(x).reshape(x.shape[0], -1).all(1)
    return None if bool(finite.all()) else ~finite


class CountingScore:
    """Wrap a score function: count its evaluations (one per call, whatever the batch) and check
    that each output is finite.

    on_nonfinite='raise' (default): an output holding NaN/inf raises NonFiniteError naming the
    sampler step (when the caller keeps `step`, the number of completed steps, up to date, as
    `sample` does through the sampler's callback), the score evaluation, the time and the
    samples concerned.
    on_nonfinite='keep': the output is passed on unchanged and the samples are recorded in
    `nonfinite` ({row + row_offset: (step, t)} at their first bad evaluation).
    The check costs one reduction and, on an accelerator, one host synchronisation per
    evaluation (benchmarks/finite_checks.py)."""

    def __init__(self, score_fn, on_nonfinite="raise", row_offset=0):
        if on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
        self.score_fn = score_fn
        self.on_nonfinite = on_nonfinite
        self.row_offset = int(row_offset)
        self.nfe = 0
        self.step = None   # completed sampler steps, where the caller keeps count
        self.nonfinite = {}

    def __call__(self, x, t):
        self.nfe += 1
        out = self.score_fn(x, t)
        if torch.is_tensor(out) and out.dim() > 0:
            self.check(out, t)
        return out

    def check(self, out, t):
        bad = nonfinite_rows(out)
        if bad is None:
            return
        rows = bad.nonzero().flatten()
        when = _describe_times(t, rows)
        step = None if self.step is None else self.step + 1
        where = (f"score evaluation {self.nfe}, {when}" if step is None else
                 f"sampler step {step} (score evaluation {self.nfe}, {when})")
        if self.on_nonfinite == "raise":
            raise NonFiniteError(
                f"the score function returned NaN/inf at {where} for {rows.numel()} of "
                f"{out.shape[0]} samples (rows {_rows_text(rows + self.row_offset)}); sampling "
                f"stopped there. Pass on_nonfinite='keep' to go on and have the bad samples "
                f"reported instead")
        for r in rows.tolist():
            self.nonfinite.setdefault(r + self.row_offset, (step, when))


def check_finite(name, value, where=None):
    """Raise a ValueError naming `name` if `value` [B, ...] holds NaN/inf (only at the elements
    where the boolean `where`, broadcastable to it, is True: e.g. the known pixels of inpainting
    data, whose unknown pixels are never read)."""
    bad = ~torch.isfinite(value)
    if where is not None:
        bad = bad & where.to(device=value.device)
    if bad.any():
        rows = bad.reshape(bad.shape[0], -1).any(1).nonzero().flatten() if bad.dim() > 0 \
            else torch.zeros(0, dtype=torch.long)
        place = " where it is used" if where is not None else ""
        raise ValueError(f"{name} holds {int(bad.sum())} NaN/inf values{place} (in samples "
                         f"{_rows_text(rows)}); give finite values")
    return value


def check_finite_samples(x, what, on_nonfinite="raise", row_offset=0):
    """Rows of x [B, ...] that hold NaN/inf (a list, offset by `row_offset`); with
    on_nonfinite='raise' any such row is a NonFiniteError naming `what`."""
    bad = nonfinite_rows(x)
    if bad is None:
        return []
    rows = bad.nonzero().flatten() + int(row_offset)
    if on_nonfinite == "raise":
        raise NonFiniteError(f"{what} holds NaN/inf in {rows.numel()} of {x.shape[0]} samples "
                             f"(rows {_rows_text(rows)})")
    return rows.tolist()


def probe_batch(sample_shape, device=None, dtype=torch.float32):
    """Two different samples of `sample_shape`, [2, *sample_shape]: zeros and a ramp over
    [-1, 1] (the inputs of the shape probes)."""
    sample_shape = tuple(int(s) for s in sample_shape)
    ramp = torch.linspace(-1.0, 1.0, math.prod(sample_shape), device=device,
                          dtype=dtype).reshape(sample_shape)
    return torch.stack([torch.zeros_like(ramp), ramp])


def probe_score(score_fn, sde, sample_shape, device=None, dtype=torch.float32, *,
                name="the score function", extra=()):
    """Evaluate score_fn(x, t, *extra) once at t = T on a batch x of two different samples of
    `sample_shape` (`probe_batch`) and check that the output is a tensor of x's shape, so that
    a shape that does not fit the model, or an output of batch 1 that would broadcast, fails
    before any work. Not counted in any NFE. `name` is the function's name in the errors."""
    sample_shape = tuple(int(s) for s in sample_shape)
    x = probe_batch(sample_shape, device, dtype)
    try:
        out = score_fn(x, time_vector(sde.T, x), *extra)
    except Exception as e:  # a model that cannot take this shape raises its own error
        raise ValueError(f"{name} fails on samples of shape {list(sample_shape)} (probe of "
                         f"shape {list(x.shape)}): {type(e).__name__}: {e}") from e
    if not torch.is_tensor(out) or out.shape != x.shape:
        got = list(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(f"{name} returns {got} for input of shape {list(x.shape)}: samples of "
                         f"shape {list(sample_shape)} do not fit it (the output must have the "
                         f"input's shape, one row per sample)")
    return x


def finite_positive(v):
    """Whether v is a number (or one-element tensor) that is finite and > 0."""
    try:
        return math.isfinite(float(v)) and float(v) > 0
    except (TypeError, ValueError, RuntimeError):
        return False


def batch_slices(n, batch_size=None):
    """Slices of at most `batch_size` rows covering range(n) in order (one slice when None)."""
    if batch_size is None:
        return [slice(0, n)]
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    b = int(batch_size)
    return [slice(i, min(i + b, n)) for i in range(0, n, b)]


def step_done(i, t_next, x, callback, bar):
    """Report a finished step of a deterministic sampler: `callback(i, t, x, x_mean)` with
    x_mean = x, and one tick of the progress bar."""
    if callback is not None:
        callback(i, time_vector(t_next, x), x, x)
    bar.update()


def finish(score_fn, sde, x, t_last, denoise, bar):
    """Close the progress bar; with `denoise`, one Tweedie denoising step at the last time."""
    bar.close()
    return denoise_tweedie(score_fn, sde, x, time_vector(t_last, x)) if denoise else x


def progress_bar(total=None, enabled=False, desc=None):
    """A tqdm bar when `enabled`, else a do-nothing stand-in with the same `update`/`close`."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False)


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass
