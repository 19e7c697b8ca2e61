"""NCSN on CelebA 64x64 with NCSNv2 technique 5 only (EMA of the weights)."""

from configs.default_celeba_configs import get_default_configs
from configs.ve.ncsn._ncsn import ncsn_config


def get_config():
    return ncsn_config(get_default_configs, n_steps_each=100, snr=0.316, sigma_max=1.,
                       num_scales=10, ema_rate=0.999)
