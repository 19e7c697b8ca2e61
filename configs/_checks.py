"""Value checks of a config, made before any work: a field that cannot be right (a negative batch
size, an infinite sigma_max, a learning rate of -1) is one error naming the field, its value and
the rule, instead of a failure deep inside torch or a NaN loss at step 0.

Only the fields listed here are checked, and only where the config has them; each rule says what
the code that reads the field needs.
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

RULES = {
    "training.batch_size": _POSITIVE_INT,
    "training.n_iters": _POSITIVE_INT,
    "training.snapshot_freq": _NONNEG_INT,
    "training.snapshot_freq_for_preemption": _NONNEG_INT,
    "training.log_freq": _NONNEG_INT,
    "training.eval_freq": _NONNEG_INT,
    "training.grad_accum": _POSITIVE_INT,
    "training.eps": _POSITIVE,
    "sampling.snr": _POSITIVE,
    "sampling.n_steps_each": _NONNEG_INT,
    "sampling.steps": _POSITIVE_INT,
    "eval.batch_size": _POSITIVE_INT,
    "eval.num_samples": _POSITIVE_INT,
    "eval.bpd_num_repeats": _POSITIVE_INT,
    "data.image_size": _POSITIVE_INT,
    "data.num_channels": _POSITIVE_INT,
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
    "optim.lr": _POSITIVE,
    "optim.beta1": _OPEN_FRACTION,
    "optim.eps": _POSITIVE,
    "optim.weight_decay": _NONNEG,
    "optim.warmup": _NONNEG_INT,
    "optim.grad_clip": _FINITE,
}

# (smaller, larger): the first must be below the second
ORDERS = (("model.sigma_min", "model.sigma_max"), ("model.beta_min", "model.beta_max"))


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _get(config, key):
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
    mult = _get(config, "model.ch_mult")
    if mult is not None and (not isinstance(mult, (list, tuple)) or not mult
                             or not all(_is_int(m) and m > 0 for m in mult)):
        out.append(f"config.model.ch_mult must be a non-empty tuple of positive integers, "
                   f"got {mult!r}")
    for low, high in ORDERS:
        a, b = _get(config, low), _get(config, high)
        if _is_num(a) and _is_num(b) and math.isfinite(a) and math.isfinite(b) and not a < b:
            out.append(f"config.{low} ({a!r}) must be below config.{high} ({b!r})")
    return out


def check_values(config):
    """Raise ValueError naming every field whose value cannot be right (see `RULES`)."""
    problems = value_problems(config)
    if problems:
        raise ValueError("; ".join(problems))
    return config
