"""Small helpers shared by the score networks: noise-level grids and activation lookup."""

import torch.nn as nn

import sde_lib

# config.model.nonlinearity -> activation module factory (the original's four choices).
_ACTIVATIONS = {
    'elu': nn.ELU,
    'relu': nn.ReLU,
    'lrelu': lambda: nn.LeakyReLU(negative_slope=0.2),
    'swish': nn.SiLU,
}


def get_activation(name):
    """A fresh activation module for `name` in {'elu', 'relu', 'lrelu', 'swish'} (case-insensitive)."""
    try:
        return _ACTIVATIONS[str(name).lower()]()
    except KeyError:
        raise ValueError(f"unknown nonlinearity {name!r}; known: {sorted(_ACTIVATIONS)}") from None


def get_act(config):
    """The activation named by `config.model.nonlinearity`."""
    return get_activation(config.model.nonlinearity)


def geometric_sigmas(sigma_min, sigma_max, num_scales):
    """SMLD noise levels from sigma_max down to sigma_min (`sde_lib.geometric_sigmas`), as a
    float64 NumPy array, descending."""
    return sde_lib.geometric_sigmas(sigma_min, sigma_max, num_scales).numpy()


def get_sigmas(config):
    """`geometric_sigmas` from `config.model.{sigma_min, sigma_max, num_scales}`."""
    m = config.model
    return geometric_sigmas(m.sigma_min, m.sigma_max, m.num_scales)
