"""The DDPM of Ho et al. (2020) on CelebA-HQ 256x256: discrete VP (1000 steps).
`data.tfrecords_path` is the original authors' path, kept for equality; point it at your data."""

from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.update(sde='vpsde', continuous=False, reduce_mean=True)
    config.sampling.update(method='pc', predictor='ancestral_sampling', corrector='none')
    config.data.update(dataset='CelebAHQ', centered=True,
                       tfrecords_path='/atlas/u/yangsong/celeba_hq/-r10.tfrecords', image_size=256)
    config.model.update(
        name='ddpm', scale_by_sigma=False, num_scales=1000, ema_rate=0.9999,
        normalization='GroupNorm', nonlinearity='swish',
        nf=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,),
        resamp_with_conv=True, conditional=True,
    )
    config.optim.lr = 2e-5
    return config
