"""NCSN (Song & Ermon, 2019) trained as a discrete VE model, with or without the NCSNv2
techniques (Song & Ermon, 2020): 1 = sigma_max from the data, 2 = geometric noise scales
chosen for the data, 4 = Langevin step size from the snr, 5 = EMA of the weights.

The plain NCSN setting is 10 noise levels in [0.01, 1], 100 Langevin steps each, no EMA."""


def ncsn_config(get_default_configs, *, n_steps_each, snr, num_scales, ema_rate,
                sigma_max=None, loss_slip=False):
    """A config of the NCSN family on top of a dataset's defaults. `sigma_max=None` keeps the
    dataset default (technique 1); `loss_slip=True` also names the SDE under `training.loss`,
    as the original CelebA file does (instead of `training.sde`, which the toolkit adds)."""
    config = get_default_configs()
    config.training.sde = 'vesde'
    if loss_slip:
        config.training.loss = 'vesde'
    config.training.continuous = False
    config.sampling.update(method='pc', predictor='none', corrector='ald',
                           n_steps_each=n_steps_each, snr=snr)
    model = config.model
    model.update(name='ncsn', scale_by_sigma=False)
    if sigma_max is not None:
        model.sigma_max = sigma_max
    model.update(num_scales=num_scales, ema_rate=ema_rate, normalization='InstanceNorm++',
                 nonlinearity='elu', nf=128, interpolation='bilinear')
    config.optim.update(weight_decay=0, optimizer='Adam', lr=1e-3, beta1=0.9, amsgrad=False,
                        eps=1e-8, warmup=0, grad_clip=-1.)
    return config
