"""`sample`: one entry point for every sampler, with seeding, shape checks, batch splitting and
evaluation counting.

Samplers are declared and registered by name (`solvers.declared.register_sampler`): each is a
function

    sampler(score_fn, sde, x, *, eps, denoise, generator, progress, callback, **options) -> x

that carries x = x(T) (a prior draw, or `x_init`) down to the data at eps, with its declared
options. `sample` resolves the options (declared defaults, steps and grid), draws the prior,
counts the score evaluations (NFE) and splits large batches.
"""

import functools

import torch

import solvers.adaptive  # noqa: F401  (each sampler module registers its sampler on import)
import solvers.fast  # noqa: F401
import solvers.ode  # noqa: F401
import solvers.pc  # noqa: F401
import solvers.unipc  # noqa: F401
from solvers.evaluations import (ON_NONFINITE, CountingScore, check_finite,
                                 check_finite_samples)
from solvers.shapes import batch_slices, probe_score
from solvers.declared import SAMPLERS, get_sampler, register_sampler
from solvers.result import SampleResult
from solvers.seeding import RowGenerators, prior_draw, row_coupling

__all__ = ["SAMPLERS", "register_sampler", "sample", "with_rows"]

# The PC sampler's arguments of `sample`: passed to any sampler when given (a value other than
# the PC sampler's declared default), so that another sampler refuses them, and left out when
# at their defaults, so that sample(sampler='ode') runs.
PC_ARGUMENTS = ("predictor", "corrector", "snr", "n_corrector_steps")


class RowsHook:
    """A hook (callback, or the PC sampler's project) that also takes the rows of the whole batch
    that the current chunk covers, as `rows=slice(start, stop)`: for per-sample data, such as an
    inpainting mask, under `batch_size` splitting. Made with `with_rows(hook)`."""

    def __init__(self, fn):
        self.fn = fn

    def bind(self, rows):
        return functools.partial(self.fn, rows=rows)


def with_rows(hook):
    """`hook` marked to be called with the `rows` of its batch chunk (see RowsHook)."""
    return RowsHook(hook)


def _bind_rows(hook, rows):
    return hook.bind(rows) if isinstance(hook, RowsHook) else hook


def _check_shape(shape):
    try:
        ok = (not isinstance(shape, str) and len(shape) >= 2
              and all(int(s) == s and s > 0 for s in shape))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"shape must be a tuple (batch, *sample_shape) of at least two positive "
                         f"integers, got {shape!r}")
    return tuple(int(s) for s in shape)


def _counting_steps(counted, hook):
    """The sampler's callback: keeps `counted.step` (completed steps, for the non-finite
    report) up to date, then calls `hook` if given."""

    def callback(i, t, x, x_mean):
        counted.step = i + 1
        if hook is not None:
            hook(i, t, x, x_mean)

    return callback


def _is_default(value, default):
    return value is default or (isinstance(value, (str, int, float)) and value == default)


def given_options(spec, steps, pc_arguments, options):
    """The options of `sample`'s call that count as given to `spec`: `options`, `steps` unless
    None, and each PC argument that `spec` takes or that differs from the PC sampler's declared
    default."""
    given = dict(options)
    if steps is not None:
        given["steps"] = steps
    pc_defaults = get_sampler("pc").defaults()
    for k, v in pc_arguments.items():
        if k in spec.options or not _is_default(v, pc_defaults[k]):
            given[k] = v
    return given


@torch.no_grad()
def sample(score_fn, sde, shape=None, *, sampler="pc", predictor="reverse_diffusion",
           corrector="langevin", steps=None, snr=0.16, n_corrector_steps=1, eps=None,
           denoise=True, generator=None, device=None, progress=False, batch_size=None,
           dtype=torch.float32, x_init=None, callback=None, check_shape=True,
           on_nonfinite="raise", **options):
    """Draw samples of the data distribution whose score is `score_fn(x, t)` under `sde`.

    sampler: a registered sampler's name: 'pc' (predictor-corrector, Algorithm 1), 'ode'
      (adaptive probability-flow ODE), 'heun' (EDM), 'dpm_solver++', 'unipc', 'adaptive'
      (adaptive SDE solver), or one added with `register_sampler`. Each declares its options
      with their defaults and help (`solvers.SAMPLERS.get(name).options`; the command line's
      --help lists them), passed here as keywords: `steps` (and, for heun, dpm_solver++ and
      unipc, `grid`) too. An option the sampler does not take is an error naming the options it
      takes. predictor, corrector, snr, n_corrector_steps: the PC sampler's; another sampler
      refuses them when they differ from their defaults.
    eps: last time (default sde.sampling_eps: 1e-5 VE, 1e-3 VP/sub-VP). denoise: finish with a
      noise-free denoising step (the original's noise_removal).
    generator: a torch.Generator for every random draw (prior and steps): the same seed, shape
      and batch_size give the same samples. A `solvers.seeding.RowGenerators` (one generator
      per row) makes each sample a function of its own seed, whatever the batch; options that
      couple the rows (`row_coupling`) are then an error. device/dtype: of the samples
      (default: x_init's, else CPU / float32). x_init: the starting point x(T) instead of a prior draw (shape from it).
    batch_size: split the batch into chunks of at most this many samples, run one after the
      other with the same generator (so the result depends on batch_size).
    check_shape: evaluate the score once on two different samples at t = T before any work
      (not counted), so that a shape that does not fit, or an output of batch 1, fails at once.
    on_nonfinite: 'raise' (default): a NaN/inf from the score function stops sampling at the step
      where it appeared with a NonFiniteError naming the step, the time and the samples; a NaN/inf
      in the final samples is an error too. 'keep': sampling goes on and the samples that went
      bad are listed in info['nonfinite'] ({row: (step, time)}; rows with a NaN/inf only in the
      result have step None). The check is made on every score evaluation of every sampler.
    callback(i, t, x, x_mean): called after each step. progress: show a tqdm bar.
    Hooks (callback, and the PC sampler's project) see one batch chunk at a time; one wrapped
    in `with_rows(hook)` is also given the slice of the whole batch that the chunk covers.

    Runs under torch.no_grad(); a score function that needs gradients (classifier guidance)
    enables them itself (`with torch.enable_grad(): ...`).
    Returns SampleResult(samples, nfe, info): nfe counts every score evaluation one sample saw
    (the largest over batch chunks; each chunk's count is in info['nfe_per_batch']); info holds
    every option the run used (steps and grid resolved) and info['options'] the same as JSON
    data with sampler, eps and denoise: `sample(score_fn, sde, shape, generator=...,
    **info['options'])` runs it again.
    """
    spec = get_sampler(sampler)
    name = spec.name
    if x_init is not None:
        if not torch.is_tensor(x_init):
            raise ValueError(f"x_init must be a tensor, got {type(x_init).__name__}")
        if shape is not None and tuple(shape) != tuple(x_init.shape):
            raise ValueError(f"shape {tuple(shape)} does not match x_init's shape "
                             f"{tuple(x_init.shape)}")
        shape = tuple(x_init.shape)
        device = x_init.device if device is None else torch.device(device)
        dtype = x_init.dtype
    if shape is None:
        raise ValueError("give the shape of the samples (or x_init)")
    shape = _check_shape(shape)
    device = torch.device("cpu") if device is None else torch.device(device)
    eps = sde.sampling_eps if eps is None else float(eps)
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps}")
    if steps is not None and (isinstance(steps, bool) or int(steps) != steps or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
    if x_init is not None:
        check_finite("x_init", x_init)

    pc_arguments = dict(predictor=predictor, corrector=corrector, snr=snr,
                        n_corrector_steps=n_corrector_steps)
    kwargs = spec.resolve(sde, given_options(spec, steps, pc_arguments, options))
    slices = batch_slices(shape[0], batch_size)
    per_row = isinstance(generator, RowGenerators)
    if per_row:
        generator.check_rows(shape[0], "the samples")
        coupled = row_coupling(name, kwargs)
        if coupled:
            raise ValueError(f"one generator per row (RowGenerators) makes each sample a "
                             f"function of its own seed, but {coupled}")

    if check_shape:
        probe_score(score_fn, sde, shape[1:], device, dtype)

    chunks, nfes, nonfinite = [], [], {}
    for rows in slices:
        chunk_shape = (rows.stop - rows.start,) + shape[1:]
        gen = generator.select(rows) if per_row else generator
        if x_init is None:
            # drawn on the generator's device, so a CPU generator seeds a GPU run identically
            x = prior_draw(sde, chunk_shape, gen, device, dtype)
        else:
            x = x_init[rows].to(device=device, dtype=dtype)
        counted = CountingScore(score_fn, on_nonfinite, row_offset=rows.start)
        counted.step = 0
        chunk_kwargs = {k: _bind_rows(v, rows) if spec.options[k].hook else v
                        for k, v in kwargs.items()}
        x = spec.fn(counted, sde, x, eps=eps, denoise=denoise, generator=gen,
                    progress=progress,
                    callback=_counting_steps(counted, _bind_rows(callback, rows)),
                    **chunk_kwargs)
        nonfinite.update(counted.nonfinite)
        for r in check_finite_samples(x, f"the result of sampler {name!r}", on_nonfinite,
                                      rows.start):
            nonfinite.setdefault(r, (None, None))
        chunks.append(x)
        nfes.append(counted.nfe)
    samples = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
    record = {"sampler": name, "eps": eps, "denoise": denoise, **spec.record(kwargs)}
    info = {**{k: v for k, v in kwargs.items() if not spec.options[k].hook},
            "sampler": name, "eps": eps, "denoise": denoise, "nfe_per_batch": nfes,
            "batches": len(chunks), "options": record}
    if on_nonfinite == "keep":
        info["nonfinite"] = dict(sorted(nonfinite.items()))
    return SampleResult(samples, max(nfes), info)
