"""Built-in default: a small DDPM++ on the 8x8 digits with the sub-VP SDE (data in [-1, 1])."""

from configs.builtin.default_digits_configs import get_default_configs


def get_config():
    config = get_default_configs()
    training = config.training
    training.sde = 'subvpsde'
    training.continuous = True
    training.reduce_mean = True

    sampling = config.sampling
    sampling.method = 'pc'
    sampling.predictor = 'euler_maruyama'
    sampling.corrector = 'none'

    data = config.data
    data.centered = True

    model = config.model
    model.scale_by_sigma = False
    model.embedding_type = 'positional'
    return config
