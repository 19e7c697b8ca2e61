"""DDPM++ (deep: 8 residual blocks per resolution) on CIFAR-10 with the continuous-time VP SDE."""

from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.update(sde='vpsde', continuous=True, reduce_mean=True, n_iters=950001)
    config.sampling.update(method='pc', predictor='euler_maruyama', corrector='none')
    config.data.centered = True
    config.model.update(
        name='ncsnpp', scale_by_sigma=False, ema_rate=0.9999,
        normalization='GroupNorm', nonlinearity='swish',
        nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=8, attn_resolutions=(16,),
        resamp_with_conv=True, conditional=True,
        fir=False, fir_kernel=[1, 3, 3, 1], skip_rescale=True, resblock_type='biggan',
        progressive='none', progressive_input='none', progressive_combine='sum',
        attention_type='ddpm', init_scale=0., embedding_type='positional', fourier_scale=16,
        conv_size=3,
    )
    return config
