"""Defaults shared by the CIFAR-10 experiments (32x32 RGB, batch 128, 1.3M iterations)."""

import ml_collections

from configs._runtime import AUTO_DEVICE, runtime_defaults


def get_default_configs():
    config = ml_collections.ConfigDict()
    config.training = ml_collections.ConfigDict(dict(
        batch_size=128,
        n_iters=1300001,
        snapshot_freq=50000,                 # numbered checkpoint every this many steps
        log_freq=50,
        eval_freq=100,
        snapshot_freq_for_preemption=10000,  # resumable checkpoint, overwritten each time
        snapshot_sampling=True,              # draw a sample grid at each numbered checkpoint
        likelihood_weighting=False,
        continuous=True,
        reduce_mean=False,
    ))
    config.sampling = ml_collections.ConfigDict(dict(
        n_steps_each=1,
        noise_removal=True,
        probability_flow=False,
        snr=0.16,
    ))
    config.eval = ml_collections.ConfigDict(dict(
        begin_ckpt=9,
        end_ckpt=26,
        batch_size=1024,
        enable_sampling=False,
        num_samples=50000,
        enable_loss=True,
        enable_bpd=False,
        bpd_dataset='test',
    ))
    config.data = ml_collections.ConfigDict(dict(
        dataset='CIFAR10',
        image_size=32,
        random_flip=True,
        centered=False,
        uniform_dequantization=False,
        num_channels=3,
    ))
    config.model = ml_collections.ConfigDict(dict(
        sigma_min=0.01,
        sigma_max=50,
        num_scales=1000,
        beta_min=0.1,
        beta_max=20.,
        dropout=0.1,
        embedding_type='fourier',
    ))
    config.optim = ml_collections.ConfigDict(dict(
        weight_decay=0,
        optimizer='Adam',
        lr=2e-4,
        beta1=0.9,
        eps=1e-8,
        warmup=5000,
        grad_clip=1.,
    ))
    config.seed = 42
    config.device = AUTO_DEVICE
    config.runtime = runtime_defaults()
    return config
