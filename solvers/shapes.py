"""Shapes: time vectors for a batch, batch chunks, and the shape probe that makes a score function
that does not fit fail before any work."""

import math

import torch


def shape_or_type(v):
    """A tensor's shape (as a tuple), or the type name of anything else: for error messages."""
    return tuple(v.shape) if torch.is_tensor(v) else type(v).__name__


def time_vector(t, x):
    """The time `t` (a float or 0-d tensor) as a [B] tensor for `x` of shape [B, ...]."""
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


def batch_slices(n, batch_size=None):
    """Slices of at most `batch_size` rows covering range(n) in order (one slice when None)."""
    if batch_size is None:
        return [slice(0, n)]
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    b = int(batch_size)
    return [slice(i, min(i + b, n)) for i in range(0, n, b)]


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
