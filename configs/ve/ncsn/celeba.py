"""NCSN (v1) on CelebA 64x64: 10 noise levels from 1 to 0.01, 100 Langevin steps per level.

The original file names the SDE under `training.loss` instead of `training.sde` (a slip: every
other config uses `training.sde`). The field is kept, and `training.sde = 'vesde'` is added so
that `sde_lib.get_sde` and the commands read the VE SDE the file intends."""

from configs.default_celeba_configs import get_default_configs
from configs.ve.ncsn._ncsn import ncsn_config


def get_config():
    return ncsn_config(get_default_configs, n_steps_each=100, snr=0.316, sigma_max=1,
                       num_scales=10, ema_rate=0., loss_slip=True)
