"""NCSN on CelebA 64x64 with NCSNv2 techniques 1, 2 and 4 (sigma_max = 90, 500 noise levels,
5 Langevin steps per level at snr 0.128), no EMA."""

from configs.default_celeba_configs import get_default_configs
from configs.ve.ncsn._ncsn import ncsn_config


def get_config():
    return ncsn_config(get_default_configs, n_steps_each=5, snr=0.128, num_scales=500,
                       ema_rate=0.)
