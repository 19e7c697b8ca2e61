"""NCSNv2 (deeper 128x128 network) on LSUN bedroom at 128x128: 1086 noise levels in
[0.01, 190], annealed Langevin dynamics with 3 steps per level at snr 0.095, EMA 0.9999.

As in the original release, `training.continuous` stays True from the defaults: the
original sets a misspelt `training.continuouse = False`, kept here for equality."""

from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.update(batch_size=128, sde='vesde', continuouse=False)
    config.sampling.update(method='pc', predictor='none', corrector='ald', n_steps_each=3,
                           snr=0.095)
    config.data.update(category='bedroom', image_size=128)
    config.model.update(name='ncsnv2_128', scale_by_sigma=True, sigma_max=190, num_scales=1086,
                        ema_rate=0.9999, sigma_min=0.01, normalization='InstanceNorm++',
                        nonlinearity='elu', nf=128, interpolation='bilinear')
    config.optim.update(weight_decay=0, optimizer='Adam', lr=1e-4, beta1=0.9, amsgrad=False,
                        eps=1e-8, warmup=0, grad_clip=-1)
    return config
