"""Sampling a trained model as a config says (used by the training snapshots and the CLI)."""

import inspect

import torch

import solvers
from networks import get_score_fn
from networks.runtime import RuntimeOptions
from training.data import get_data_inverse_scaler


def accepts(sampler, name):
    """Whether the solvers sampler `sampler` takes the keyword `name`."""
    params = inspect.signature(solvers.SAMPLERS.get(sampler)).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def sampling_options(config, **overrides):
    """Keyword arguments of `solvers.sample` from `config.sampling`, then `overrides` (None
    values are ignored): sampler <- method, predictor, corrector, snr,
    n_corrector_steps <- n_steps_each, denoise <- noise_removal; steps and probability_flow
    only where the sampler takes them (explicit overrides are passed as they are)."""
    s = config.sampling
    opts = {
        "sampler": str(overrides.pop("sampler", None) or s.get("method", "pc")).lower(),
        "predictor": s.get("predictor", "reverse_diffusion"),
        "corrector": s.get("corrector", "langevin"),
        "snr": float(s.get("snr", 0.16)),
        "n_corrector_steps": int(s.get("n_steps_each", 1)),
        "denoise": bool(s.get("noise_removal", True)),
    }
    if s.get("probability_flow", False) and accepts(opts["sampler"], "probability_flow"):
        opts["probability_flow"] = True
    explicit_grid = torch.is_tensor(overrides.get("grid"))  # its times set the steps
    if s.get("steps", None) and accepts(opts["sampler"], "steps") and not explicit_grid:
        opts["steps"] = int(s.steps)
    opts.update({k: v for k, v in overrides.items() if v is not None})
    return opts


@torch.no_grad()
def draw_samples(model, sde, config, n, *, generator=None, device=None, continuous=None,
                 progress=False, **overrides):
    """n samples of `model` under `sde` with the sampler of `config.sampling` (and
    `overrides`), mapped to [0, 1] by the data inverse scaler. Returns (images, nfe, options)."""

    if continuous is None:
        continuous = bool(config.training.get("continuous", True))
    was_training = model.training
    model.eval()
    try:
        network = RuntimeOptions.from_config(config).score_options()  # precision, channels_last
        score_fn = get_score_fn(sde, model, continuous=continuous, **network)
        shape = (n, config.data.num_channels, config.data.image_size, config.data.image_size)
        opts = sampling_options(config, **overrides)
        result = solvers.sample(score_fn, sde, shape, generator=generator, device=device,
                                progress=progress, **opts)
    finally:
        model.train(was_training)
    images = get_data_inverse_scaler(config)(result.samples).clamp(0, 1)
    return images, int(result.nfe), opts
