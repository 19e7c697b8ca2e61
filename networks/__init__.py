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

from networks import ddpm, ncsnpp, ncsnv2  # noqa: F401  (importing them registers the models)
from networks.checkpoint import (FORMAT, CheckpointError, load_checkpoint, load_state,
                                 read_checkpoint, save_checkpoint)
from networks.ema import ExponentialMovingAverage
from networks.registry import create_model, get_model_class, model_names, register_model
from networks.runtime import (RuntimeOptions, fused_adam_kwargs, network_fn, prepare_model,
                              restore_fast_math, set_fast_math, unwrap_model)
from networks.score import ScoreFunction, get_score_fn
from networks.diffusers import DiffusersError, from_diffusers, to_diffusers  # noqa: E402


__all__ = [
    'create_model', 'get_score_fn', 'ScoreFunction', 'ExponentialMovingAverage',
    'load_checkpoint', 'save_checkpoint', 'read_checkpoint', 'load_state', 'CheckpointError',
    'FORMAT', 'get_model_class', 'model_names', 'register_model',
    'RuntimeOptions', 'prepare_model', 'unwrap_model', 'set_fast_math', 'restore_fast_math',
    'fused_adam_kwargs', 'network_fn', 'from_diffusers', 'to_diffusers', 'DiffusersError',
]
