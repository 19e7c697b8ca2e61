"""NCSN++ on FFHQ 256x256 with the continuous-time VE SDE (sigma_max = 348).
`data.tfrecords_path` is the original authors' path, kept for equality; point it at your data."""

from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.update(sde='vesde', continuous=True)
    config.sampling.update(method='pc', predictor='reverse_diffusion', corrector='langevin')
    config.data.update(dataset='FFHQ', image_size=256,
                       tfrecords_path='/home/yangsong/ncsc/ffhq/ffhq-r08.tfrecords')
    config.model.update(
        name='ncsnpp', sigma_max=348, scale_by_sigma=True, ema_rate=0.999,
        normalization='GroupNorm', nonlinearity='swish',
        nf=128, ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
        resamp_with_conv=True, conditional=True,
        fir=True, fir_kernel=[1, 3, 3, 1], skip_rescale=True, resblock_type='biggan',
        progressive='output_skip', progressive_input='input_skip', progressive_combine='sum',
        attention_type='ddpm', init_scale=0., fourier_scale=16, conv_size=3,
    )
    return config
