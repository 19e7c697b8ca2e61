"""`sample`: one entry point for every sampler, with seeding, shape checks, batch splitting and
evaluation counting.

Samplers are registered by name in SAMPLERS; each is a function

    sampler(score_fn, sde, x, *, eps, denoise, generator, progress, callback, **options) -> x

that carries x = x(T) (a prior draw, or `x_init`) down to the data at eps. `sample` draws the
prior, counts the score evaluations (NFE) and splits large batches.
"""

import functools
import inspect

import torch

from solvers.adaptive import adaptive
from solvers.common import (ON_NONFINITE, CountingScore, batch_slices, check_finite,
                            check_finite_samples, finite_positive, probe_score)
from solvers.correctors import get_corrector
from solvers.fast import dpm_solver_pp, heun
from solvers.unipc import unipc
from solvers.ode import ode_sampler
from solvers.pc import pc_sampler
from solvers.predictors import get_predictor
from sde_lib.registry import Registry
from solvers.result import SampleResult

SAMPLERS = Registry("sampler")


def register_sampler(name, fn=None, *, replace=False):
    """Register a sampler function under `name` (usable as a decorator)."""
    return SAMPLERS.register(name, fn, replace=replace)


register_sampler("pc", pc_sampler)
register_sampler("ode", ode_sampler)
register_sampler("heun", heun)
register_sampler("dpm_solver++", dpm_solver_pp)
register_sampler("unipc", unipc)
register_sampler("adaptive", adaptive)

# The PC sampler's own arguments of `sample` (predictor, corrector, snr, n_corrector_steps,
# and probability_flow=False) are passed to a sampler only if it takes them, and otherwise
# ignored, so that a config's PC settings do not stop `sampler='ode'`.


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


def _with_rows(hook, rows):
    """A hook that takes a `rows` keyword gets the slice of the whole batch that the current
    chunk covers (so per-sample data such as an inpainting mask can be indexed under
    `batch_size` splitting); other hooks are passed as they are."""
    if hook is None:
        return None
    try:
        takes_rows = "rows" in inspect.signature(hook).parameters
    except (TypeError, ValueError):
        takes_rows = False
    return functools.partial(hook, rows=rows) if takes_rows else hook


def _counting_steps(counted, hook):
    """The sampler's callback: keeps `counted.step` (completed steps, for the non-finite
    report) up to date, then calls `hook` if given."""

    def callback(i, t, x, x_mean):
        counted.step = i + 1
        if hook is not None:
            hook(i, t, x, x_mean)

    return callback


def _sampler_kwargs(fn, name, given):
    """The keyword arguments `fn` accepts, with a clear error for the ones it does not."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return given
    accepted = {k for k, p in params.items() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(k for k in given if k not in accepted)
    if unknown:
        raise ValueError(f"sampler {name!r} does not take {', '.join(unknown)}; its options: "
                         f"{', '.join(sorted(accepted))}")
    return given


@torch.no_grad()
def sample(score_fn, sde, shape=None, *, sampler="pc", predictor="reverse_diffusion",
           corrector="langevin", steps=None, snr=0.16, n_corrector_steps=1, eps=None,
           denoise=True, generator=None, device=None, progress=False, batch_size=None,
           dtype=torch.float32, x_init=None, callback=None, check_shape=True,
           on_nonfinite="raise", **options):
    """Draw samples of the data distribution whose score is `score_fn(x, t)` under `sde`.

    sampler: 'pc' (predictor-corrector; `predictor` in PREDICTORS, `corrector` in CORRECTORS,
      `snr`, `n_corrector_steps`, `steps` = N (default sde.N); options probability_flow,
      corrector_first, project, predictor_options, corrector_options (langevin:
      {'norm': 'batch' | 'sample'}, ald: {'step_lr': ...})), 'ode' (adaptive
      probability-flow ODE; options rtol, atol, method, ode_options), 'heun' (EDM, default 18
      steps; options grid, rho, second_order, churn S_churn, S_tmin, S_tmax, S_noise),
      'dpm_solver++' (default 20 steps; options order (2; 1 or 3), grid, rho,
      lower_order_final), 'unipc' (UniPC, default 10 steps; options
      order, variant, use_corrector, grid, lower_order_final, analytic_first), 'adaptive'
      (adaptive SDE solver; options rtol, atol, h_init, error_norm, ...), or any name added
      with `register_sampler`.
      The PC arguments are ignored by samplers that do not take them; other options a sampler
      does not take are an error.
    eps: last time (default sde.sampling_eps: 1e-5 VE, 1e-3 VP/sub-VP). denoise: finish with a
      noise-free denoising step (the original's noise_removal).
    generator: a torch.Generator for every random draw (prior and steps): the same seed, shape
      and batch_size give the same samples. device/dtype: of the samples (default: x_init's, else
      CPU / float32). x_init: the starting point x(T) instead of a prior draw (shape from it).
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
    Hooks (callback, and the PC sampler's project) see one batch chunk at a time; one that takes
    a `rows` keyword is also given the slice of the whole batch that the chunk covers.

    Runs under torch.no_grad(); a score function that needs gradients (classifier guidance)
    enables them itself (`with torch.enable_grad(): ...`).
    Returns SampleResult(samples, nfe, info): nfe counts every score evaluation one sample saw
    (the largest over batch chunks; each chunk's count is in info['nfe_per_batch']).
    """
    fn = SAMPLERS.get(sampler)
    name = sampler if isinstance(sampler, str) else getattr(sampler, "__name__", repr(sampler))
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
    if steps is not None and (int(steps) != steps or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if int(n_corrector_steps) != n_corrector_steps or n_corrector_steps < 0:
        raise ValueError(f"n_corrector_steps must be a non-negative integer, "
                         f"got {n_corrector_steps!r}")
    if not finite_positive(snr):
        raise ValueError(f"snr must be a finite positive number, got {snr!r}")
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
    if x_init is not None:
        check_finite("x_init", x_init)

    kwargs = dict(options)
    params = inspect.signature(fn).parameters
    if kwargs.get("probability_flow", None) is False and "probability_flow" not in params:
        del kwargs["probability_flow"]
    pc_given = dict(predictor=predictor, corrector=corrector, snr=snr,
                    n_corrector_steps=int(n_corrector_steps))
    kwargs.update({k: v for k, v in pc_given.items() if k in params})
    if "predictor" in kwargs:
        get_predictor(kwargs["predictor"])
    if "corrector" in kwargs:
        get_corrector(kwargs["corrector"])
    if steps is not None:
        kwargs["steps"] = int(steps)
    kwargs = _sampler_kwargs(fn, name, kwargs)
    slices = batch_slices(shape[0], batch_size)

    if check_shape:
        probe_score(score_fn, sde, shape[1:], device, dtype)

    chunks, nfes, nonfinite = [], [], {}
    for rows in slices:
        chunk_shape = (rows.stop - rows.start,) + shape[1:]
        if x_init is None:
            # drawn on the generator's device, so a CPU generator seeds a GPU run identically
            where = generator.device if generator is not None else device
            x = sde.prior_sampling(chunk_shape, generator=generator, device=where,
                                   dtype=dtype).to(device)
        else:
            x = x_init[rows].to(device=device, dtype=dtype)
        counted = CountingScore(score_fn, on_nonfinite, row_offset=rows.start)
        counted.step = 0
        chunk_kwargs = {k: _with_rows(v, rows) if k == "project" else v
                        for k, v in kwargs.items()}
        x = fn(counted, sde, x, eps=eps, denoise=denoise, generator=generator,
               progress=progress, callback=_counting_steps(counted, _with_rows(callback, rows)),
               **chunk_kwargs)
        nonfinite.update(counted.nonfinite)
        for r in check_finite_samples(x, f"the result of sampler {name!r}", on_nonfinite,
                                      rows.start):
            nonfinite.setdefault(r, (None, None))
        chunks.append(x)
        nfes.append(counted.nfe)
    samples = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
    info = {"sampler": name, "eps": eps, "denoise": denoise, "nfe_per_batch": nfes,
            "batches": len(chunks), **{k: v for k, v in kwargs.items() if k not in
                                       ("project", "corrector_options", "predictor_options")}}
    if on_nonfinite == "keep":
        info["nonfinite"] = dict(sorted(nonfinite.items()))
    if "steps" in params and "steps" not in kwargs:
        default = getattr(fn, "default_steps", params["steps"].default)
        grid = kwargs.get("grid")
        info["steps"] = (len(grid) - 1 if grid is not None and not isinstance(grid, str)
                         else sde.N if default is None else default)
    return SampleResult(samples, max(nfes), info)
