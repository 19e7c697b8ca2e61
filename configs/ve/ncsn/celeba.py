"""NCSN (v1) on CelebA 64x64: 10 noise levels from 1 to 0.01, 100 Langevin steps per level.

As in the original release this file names the SDE under `training.loss`, not
`training.sde`; pass `--config.training.sde=vesde` where a `training.sde` is needed."""

from configs.default_celeba_configs import get_default_configs
from configs.ve.ncsn._ncsn import ncsn_config


def get_config():
    return ncsn_config(get_default_configs, n_steps_each=100, snr=0.316, sigma_max=1,
                       num_scales=10, ema_rate=0., sde_field='loss')
