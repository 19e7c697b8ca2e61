"""The DDPM network on CIFAR-10 trained with the continuous-time VP SDE."""

from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.update(sde='vpsde', continuous=True, reduce_mean=True)
    config.sampling.update(method='pc', predictor='euler_maruyama', corrector='none')
    config.data.centered = True
    config.model.update(
        name='ddpm', scale_by_sigma=False, ema_rate=0.9999,
        normalization='GroupNorm', nonlinearity='swish',
        nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
        resamp_with_conv=True, conditional=True,
    )
    return config
