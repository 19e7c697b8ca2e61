"""The DDPM network trained as a VE / SMLD model (discrete noise levels) on CIFAR-10."""

from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.update(sde='vesde', continuous=False)
    config.sampling.update(method='pc', predictor='reverse_diffusion', corrector='langevin')
    config.model.update(
        name='ddpm', scale_by_sigma=True, ema_rate=0.999,
        normalization='GroupNorm', nonlinearity='swish',
        nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
        resamp_with_conv=True, conditional=True, conv_size=3,
    )
    return config
