"""The toolkit's built-in default configs: small score models on scikit-learn's bundled 8x8
digits, trainable in minutes on a CPU (`python -m sde_lib.run --sde ve|vp|subvp`).

    configs.get_config('builtin/digits_ve')      # also digits_vp, digits_subvp
    configs.get_config('builtin/mnist_ve')       # the same models sized for MNIST (download)
"""
