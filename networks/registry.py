"""Name registry of score-network classes (`config.model.name` -> class), on the toolkit's one
registry class `sde_base.registry.Registry`, and `create_model` (config -> network)."""

import torch

import configs
from networks.sizes import check_model_config
from sde_base.registry import Registry

MODELS = Registry("model")


def register_model(cls=None, *, name=None):
    """Class decorator: register `cls` under `name` (default: the class name)."""

    def _register(c):
        return MODELS.register(c.__name__ if name is None else name, c)

    return _register if cls is None else _register(cls)


def get_model_class(name):
    """The class registered as `name`; an error (KeyError and ValueError) lists the known names
    otherwise."""
    return MODELS.get(name)


def model_names():
    return MODELS.names()


def create_model(config, device=None):
    """The network named by `config.model.name`, built from `config`, on `device` (default
    `config.device`; 'auto' means CUDA when available, else CPU: `configs.resolve_device`).
    No DataParallel wrapper. The config's sizes are checked first (`networks.sizes`): a network
    that cannot fit in the device's memory is refused, naming the field, before any allocation."""
    cls = get_model_class(config.model.name)
    if device is None:
        device = config.get('device', configs.AUTO_DEVICE)
    try:
        resolved = torch.device(configs.resolve_device(device))
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"config.device = {device!r} is not a device: {e}") from None
    check_model_config(config, device=resolved)
    return cls(config).to(resolved)
