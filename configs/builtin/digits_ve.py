"""Built-in default: a small NCSN++ on the 8x8 digits with the VE SDE (data in [0, 1])."""

from configs.builtin.default_digits_configs import get_default_configs


def get_config():
    config = get_default_configs()
    training = config.training
    training.sde = 'vesde'
    training.continuous = True

    sampling = config.sampling
    sampling.method = 'pc'
    sampling.predictor = 'reverse_diffusion'
    sampling.corrector = 'langevin'

    model = config.model
    model.scale_by_sigma = True
    model.embedding_type = 'fourier'
    return config
