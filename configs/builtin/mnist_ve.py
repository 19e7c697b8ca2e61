"""Built-in MNIST config with the VE SDE: the built-in digits_ve model and SDE, sized for
28x28 MNIST (`default_mnist_configs.to_mnist`)."""

from configs.builtin.default_mnist_configs import to_mnist
from configs.builtin.digits_ve import get_config as digits_config


def get_config():
    return to_mnist(digits_config())
