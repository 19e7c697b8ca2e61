"""NCSN on CelebA 64x64 with NCSNv2 techniques 1, 2, 4 and 5 (as celeba_124, plus EMA)."""

from configs.default_celeba_configs import get_default_configs
from configs.ve.ncsn._ncsn import ncsn_config


def get_config():
    return ncsn_config(get_default_configs, n_steps_each=5, snr=0.128, num_scales=500,
                       ema_rate=0.999)
