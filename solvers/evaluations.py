"""Score evaluations: counting them (the NFE) and checking each output, and a sampler's result,
for NaN/inf, with errors that name the step, the time and the samples."""

import math

import torch


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
