"""Small helpers shared by the score networks: noise-level grids and activation lookup."""

import numpy as np
import torch.nn as nn

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
    """SMLD noise levels: `num_scales` values from sigma_max down to sigma_min, equally spaced in
    log sigma (NCSN, Song & Ermon 2019, Sec. 4.2). float64 NumPy array, descending."""
    if not (0 < sigma_min <= sigma_max):
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, "
                         f"sigma_max={sigma_max}")
    if int(num_scales) < 1:
        raise ValueError(f"num_scales must be >= 1, got {num_scales}")
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), int(num_scales)))


def get_sigmas(config):
    """`geometric_sigmas` from `config.model.{sigma_min, sigma_max, num_scales}`."""
    m = config.model
    return geometric_sigmas(m.sigma_min, m.sigma_max, m.num_scales)
