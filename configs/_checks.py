"""Value checks of a config, made before any work: a field that cannot be right (a negative batch
size, an infinite sigma_max, a learning rate of -1) is one error naming the field, its value and
the rule, instead of a failure deep inside torch or a NaN loss at step 0.

The fields listed here are checked where the config has them (numbers, sizes, switches); each
rule says what the code that reads the field needs. Names (SDE, model, sampler, predictor,
dataset) are checked by the registry that knows them, where they are looked up.
"""

import math

# field -> (rule, test of the value)
_POSITIVE_INT = ("a positive integer", lambda v: _is_int(v) and v > 0)
_NONNEG_INT = ("a non-negative integer", lambda v: _is_int(v) and v >= 0)
_POSITIVE = ("a finite positive number", lambda v: _is_num(v) and 0 < v < math.inf)
_NONNEG = ("a finite number >= 0", lambda v: _is_num(v) and 0 <= v < math.inf)
_FINITE = ("a finite number", lambda v: _is_num(v) and math.isfinite(v))
_FRACTION = ("a number in [0, 1]", lambda v: _is_num(v) and 0 <= v <= 1)
_OPEN_FRACTION = ("a number in [0, 1)", lambda v: _is_num(v) and 0 <= v < 1)
_BOOL = ("True or False", lambda v: isinstance(v, bool))
_SIZES = ("a tuple of positive integers (may be empty)",
          lambda v: isinstance(v, (list, tuple)) and all(_is_int(m) and m > 0 for m in v))
_NONEMPTY_SIZES = ("a non-empty tuple of positive integers",
                   lambda v: _SIZES[1](v) and len(v) > 0)
_KERNEL = ("a non-empty list of finite numbers",
           lambda v: isinstance(v, (list, tuple)) and len(v) > 0
           and all(_is_num(m) and math.isfinite(m) for m in v))

RULES = {
    "seed": _NONNEG_INT,
    "training.batch_size": _POSITIVE_INT,
    "training.n_iters": _POSITIVE_INT,
    "training.snapshot_freq": _NONNEG_INT,
    "training.snapshot_freq_for_preemption": _NONNEG_INT,
    "training.log_freq": _NONNEG_INT,
    "training.eval_freq": _NONNEG_INT,
    "training.grad_accum": _POSITIVE_INT,
    "training.eps": _POSITIVE,
    "training.dist_timeout": _POSITIVE,
    "training.continuous": _BOOL,
    "training.reduce_mean": _BOOL,
    "training.likelihood_weighting": _BOOL,
    "training.importance_sampling": _BOOL,
    "training.snapshot_sampling": _BOOL,
    "sampling.snr": _POSITIVE,
    "sampling.n_steps_each": _NONNEG_INT,
    "sampling.steps": _POSITIVE_INT,
    "sampling.noise_removal": _BOOL,
    "sampling.probability_flow": _BOOL,
    "eval.batch_size": _POSITIVE_INT,
    "eval.num_samples": _POSITIVE_INT,
    "eval.bpd_num_repeats": _POSITIVE_INT,
    "eval.begin_ckpt": _NONNEG_INT,
    "eval.end_ckpt": _NONNEG_INT,
    "eval.enable_loss": _BOOL,
    "eval.enable_bpd": _BOOL,
    "eval.enable_sampling": _BOOL,
    "data.image_size": _POSITIVE_INT,
    "data.num_channels": _POSITIVE_INT,
    "data.centered": _BOOL,
    "data.random_flip": _BOOL,
    "data.uniform_dequantization": _BOOL,
    "model.sigma_min": _POSITIVE,
    "model.sigma_max": _POSITIVE,
    "model.beta_min": _NONNEG,
    "model.beta_max": _POSITIVE,
    "model.num_scales": _POSITIVE_INT,
    "model.nf": _POSITIVE_INT,
    "model.num_res_blocks": _POSITIVE_INT,
    "model.ema_rate": _FRACTION,
    "model.dropout": _OPEN_FRACTION,
    "model.fourier_scale": _POSITIVE,
    "model.sigma_begin": _POSITIVE,
    "model.init_scale": _NONNEG,
    "model.conv_size": _POSITIVE_INT,
    "model.ch_mult": _NONEMPTY_SIZES,
    "model.attn_resolutions": _SIZES,
    "model.fir_kernel": _KERNEL,
    "model.conditional": _BOOL,
    "model.scale_by_sigma": _BOOL,
    "model.skip_rescale": _BOOL,
    "model.resamp_with_conv": _BOOL,
    "model.fir": _BOOL,
    "optim.lr": _POSITIVE,
    "optim.beta1": _OPEN_FRACTION,
    "optim.eps": _POSITIVE,
    "optim.weight_decay": _NONNEG,
    "optim.warmup": _NONNEG_INT,
    "optim.grad_clip": _FINITE,
    "optim.amsgrad": _BOOL,
    "runtime.channels_last": _BOOL,
    "runtime.compile": _BOOL,
}

# (smaller, larger, may they be equal): the first must be below the second
ORDERS = (("model.sigma_min", "model.sigma_max", False), ("model.beta_min", "model.beta_max", False),
          ("eval.begin_ckpt", "eval.end_ckpt", True))


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _get(config, key):
    if "." not in key:
        return config.get(key, None)
    section, field = key.split(".")
    part = config.get(section, None)
    if part is None or not hasattr(part, "get"):
        return None
    return part.get(field, None)


def value_problems(config):
    """['config.optim.lr must be a finite positive number, got -1.0', ...] (empty when fine)."""
    out = []
    for key, (rule, ok) in RULES.items():
        value = _get(config, key)
        if value is not None and not ok(value):
            out.append(f"config.{key} must be {rule}, got {value!r}")
    for low, high, equal in ORDERS:
        a, b = _get(config, low), _get(config, high)
        if (_is_num(a) and _is_num(b) and math.isfinite(a) and math.isfinite(b)
                and not (a <= b if equal else a < b)):
            out.append(f"config.{low} ({a!r}) must be {'at most' if equal else 'below'} "
                       f"config.{high} ({b!r})")
    return out


def check_values(config):
    """Raise ValueError naming every field whose value cannot be right (see `RULES`)."""
    problems = value_problems(config)
    if problems:
        raise ValueError("; ".join(problems))
    return config
