"""Shared settings of the built-in MNIST configs: the digits configs' fields, with the data
(MNIST, 28x28 grey, 256 levels; downloaded on first use into --data-dir, default
~/.cache/score-sde) and a network and schedule sized for it (minutes per thousand steps on a
GPU, hours on a CPU)."""

import math


def to_mnist(config):
    """`config` (a built-in digits config) changed to MNIST."""
    data = config.data
    data.dataset = 'MNIST'
    data.image_size = 28
    data.num_channels = 1
    data.random_flip = False  # digits are not mirror-symmetric

    training = config.training
    training.batch_size = 128
    training.n_iters = 20000
    training.snapshot_freq = 2000
    training.snapshot_freq_for_preemption = 500
    training.eval_freq = 1000
    training.log_freq = 100

    model = config.model
    # NCSNv2 Technique 1: sigma_max at least the largest distance between two training
    # images; for 28x28 images in [0, 1] no distance exceeds sqrt(28 * 28) = 28.
    model.sigma_max = float(math.sqrt(28 * 28))
    model.num_scales = 1000
    model.nf = 32
    model.ch_mult = (1, 2, 2)  # 28 -> 14 -> 7
    model.num_res_blocks = 2
    config.optim.lr = 1e-3
    config.optim.warmup = 500
    return config
