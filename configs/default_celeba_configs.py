"""Defaults shared by the CelebA experiments (64x64 RGB, batch 128, 1.3M iterations): the
CIFAR-10 defaults with CelebA's data, snr, evaluation range and sigma_max."""

import ml_collections

from configs.default_cifar10_configs import get_default_configs as cifar10_defaults


def get_default_configs():
    config = cifar10_defaults()
    config.sampling.snr = 0.17
    config.eval.begin_ckpt = 1
    config.eval.enable_sampling = True
    config.data.dataset = 'CELEBA'
    config.data.image_size = 64
    # sigma_max is a float here (an int for CIFAR-10): rebuild the section to change its type.
    config.model = ml_collections.ConfigDict(dict(config.model.to_dict(), sigma_max=90.))
    return config
