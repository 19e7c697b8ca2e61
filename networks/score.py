"""From a trained network to the score s(x, t) = grad_x log p_t(x): the conventions, in one place.

A score network is trained on one SDE with one time parameterisation, and its raw output means
something different for each. `ScoreFunction` applies the same conventions as score_sde_pytorch
(`models/utils.py:get_score_fn`), so the published checkpoints give the published numbers. The
SDE says which family of noise labels its networks take (`sde.noise_labels`) and, for a
discrete model, its label rule (`sde.discrete_label`, `sde.discrete_kernel`):

    labels   continuous   label fed to the net            score               e.g.
    'time'   True         999 t / T                       -net / sigma(t)     VP, sub-VP, cosine VP
    'time'   False        (N - 1) t / T (DDPM)            -net / sqrt(1 - abar_i),
                                                          i = floor((N - 1) t / T)      VP
    'sigma'  True         sigma(t)                        net                 VE, EDM
    'sigma'  False        round((T - t)(N - 1) / T) (SMLD, long)   net        VE

An SDE without a discrete model (sub-VP, cosine VP, EDM) always uses the continuous convention.
sigma(t) is the std of the perturbation kernel (`sde.sigma`). 'time' networks predict the noise
z of x_t = alpha x_0 + sigma z (DDPM's epsilon), so score = -z / sigma; 999 t / T puts
continuous time on DDPM's 1000-step label scale. 'sigma' networks output the score itself
(NCSN++ with `scale_by_sigma` and NCSNv2 divide by sigma inside); discrete SMLD labels index the
noise levels from the largest (i = 0 at t = T) to the smallest (i = N - 1 at t = 0).

The network's train/eval mode is left as it is: callers choose it (training needs dropout on,
sampling off).

`precision='bf16'` (or 'fp16') runs the network under torch.autocast and nothing else: the
labels and the division by sigma are computed in fp32 and the score comes back in x's dtype, so
a sampler's state stays fp32 (`networks.runtime`). `channels_last=True` feeds the network NHWC.
"""

import torch

from networks.runtime import call_network, canonical_precision

NOISE_LABELS = ('sigma', 'time')
# Continuous time labels of 'time'-family networks: t / T on DDPM's 1000-step scale (the
# original's 999 t).
TIME_LABEL_SCALE = 999


class ScoreFunction:
    """score_fn(x, t) for `model` trained on `sde` (see the module table). `t` is a float
    tensor of shape [B] in [0, T]; the result has the shape (and dtype) of `x`. `precision`
    and `channels_last`: how the network runs (see the module docstring)."""

    def __init__(self, sde, model, continuous=True, precision='fp32', channels_last=False):
        if getattr(sde, "noise_labels", None) not in NOISE_LABELS:
            raise TypeError(f"get_score_fn needs an SDE whose noise_labels is one of "
                            f"{NOISE_LABELS}, not {type(sde).__name__}: its network convention "
                            f"is unknown")
        self.sde = sde
        self.model = model
        self.continuous = bool(continuous)
        self.precision = canonical_precision(precision)
        self.channels_last = bool(channels_last)

    @property
    def discrete(self):
        """Whether the network takes the SDE's discrete labels (continuous=False and the SDE
        has a discrete model)."""
        return not self.continuous and self.sde.discrete_model is not None

    def noise_labels(self, x, t):
        """The conditioning input the network receives for times `t` ([B])."""
        sde = self.sde
        if self.discrete:
            return sde.discrete_label(t)
        if sde.noise_labels == 'time':
            return t * (TIME_LABEL_SCALE / sde.T)
        return sde.sigma(t)

    def noise_std(self, x, t, labels):
        """sigma ([B]) the 'time'-family network output is divided by (score = -net / sigma);
        None for the 'sigma' family, whose network outputs the score."""
        sde = self.sde
        if sde.noise_labels == 'sigma':
            return None
        if self.discrete:
            return sde.discrete_kernel(labels.long())[1]
        return sde.sigma(t)

    def __call__(self, x, t):
        if not torch.is_tensor(x) or x.dim() < 1:
            raise ValueError(f"x must be a tensor of shape [B, ...], got "
                             f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        self.sde.check_time(x, t)
        labels = self.noise_labels(x, t)
        out = call_network(self.model, x, labels, self.precision, self.channels_last)
        if out.shape != x.shape:
            raise ValueError(f"the network returned shape {tuple(out.shape)} for input "
                             f"{tuple(x.shape)}")
        std = self.noise_std(x, t, labels)
        if std is None:
            return out
        return -out / std.view(-1, *([1] * (x.dim() - 1)))

    def __repr__(self):
        extra = ''
        if self.precision != 'fp32' or self.channels_last:
            extra = f", precision={self.precision!r}, channels_last={self.channels_last}"
        return (f"ScoreFunction({type(self.sde).__name__}, {type(self.model).__name__}, "
                f"continuous={self.continuous}{extra})")


def get_score_fn(sde, model, continuous=True, *, precision='fp32', channels_last=False):
    """score_fn(x, t) = grad_x log p_t(x) from `model` trained on `sde`, with the original's
    label and scaling conventions (`continuous`: the model was trained in continuous time; an
    SDE without a discrete model, e.g. sub-VP, always uses the continuous convention). Raises
    TypeError for an SDE that declares no noise-label family.
    precision: 'fp32', or 'bf16'/'fp16' to run the network under autocast (the rest in fp32);
    channels_last: NHWC input. `RuntimeOptions.score_options()` gives both from a config."""
    return ScoreFunction(sde, model, continuous=continuous, precision=precision,
                         channels_last=channels_last)
