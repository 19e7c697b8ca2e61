"""Exponential moving average of model weights (NCSNv2 Technique 5; used by every score_sde model).

After each optimiser step, every trainable parameter's shadow copy moves towards it:

    shadow <- shadow - (1 - d) (shadow - theta),   d = min(decay, (1 + n) / (10 + n))

with n the number of updates so far (counting n is optional; without it d = decay). The warm-up
d = (1 + n) / (10 + n) is TensorFlow's `ExponentialMovingAverage(num_updates=...)`, which the
original follows. Only parameters with `requires_grad` are averaged, in `parameters()` order;
`state_dict()` is the original's {'decay', 'num_updates', 'shadow_params'}, so EMA states of
score_sde_pytorch checkpoints load unchanged.
"""

import torch


def _trainable(parameters):
    return [p for p in parameters if p.requires_grad]


class ExponentialMovingAverage:
    """Shadow copies of the trainable parameters in `parameters`, averaged with `decay`."""

    def __init__(self, parameters, decay, use_num_updates=True):
        decay = float(decay)
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        self.decay = decay
        self.num_updates = 0 if use_num_updates else None
        self.shadow_params = [p.detach().clone() for p in _trainable(parameters)]
        self.collected_params = []

    def _matched(self, parameters):
        params = _trainable(parameters)
        if len(params) != len(self.shadow_params):
            raise ValueError(f"EMA holds {len(self.shadow_params)} shadow parameters but got "
                             f"{len(params)} trainable parameters")
        return params

    def current_decay(self):
        """The decay d the next `update` will use (without counting it)."""
        if self.num_updates is None:
            return self.decay
        n = self.num_updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, parameters):
        """One averaging step towards `parameters` (call after each optimiser step)."""
        params = self._matched(parameters)
        decay = self.current_decay()
        if self.num_updates is not None:
            self.num_updates += 1
        one_minus_decay = 1.0 - decay
        for shadow, param in zip(self.shadow_params, params):
            shadow.sub_(one_minus_decay * (shadow - param))

    @torch.no_grad()
    def copy_to(self, parameters):
        """Overwrite the trainable `parameters` with the averaged values."""
        for shadow, param in zip(self.shadow_params, self._matched(parameters)):
            param.copy_(shadow)

    def store(self, parameters):
        """Keep a copy of (all) `parameters`, to put back with `restore` after `copy_to`."""
        self.collected_params = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters):
        """Put back the parameters saved by `store`."""
        parameters = list(parameters)
        if len(parameters) != len(self.collected_params):
            raise ValueError(f"restore: {len(self.collected_params)} stored parameters, got "
                             f"{len(parameters)} (call store() first with the same parameters)")
        for saved, param in zip(self.collected_params, parameters):
            param.copy_(saved)

    def to(self, device=None, dtype=None):
        """Move the shadow parameters (floating-point ones keep their dtype unless given)."""
        self.shadow_params = [s.to(device=device, dtype=dtype if s.is_floating_point() else None)
                              for s in self.shadow_params]
        return self

    def state_dict(self):
        return dict(decay=self.decay, num_updates=self.num_updates,
                    shadow_params=self.shadow_params)

    def load_state_dict(self, state_dict):
        """Load an EMA state (this class's or the original's). When this EMA already tracks
        parameters, the loaded shadow parameters must match them in number and shapes; they are
        copied in place, keeping this EMA's devices and dtypes."""
        missing = {'decay', 'num_updates', 'shadow_params'} - set(state_dict)
        if missing:
            raise ValueError(f"EMA state lacks {sorted(missing)}")
        shadow = list(state_dict['shadow_params'])
        if not all(torch.is_tensor(s) for s in shadow):
            raise ValueError("EMA state: shadow_params must be a list of tensors")
        if self.shadow_params:
            problems = shadow_mismatches(shadow, [s.shape for s in self.shadow_params])
            if problems:
                raise ValueError("EMA state does not fit the parameters: " + "; ".join(problems))
            with torch.no_grad():
                for dst, src in zip(self.shadow_params, shadow):
                    dst.copy_(src)
        else:
            self.shadow_params = [s.detach().clone() for s in shadow]
        decay = float(state_dict['decay'])
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA state: decay must lie in [0, 1], got {decay}")
        self.decay = decay
        n = state_dict['num_updates']
        self.num_updates = None if n is None else int(n)


def shadow_mismatches(shadow_params, shapes, names=None):
    """Messages for where `shadow_params` does not fit parameters of `shapes` (count, then
    each mismatched shape, at most 10); `names` labels the parameters. Empty when they fit."""
    if len(shadow_params) != len(shapes):
        return [f"{len(shadow_params)} shadow parameters for {len(shapes)} trainable parameters"]
    out = []
    for i, (s, shape) in enumerate(zip(shadow_params, shapes)):
        if tuple(s.shape) != tuple(shape):
            label = names[i] if names else f"#{i}"
            out.append(f"shadow parameter {i} ({label}) has shape {tuple(s.shape)}, "
                       f"expected {tuple(shape)}")
    if len(out) > 10:
        out = out[:10] + [f"... and {len(out) - 10} more mismatched shapes"]
    return out
