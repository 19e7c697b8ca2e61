"""Built-in default: a small DDPM++ on the 8x8 digits with the sub-VP SDE (data in [-1, 1]);
the VP default with the SDE swapped."""

from configs.builtin.digits_vp import get_config as vp_config


def get_config():
    config = vp_config()
    config.training.sde = 'subvpsde'
    return config
