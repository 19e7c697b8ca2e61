"""Sizes from configs and files, checked before anything is allocated.

A config (typed by a user, read from a checkpoint or translated from a diffusers config.json) says
how large a network is. `check_model_config` checks the fields that size it (positive whole
numbers) and a lower bound on the memory the network needs (its weights, and one image's feature maps
through its widest layer) against the memory of the machine, and refuses with one line naming
the field; `check_against_weights` refuses a config whose network has more weights than a weights
file holds, before the network is built (the file's shapes are then compared one by one with the
built network's, `networks.checkpoint.state_mismatches`). Only lower bounds are refused: a
config that might fit is never turned away.

Why bounds and not a build on PyTorch's meta device: in this PyTorch the first meta-device
operation imports about 800 modules (3 s on an idle machine, 12 s on a busy one), which every
checkpoint load would pay; the bounds cost microseconds and catch every request that cannot fit.
"""

import math
import os

import torch

# The fields that set a network's size (the other values are checked with the config:
# `configs.check_values`).
_SIZE_INTS = ('model.nf', 'model.num_res_blocks', 'model.num_scales', 'data.image_size',
              'data.num_channels')
_SIZE_LISTS = ('model.ch_mult',)

# Per-field reference values: the largest of the published configs. The field whose reset to
# its reference shrinks an oversized estimate most is the one an error names.
_REFERENCE = {'model.nf': 256, 'model.num_res_blocks': 8, 'model.num_scales': 4000,
              'data.image_size': 1024, 'data.num_channels': 4, 'model.ch_mult': 4,
              'levels': 8, 'batch': 512}
_FLOAT32 = 4
_SDE_ARRAYS = 8  # float64 arrays of num_scales entries that a network and its SDE may hold


class ModelConfigError(ValueError):
    """A config value that cannot describe a network here: `field` (dotted, as in the config),
    `value`, and the reason."""

    def __init__(self, field, value, reason, prefix='config.'):
        self.field, self.value, self.reason = field, value, reason
        super().__init__(f"{prefix}{field} = {value!r}: {reason}")

    def renamed(self, names, prefix, source):
        """The same error with the field named as the source calls it (`names`: {dotted
        toolkit field: source field}, `source`: {source field: value}), e.g. a diffusers
        config.json's keys."""
        field = names.get(self.field, self.field)
        return ModelConfigError(field, source.get(field, self.value), self.reason, prefix)


def whole(field, value, minimum=1, prefix='config.'):
    """`value` as an int, or a ModelConfigError unless it is a whole number >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
        raise ModelConfigError(field, value, "must be a whole number", prefix)
    if value < minimum:
        raise ModelConfigError(field, value, f"must be at least {minimum}", prefix)
    return int(value)


def whole_list(field, value, prefix='config.'):
    """A non-empty list of positive whole numbers as a tuple, or a ModelConfigError."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, '__iter__'):
        raise ModelConfigError(field, value, "must be a list of whole numbers", prefix)
    out = tuple(whole(f"{field}[{i}]", v, prefix=prefix) for i, v in enumerate(value))
    if not out:
        raise ModelConfigError(field, value, "must not be empty", prefix)
    return out


def _values(config):
    """{dotted field: checked value} of the size fields `config` has."""
    out = {}
    for key in _SIZE_INTS + _SIZE_LISTS:
        section, name = key.split('.')
        part = config.get(section, None)
        if part is None or name not in part:
            continue
        value = part.get(name)
        out[key] = whole_list(key, value) if key in _SIZE_LISTS else whole(key, value)
    return out


def lower_bounds(v):
    """(weights, sde_bytes, image_bytes) that a network of checked size values `v` needs at
    least: `weights`, a count: one 3x3 convolution from each level's width to itself per residual
    block on the way down and up (9 C^2 each); `sde_bytes`: the num_scales-long float64 arrays of
    the network and its SDE; `image_bytes`: for one image, two float32 feature maps of the
    widest level at its resolution (a layer's input and output)."""
    nf = v.get('model.nf', 1)
    mult = v.get('model.ch_mult', (1,))
    blocks = v.get('model.num_res_blocks', 1)
    size = v.get('data.image_size', 1)
    weights = sum((2 * blocks + 1) * 9 * (nf * c) ** 2 for c in mult)
    sde_bytes = v.get('model.num_scales', 0) * 8 * _SDE_ARRAYS
    widest = max(nf * c * (size // 2 ** i) ** 2 for i, c in enumerate(mult))
    return weights, sde_bytes, 2 * widest * _FLOAT32


def _need(v, batch, copies, factor):
    """Bytes: `copies` float32 copies of the weights, the SDE's arrays, and the feature maps of
    `batch` images (`factor` 2 keeps them for a backward pass)."""
    weights, sde_bytes, image_bytes = lower_bounds(v)
    return copies * weights * _FLOAT32 + sde_bytes + factor * batch * image_bytes


def _blame(v, measure):
    """The size field whose reset to its reference value shrinks `measure(v)` most."""
    best, best_value = None, measure(v)
    for field in v:
        if field == 'model.ch_mult':
            ref = _REFERENCE['model.ch_mult']
            trial = tuple(min(c, ref) for c in v[field][:_REFERENCE['levels']])
        elif field in _REFERENCE:
            trial = min(v[field], _REFERENCE[field])
        else:
            continue
        value = measure(dict(v, **{field: trial}))
        if value < best_value:
            best, best_value = field, value
    return best or 'model.nf'


def available_bytes(device=None):
    """The memory a network on `device` can use: the GPU's total memory for a CUDA device, else
    the machine's physical memory plus swap (Linux /proc/meminfo, else sysconf)."""
    device = torch.device(device) if device is not None else torch.device('cpu')
    if device.type == 'cuda' and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device.index or 0).total_memory
    try:
        with open('/proc/meminfo') as f:
            info = {line.split(':')[0]: int(line.split()[1]) * 1024 for line in f
                    if line.split()[1:2] and line.split()[1].isdigit()}
        return info['MemTotal'] + info.get('SwapTotal', 0)
    except (OSError, KeyError, ValueError):
        try:
            return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
        except (ValueError, OSError, AttributeError):
            return None


def _gb(n):
    return f"{n / 2 ** 30:.3g} GiB"


def check_model_config(config, *, device=None, batch=1, copies=1, grad=False, what='the network',
                       batch_field='batch'):
    """Check the fields that size `config`'s network before anything is built (positive whole
    numbers: model.nf, num_res_blocks, num_scales, ch_mult, data.image_size, num_channels), then
    that a lower bound on the memory it needs fits the memory of `device` (`available_bytes`):
    `copies` copies of the weights (e.g. 5 to train: weights, gradients, EMA, Adam's two
    moments), the SDE's arrays, and the feature maps of `batch` images (kept for the backward
    pass when `grad`; `batch_field` names it). Raises ModelConfigError naming the field that
    makes it too large.
    Returns the lower bound in bytes."""
    v = _values(config)
    factor = 2 if grad else 1
    total = _need(v, batch, copies, factor)
    limit = available_bytes(device)
    if limit is not None and total > limit:
        if factor * batch * lower_bounds(v)[2] > limit and batch > 1 and \
                factor * lower_bounds(v)[2] <= limit / 2:
            field, value = batch_field, batch  # one image fits: the batch is too large
        else:
            field = _blame(v, lambda trial: _need(trial, batch, copies, factor))
            value = v[field]
        where = f"on {device}" if device is not None and str(device) != 'cpu' else 'here'
        for_batch = f" for a batch of {batch}" if batch > 1 else ""
        raise ModelConfigError(field, value, f"{what} would need at least {_gb(total)}"
                                             f"{for_batch}, more than the {_gb(limit)} of "
                                             f"memory {where}")
    return total


def check_against_weights(config, count, what='the checkpoint'):
    """Refuse, before building anything, a config whose network has more weights than the
    `count` values a weights file holds: the file cannot fill it (names the field)."""
    v = _values(config)
    weights = lower_bounds(v)[0]
    if weights > count:
        field = _blame(v, lambda trial: lower_bounds(trial)[0])
        raise ModelConfigError(field, v[field], f"the network has at least {weights:.3g} "
                                                f"weights, but {what} holds {count:.3g}")


def state_count(state):
    """The number of values in a state dict's tensors (what a weights file holds)."""
    return sum(t.numel() for t in state.values() if torch.is_tensor(t))
