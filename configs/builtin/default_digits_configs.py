"""Shared defaults of the built-in digits configs (same fields as the original's
default_cifar10_configs, values scaled to 8x8 images and a few minutes on two CPU cores)."""

import ml_collections


def get_default_configs():
    config = ml_collections.ConfigDict()
    # training
    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 64
    training.n_iters = 2000
    training.snapshot_freq = 1000
    training.log_freq = 50
    training.eval_freq = 500
    training.snapshot_freq_for_preemption = 250
    training.snapshot_sampling = False
    training.likelihood_weighting = False
    training.continuous = True
    training.reduce_mean = False

    # sampling
    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.n_steps_each = 1
    sampling.noise_removal = True
    sampling.probability_flow = False
    sampling.snr = 0.16

    # evaluation
    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.begin_ckpt = 1
    evaluate.end_ckpt = 1000
    evaluate.batch_size = 300
    evaluate.enable_sampling = False
    evaluate.num_samples = 300
    evaluate.enable_loss = True
    evaluate.enable_bpd = False
    evaluate.bpd_dataset = 'test'

    # data: scikit-learn's digits (1797 images of 8x8 pixels, 17 grey levels), bundled offline
    config.data = data = ml_collections.ConfigDict()
    data.dataset = 'DIGITS'
    data.image_size = 8
    data.random_flip = False  # digits are not mirror-symmetric
    data.centered = False
    data.uniform_dequantization = False
    data.num_channels = 1

    # model: a small DDPM++/NCSN++ (model.name 'ncsnpp')
    config.model = model = ml_collections.ConfigDict()
    model.name = 'ncsnpp'
    model.sigma_min = 0.01
    model.sigma_max = 5.0  # >= the largest pairwise distance of the data (4.80), NCSNv2 Technique 1
    model.num_scales = 500  # sampling steps (the SDE's N); 500 suffice for these 8x8 digits
    model.beta_min = 0.1
    model.beta_max = 20.
    model.dropout = 0.0
    model.embedding_type = 'fourier'
    model.scale_by_sigma = True
    model.ema_rate = 0.999
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 32
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = ()
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = False
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = 'biggan'
    model.progressive = 'none'
    model.progressive_input = 'none'
    model.progressive_combine = 'sum'
    model.attention_type = 'ddpm'
    model.init_scale = 0.
    model.fourier_scale = 16
    model.conv_size = 3

    # optimization
    config.optim = optim = ml_collections.ConfigDict()
    optim.weight_decay = 0
    optim.optimizer = 'Adam'
    optim.lr = 2e-3
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.warmup = 100
    optim.grad_clip = 1.

    config.seed = 42
    config.device = 'auto'
    return config
