"""NCSNv2 on CelebA 64x64: 500 noise levels in [0.01, 90], annealed Langevin dynamics with
5 steps per level at snr 0.128, EMA 0.999."""

from configs.default_celeba_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.update(sde='vesde', continuous=False)
    config.sampling.update(method='pc', predictor='none', corrector='ald', n_steps_each=5,
                           snr=0.128)
    config.model.update(name='ncsnv2_64', scale_by_sigma=True, num_scales=500, ema_rate=0.999,
                        normalization='InstanceNorm++', nonlinearity='elu', nf=128,
                        interpolation='bilinear')
    config.optim.update(weight_decay=0, optimizer='Adam', lr=1e-4, beta1=0.9, amsgrad=False,
                        eps=1e-8, warmup=0, grad_clip=-1.)
    return config
