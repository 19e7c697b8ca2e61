"""Normalisation layers of NCSN (Song & Ermon 2019, App. A) and NCSNv2 (Song & Ermon 2020).

Instance normalisation ++ keeps the information that plain instance norm throws away, the
relative means of the channels:

    mu_c = mean_{h,w} x_c,   mu~_c = (mu_c - mean_c mu_c) / sqrt(var_c mu_c + 1e-5)
    IN++(x)_c = gamma_c * (IN(x)_c + alpha_c mu~_c) + beta_c

(var over channels is the unbiased one, as in the original). NCSN makes gamma, alpha, beta
functions of the noise level (an embedding per level, "conditional"); NCSNv2 makes them plain
parameters and divides the network output by sigma instead.

Parameter names (`alpha`, `gamma`, `beta`, `embed.weight`) are those of score_sde_pytorch.
"""

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

_EPS = 1e-5  # the instance-norm epsilon and the one of the channel-mean standardisation


def standardized_channel_means(x):
    """mu~ of the module docstring: [B, C] channel means of `x` ([B, C, H, W]), standardised
    across channels."""
    means = x.mean(dim=(2, 3))
    m = means.mean(dim=-1, keepdim=True)
    v = means.var(dim=-1, keepdim=True)
    return (means - m) / torch.sqrt(v + _EPS)


def instance_norm_plus(x, alpha):
    """IN(x) + alpha * mu~, before the affine map; `alpha` is [C] or [B, C]."""
    mu = standardized_channel_means(x)
    return F.instance_norm(x, eps=_EPS) + mu[..., None, None] * alpha[..., None, None]


def _affine(h, gamma, beta=None):
    """gamma * h + beta with per-channel gamma, beta of shape [C] or [B, C]."""
    out = gamma[..., None, None] * h
    return out if beta is None else out + beta[..., None, None]


def _variance_normalize(x):
    """x / sqrt(var_{h,w} x + 1e-5) per sample and channel (no mean subtraction)."""
    return x / torch.sqrt(x.var(dim=(2, 3), keepdim=True) + _EPS)


class InstanceNorm2dPlus(nn.Module):
    """IN++ with learned per-channel alpha, gamma (initialised N(1, 0.02)) and beta (zero)."""

    def __init__(self, num_features, bias=True):
        super().__init__()
        self.num_features = num_features
        self.bias = bool(bias)
        self.alpha = nn.Parameter(torch.empty(num_features).normal_(1, 0.02))
        self.gamma = nn.Parameter(torch.empty(num_features).normal_(1, 0.02))
        if self.bias:
            self.beta = nn.Parameter(torch.zeros(num_features))

    def forward(self, x):
        h = instance_norm_plus(x, self.alpha)
        return _affine(h, self.gamma, self.beta if self.bias else None)


class _PerLevelNorm(nn.Module):
    """A normalisation whose scales (`n_scales` per channel) and, with `bias`, shift are looked up
    per noise level y in `embed` [num_classes, (n_scales + bias) C], in that order."""

    def __init__(self, num_features, num_classes, bias, n_scales):
        super().__init__()
        self.num_features = num_features
        self.bias = bool(bias)
        self.n_parts = n_scales + self.bias
        self.embed = nn.Embedding(num_classes, self.n_parts * num_features)

    def parts(self, y):
        """The per-level parameters of labels y [B], each [B, C]."""
        return self.embed(y).chunk(self.n_parts, dim=-1)


class ConditionalInstanceNorm2dPlus(_PerLevelNorm):
    """IN++ whose gamma, alpha, beta are looked up per noise level y: `embed` is
    [num_classes, 3C] laid out (gamma, alpha, beta), or [num_classes, 2C] without bias."""

    def __init__(self, num_features, num_classes, bias=True):
        super().__init__(num_features, num_classes, bias, n_scales=2)
        with torch.no_grad():
            self.embed.weight[:, :2 * num_features].normal_(1, 0.02)
            self.embed.weight[:, 2 * num_features:].zero_()

    def forward(self, x, y):
        gamma, alpha, *beta = self.parts(y)
        return _affine(instance_norm_plus(x, alpha), gamma, *beta)


class ConditionalInstanceNorm2d(_PerLevelNorm):
    """Plain instance norm with gamma (and beta) per noise level: `embed` is [num_classes, 2C]
    (gamma ~ U[0, 1), beta = 0 at init, as in the original) or [num_classes, C]."""

    def __init__(self, num_features, num_classes, bias=True):
        super().__init__(num_features, num_classes, bias, n_scales=1)
        with torch.no_grad():
            self.embed.weight[:, :num_features].uniform_()
            self.embed.weight[:, num_features:].zero_()

    def forward(self, x, y):
        gamma, *beta = self.parts(y)
        return _affine(F.instance_norm(x, eps=_EPS), gamma, *beta)


class VarianceNorm2d(nn.Module):
    """x / std_{h,w}(x), scaled by a learned per-channel alpha ~ N(1, 0.02). No bias (the
    original's `bias` argument is accepted and ignored)."""

    def __init__(self, num_features, bias=False):
        super().__init__()
        self.num_features = num_features
        self.bias = bias
        self.alpha = nn.Parameter(torch.empty(num_features).normal_(1, 0.02))

    def forward(self, x):
        return _affine(_variance_normalize(x), self.alpha)


class ConditionalVarianceNorm2d(nn.Module):
    """VarianceNorm2d with the scale looked up per noise level: `embed` is [num_classes, C]."""

    def __init__(self, num_features, num_classes, bias=False):
        super().__init__()
        self.num_features = num_features
        self.bias = bias
        self.embed = nn.Embedding(num_classes, num_features)
        with torch.no_grad():
            self.embed.weight.normal_(1, 0.02)

    def forward(self, x, y):
        return _affine(_variance_normalize(x), self.embed(y))


_PLAIN = {
    'InstanceNorm': nn.InstanceNorm2d,  # no parameters (affine=False)
    'InstanceNorm++': InstanceNorm2dPlus,
    'VarianceNorm': VarianceNorm2d,
}
_CONDITIONAL = {
    'InstanceNorm': ConditionalInstanceNorm2d,
    'InstanceNorm++': ConditionalInstanceNorm2dPlus,
    'VarianceNorm': ConditionalVarianceNorm2d,
}


def get_normalization(config, conditional=False):
    """The normalisation named by `config.model.normalization`, as a factory `norm(num_features)`.

    conditional=True (NCSN): the layer takes (x, y) with y the noise-level index, and has one
    embedding row per noise level (`config.model.num_scales` of them). conditional=False
    (NCSNv2): the layer takes x only.
    'GroupNorm' belongs to NCSN++/DDPM, which build their own GroupNorm layers; the NCSN family
    cannot use it (the original's NCSN blocks fail with it too)."""
    name = config.model.normalization
    table = _CONDITIONAL if conditional else _PLAIN
    if name not in table:
        raise ValueError(f"config.model.normalization = {name!r} is not available for "
                         f"{'conditional (NCSN)' if conditional else 'NCSNv2'} models; "
                         f"known: {sorted(table)}")
    if conditional:
        return functools.partial(table[name], num_classes=int(config.model.num_scales))
    return table[name]
