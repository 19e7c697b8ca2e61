"""Toolkit-only settings (`config.runtime`) and the `config.device` convention.

The original configs stored a live `torch.device` in `config.device`; here it is the plain
string 'auto' (or 'cpu', 'cuda', 'cuda:1', ...) and the run code turns it into a device with
`resolve_device`. Nothing in this package imports torch at import time.
"""

import ml_collections

AUTO_DEVICE = 'auto'

# Defaults of config.runtime: how to run, never what to compute.
RUNTIME_DEFAULTS = (
    ('precision', 'fp32'),     # arithmetic precision of the network
    ('compile', False),        # wrap the network in torch.compile
    ('channels_last', False),  # NHWC memory format for images and convolution weights
)


def runtime_defaults():
    """A fresh `config.runtime` with the toolkit's defaults (plain values only)."""
    return ml_collections.ConfigDict(dict(RUNTIME_DEFAULTS))


def resolve_device(device=AUTO_DEVICE):
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; any other string is returned as it is.

    torch is imported only here, when the answer is needed."""
    if device is None or str(device) == AUTO_DEVICE:
        import torch
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    return str(device)
