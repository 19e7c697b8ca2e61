"""NCSN on CIFAR-10 with NCSNv2 techniques 1, 2 and 4 (sigma_max = 50, 232 noise levels,
5 Langevin steps per level at snr 0.176), no EMA."""

from configs.default_cifar10_configs import get_default_configs
from configs.ve.ncsn._ncsn import ncsn_config


def get_config():
    return ncsn_config(get_default_configs, n_steps_each=5, snr=0.176, num_scales=232,
                       ema_rate=0.)
