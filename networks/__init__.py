"""Score networks and everything around them.

    model = networks.create_model(config)                  # by config.model.name
    score_fn = networks.get_score_fn(sde, model, continuous=config.training.continuous)
    model = networks.load_checkpoint(path, config, ema=True)   # original or toolkit .pth
    networks.save_checkpoint(path, model, config, ema=ema, optimizer=opt, step=step)

Fast path (`config.runtime`; networks/runtime.py): `options = RuntimeOptions.from_config(config)`,
`model = prepare_model(model, options)`, `get_score_fn(..., **options.score_options())`.

Models (`config.model.name`): 'ncsnpp' (NCSN++ and DDPM++), 'ddpm', 'ncsn', 'ncsnv2_64',
'ncsnv2_128', 'ncsnv2_256' (aliases 'ncsnv2', 'ncsnv2_deeper', 'ncsnv2_deepest').
"""

import torch

from networks import ddpm, ncsnpp, ncsnv2  # noqa: F401  (importing them registers the models)
from networks.checkpoint import (FORMAT, CheckpointError, load_checkpoint, load_state,
                                 read_checkpoint, save_checkpoint)
from networks.ema import ExponentialMovingAverage
from networks.registry import get_model_class, model_names, register_model
from networks.runtime import (RuntimeOptions, fused_adam_kwargs, network_fn, prepare_model,
                              restore_fast_math, set_fast_math, unwrap_model)
from networks.score import ScoreFunction, get_score_fn


def _resolve_device(device):
    """'auto' (or None) -> 'cuda' when available, else 'cpu'; other strings/devices as given."""
    if device is None or str(device) == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"config.device = {device!r} is not a device: {e}") from None


def create_model(config, device=None):
    """The network named by `config.model.name`, built from `config`, on `device` (default
    `config.device`: 'auto' means CUDA when available, else CPU). No DataParallel wrapper."""
    model = get_model_class(config.model.name)(config)
    if device is None:
        device = config.get('device', 'auto')
    return model.to(_resolve_device(device))


__all__ = [
    'create_model', 'get_score_fn', 'ScoreFunction', 'ExponentialMovingAverage',
    'load_checkpoint', 'save_checkpoint', 'read_checkpoint', 'load_state', 'CheckpointError',
    'FORMAT', 'get_model_class', 'model_names', 'register_model',
    'RuntimeOptions', 'prepare_model', 'unwrap_model', 'set_fast_math', 'restore_fast_math',
    'fused_adam_kwargs', 'network_fn',
]
