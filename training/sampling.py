"""Sampling a trained model as a config says (used by the training snapshots and the CLI)."""

import torch

import solvers
from networks import get_score_fn
from networks.runtime import RuntimeOptions
from training.data import get_data_inverse_scaler


def sampling_options(config, **overrides):
    """Keyword arguments of `solvers.sample` from `config.sampling`, then `overrides` (None
    values are ignored): sampler <- method, denoise <- noise_removal, and predictor, corrector,
    snr, n_corrector_steps <- n_steps_each, probability_flow, steps only where the sampler
    declares them (so a config's PC settings do not stop sampler='ode'; an explicit grid's times
    set the steps). Overrides are passed as they are: one the sampler does not take is an error
    when sampling (and in the command line's `check_sampling`)."""
    s = config.sampling
    name = str(overrides.pop("sampler", None) or s.get("method", "pc")).lower()
    opts = {"sampler": name, "denoise": bool(s.get("noise_removal", True))}
    if name in solvers.SAMPLERS:
        takes = solvers.get_sampler(name).options
        from_config = {
            "predictor": s.get("predictor", None), "corrector": s.get("corrector", None),
            "snr": None if s.get("snr", None) is None else float(s.snr),
            "n_corrector_steps": (None if s.get("n_steps_each", None) is None
                                  else int(s.n_steps_each)),
            "probability_flow": (None if s.get("probability_flow", None) is None
                                 else bool(s.probability_flow)),
            "steps": int(s.steps) if s.get("steps", None) else None}
        if torch.is_tensor(overrides.get("grid")):
            from_config["steps"] = None    # the explicit grid's times set the steps
        opts.update({k: v for k, v in from_config.items() if v is not None and k in takes})
    opts.update({k: v for k, v in overrides.items() if v is not None})
    return opts


@torch.no_grad()
def draw_samples(model, sde, config, n, *, generator=None, device=None, continuous=None,
                 progress=False, **overrides):
    """n samples of `model` under `sde` with the sampler of `config.sampling` (and
    `overrides`), mapped to [0, 1] by the data inverse scaler. Returns (images, nfe, used):
    `used` holds every option the run used, defaults included, as JSON data
    (`SampleResult.info['options']`): passed back as overrides it runs the same sampling."""

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
    return images, int(result.nfe), result.info["options"]
