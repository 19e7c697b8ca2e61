"""The 1024x1024 NCSN++ setup shared by CelebA-HQ and FFHQ (it does not start from any
default_*_configs: batch 8, 2000 noise scales, sigma_max = 1348, nf = 16 with 8 resolutions)."""

import ml_collections

from configs._runtime import AUTO_DEVICE, runtime_defaults


def ncsnpp_1024_config(dataset, tfrecords_path, reduce_mean):
    config = ml_collections.ConfigDict()
    config.training = ml_collections.ConfigDict(dict(
        batch_size=8,
        n_iters=2400001,
        snapshot_freq=50000,
        log_freq=50,
        eval_freq=100,
        snapshot_freq_for_preemption=5000,
        snapshot_sampling=True,
        sde='vesde',
        continuous=True,
        likelihood_weighting=False,
        reduce_mean=reduce_mean,
    ))
    config.sampling = ml_collections.ConfigDict(dict(
        method='pc',
        predictor='reverse_diffusion',
        corrector='langevin',
        probability_flow=False,
        snr=0.15,
        n_steps_each=1,
        noise_removal=True,
    ))
    config.eval = ml_collections.ConfigDict(dict(
        batch_size=1024,
        num_samples=50000,
        begin_ckpt=1,
        end_ckpt=96,
    ))
    config.data = ml_collections.ConfigDict(dict(
        dataset=dataset,
        image_size=1024,
        centered=False,
        random_flip=True,
        uniform_dequantization=False,
        num_channels=3,
        tfrecords_path=tfrecords_path,
    ))
    config.model = ml_collections.ConfigDict(dict(
        name='ncsnpp', scale_by_sigma=True,
        sigma_max=1348, num_scales=2000, ema_rate=0.9999, sigma_min=0.01,
        normalization='GroupNorm', nonlinearity='swish',
        nf=16, ch_mult=(1, 2, 4, 8, 16, 32, 32, 32), num_res_blocks=1, attn_resolutions=(16,),
        dropout=0., resamp_with_conv=True, conditional=True,
        fir=True, fir_kernel=[1, 3, 3, 1], skip_rescale=True, resblock_type='biggan',
        progressive='output_skip', progressive_input='input_skip', progressive_combine='sum',
        attention_type='ddpm', init_scale=0., fourier_scale=16, conv_size=3,
        embedding_type='fourier',
    ))
    config.optim = ml_collections.ConfigDict(dict(
        weight_decay=0,
        optimizer='Adam',
        lr=2e-4,
        beta1=0.9,
        amsgrad=False,
        eps=1e-8,
        warmup=5000,
        grad_clip=1.,
    ))
    config.seed = 42
    config.device = AUTO_DEVICE
    config.runtime = runtime_defaults()
    return config
