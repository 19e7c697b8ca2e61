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

import importlib

import torch

from networks.checkpoint import (FORMAT, CheckpointError, load_checkpoint, load_state,
                                 read_checkpoint, save_checkpoint)
from networks.ema import ExponentialMovingAverage
from networks.registry import get_model_class, model_names, register_model
from networks.runtime import (RuntimeOptions, fused_adam_kwargs, network_fn, prepare_model,
                              restore_fast_math, set_fast_math, unwrap_model)
from networks.score import ScoreFunction, get_score_fn

# Modules whose import registers models. One that is absent is reported when its model is asked
# for (any other import error propagates at once).
_MODEL_MODULES = {'ncsnpp': ('ncsnpp',), 'ddpm': ('ddpm',),
                  'ncsnv2': ('ncsn', 'ncsnv2_64', 'ncsnv2_128', 'ncsnv2_256', 'ncsnv2',
                             'ncsnv2_deeper', 'ncsnv2_deepest')}
_ABSENT = {}
for _module, _names in _MODEL_MODULES.items():
    try:
        importlib.import_module(f'networks.{_module}')
    except ModuleNotFoundError as _e:
        if _e.name != f'networks.{_module}':
            raise
        _ABSENT.update({n: f'networks/{_module}.py' for n in _names})


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
    name = config.model.name
    if name in _ABSENT and name not in model_names():
        raise KeyError(f"model {name!r} lives in {_ABSENT[name]}, which is not present in this "
                       f"installation")
    model = get_model_class(name)(config)
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
