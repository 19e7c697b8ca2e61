"""DDPM-style layers (Ho et al. 2020, `diffusion_tf/nn.py`) and their initializers.

Module and parameter names (`GroupNorm_0`, `Conv_0`, `Dense_0`, `NIN_0.W`, ...) follow
score_sde_pytorch so that its checkpoints load unchanged.
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from networks.utils import get_act  # noqa: F401  (re-exported: the original's `layers.get_act`)

_SQRT2 = math.sqrt(2.)


# ----------------------------------------------------------------------------- initializers

def _fans(shape, in_axis=1, out_axis=0):
    receptive = int(np.prod(shape)) / shape[in_axis] / shape[out_axis]
    return shape[in_axis] * receptive, shape[out_axis] * receptive


def variance_scaling(scale, mode, distribution, in_axis=1, out_axis=0, dtype=torch.float32,
                     device=None):
    """JAX's `variance_scaling` initializer: variance scale / fan with fan in {fan_in, fan_out,
    fan_avg}, drawn from a normal or a uniform distribution. Returns `init(shape, dtype, device,
    generator=None) -> Tensor`."""
    if mode not in ('fan_in', 'fan_out', 'fan_avg'):
        raise ValueError(f"invalid mode for variance scaling initializer: {mode!r}")
    if distribution not in ('normal', 'uniform'):
        raise ValueError(f"invalid distribution for variance scaling initializer: {distribution!r}")

    def init(shape, dtype=dtype, device=device, generator=None):
        shape = tuple(shape)
        fan_in, fan_out = _fans(shape, in_axis, out_axis)
        denominator = {'fan_in': fan_in, 'fan_out': fan_out,
                       'fan_avg': (fan_in + fan_out) / 2}[mode]
        variance = scale / denominator
        if distribution == 'normal':
            return torch.randn(shape, dtype=dtype, device=device, generator=generator) * math.sqrt(variance)
        u = torch.rand(shape, dtype=dtype, device=device, generator=generator)
        return (u * 2. - 1.) * math.sqrt(3 * variance)

    return init


def default_init(scale=1.):
    """DDPM's initializer: variance_scaling(scale, 'fan_avg', 'uniform'); scale 0 means 1e-10."""
    return variance_scaling(1e-10 if scale == 0 else scale, 'fan_avg', 'uniform')


def dense(in_features, out_features, init_scale=1.):
    """nn.Linear with DDPM initialization (default_init weight, zero bias)."""
    layer = nn.Linear(in_features, out_features)
    layer.weight.data = default_init(init_scale)(layer.weight.shape)
    nn.init.zeros_(layer.bias)
    return layer


def ddpm_conv1x1(in_planes, out_planes, stride=1, bias=True, init_scale=1., padding=0):
    """1x1 convolution with DDPM initialization."""
    conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=padding, bias=bias)
    conv.weight.data = default_init(init_scale)(conv.weight.shape)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def ddpm_conv3x3(in_planes, out_planes, stride=1, bias=True, dilation=1, init_scale=1., padding=1):
    """3x3 convolution with DDPM initialization."""
    conv = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=padding,
                     dilation=dilation, bias=bias)
    conv.weight.data = default_init(init_scale)(conv.weight.shape)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


# ----------------------------------------------------------------------------- embeddings

def get_timestep_embedding(timesteps, embedding_dim, max_positions=10000):
    """Sinusoidal embedding of (possibly fractional) time labels, [B] -> [B, embedding_dim]
    (Transformer / DDPM): [sin(t w_j), cos(t w_j)] with w_j = max_positions^(-j / (half - 1)),
    zero-padded by one column when embedding_dim is odd. Computed in float32."""
    if timesteps.dim() != 1:
        raise ValueError(f"timesteps must have shape [B], got {tuple(timesteps.shape)}")
    half = embedding_dim // 2
    rate = math.log(max_positions) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=timesteps.device) * -rate)
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if embedding_dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


# ----------------------------------------------------------------------------- building blocks

class NIN(nn.Module):
    """Network-in-network: a per-pixel linear map over channels, y = x^T W + b with W [in, out]."""

    def __init__(self, in_dim, num_units, init_scale=0.1):
        super().__init__()
        self.W = nn.Parameter(default_init(scale=init_scale)((in_dim, num_units)))
        self.b = nn.Parameter(torch.zeros(num_units))

    def forward(self, x):
        return torch.einsum('bchw,co->bohw', x, self.W) + self.b[:, None, None]


def self_attention(x, norm, nin_q, nin_k, nin_v, nin_out, heads=1):
    """Self-attention over the H*W positions of x [B, C, H, W] with `heads` heads of d = C / heads
    channels each (channel c in head c // d): NIN_out(concat_h softmax(q_h k_h^T / sqrt(d)) v_h)
    with q, k, v = NIN_q/k/v(norm(x)) (Vaswani et al. 2017, Sec. 3.2.2; one head as in DDPM and
    NCSN++); the residual is the caller's."""
    B, C, H, W = x.shape
    tokens = norm(x).reshape(B, C, H * W).transpose(1, 2)  # [B, HW, C]
    q, k, v = (F.linear(tokens, m.W.t(), m.b).reshape(B, H * W, heads, C // heads).transpose(1, 2)
               for m in (nin_q, nin_k, nin_v))
    h = F.scaled_dot_product_attention(q, k, v)  # [B, heads, HW, d]; default scale 1/sqrt(d)
    h = F.linear(h.transpose(1, 2).reshape(B, H * W, C), nin_out.W.t(), nin_out.b)
    return h.transpose(1, 2).reshape(B, C, H, W)


class AttnBlock(nn.Module):
    """DDPM self-attention block with a residual connection: x + attention(x)."""

    def __init__(self, channels):
        super().__init__()
        self.GroupNorm_0 = nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=0.)

    def forward(self, x):
        return x + self_attention(x, self.GroupNorm_0, self.NIN_0, self.NIN_1, self.NIN_2, self.NIN_3)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 convolution."""

    def __init__(self, channels, with_conv=False):
        super().__init__()
        if with_conv:
            self.Conv_0 = ddpm_conv3x3(channels, channels)
        self.with_conv = with_conv

    def forward(self, x):
        h = F.interpolate(x, scale_factor=2, mode='nearest')
        return self.Conv_0(h) if self.with_conv else h


class Downsample(nn.Module):
    """2x downsampling: a stride-2 3x3 convolution with TF 'SAME' padding (one row/column of zeros
    at the bottom/right), or 2x2 average pooling."""

    def __init__(self, channels, with_conv=False):
        super().__init__()
        if with_conv:
            self.Conv_0 = ddpm_conv3x3(channels, channels, stride=2, padding=0)
        self.with_conv = with_conv

    def forward(self, x):
        if self.with_conv:
            return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


def residual_sum(x, h, skip_rescale=False):
    """x + h, divided by sqrt(2) when `skip_rescale` (keeps the variance of the sum)."""
    return (x + h) / _SQRT2 if skip_rescale else x + h


def ddpm_group_norm(channels):
    """DDPM's GroupNorm: 32 groups, eps 1e-6."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6)


def add_residual_layers(block, norm, in_ch, out_ch, temb_dim, dropout, init_scale, in_norm=None):
    """The layers of every DDPM-style residual block, under the original's names: GroupNorm_0
    (`in_norm` when given, else `norm`), Conv_0 (3x3, in_ch -> out_ch), Dense_0 (from the time
    embedding, when `temb_dim`), GroupNorm_1, Dropout_0, Conv_1 (3x3, `init_scale`)."""
    block.GroupNorm_0 = (in_norm or norm)(in_ch)
    block.Conv_0 = ddpm_conv3x3(in_ch, out_ch)
    if temb_dim is not None:
        block.Dense_0 = dense(temb_dim, out_ch)
    block.GroupNorm_1 = norm(out_ch)
    block.Dropout_0 = nn.Dropout(dropout)
    block.Conv_1 = ddpm_conv3x3(out_ch, out_ch, init_scale=init_scale)


def residual_branch_tail(block, h, temb):
    """The residual branch after Conv_0: + Dense_0(act(temb)), then Conv_1(Dropout(act(GN(h))))."""
    if temb is not None:
        h = h + block.Dense_0(block.act(temb))[:, :, None, None]
    return block.Conv_1(block.Dropout_0(block.act(block.GroupNorm_1(h))))


class ResnetBlockDDPM(nn.Module):
    """DDPM residual block: x' + Conv(Dropout(act(GN(Conv(act(GN(x))) + Dense(act(temb)))))),
    with x' = x, or a NIN / 3x3 conv projection when the channel count changes.

    `norm` (channels -> GroupNorm; DDPM's 32 groups by default), `init_scale` of the last conv
    and `skip_rescale` (the sum divided by sqrt(2)) are NCSN++'s variations (layerspp)."""

    def __init__(self, act, in_ch, out_ch=None, temb_dim=None, conv_shortcut=False, dropout=0.1,
                 *, norm=ddpm_group_norm, init_scale=0., skip_rescale=False, in_norm=None):
        super().__init__()
        out_ch = out_ch or in_ch
        add_residual_layers(self, norm, in_ch, out_ch, temb_dim, dropout, init_scale, in_norm)
        self.act = act
        if in_ch != out_ch:
            if conv_shortcut:
                self.Conv_2 = ddpm_conv3x3(in_ch, out_ch)
            else:
                self.NIN_0 = NIN(in_ch, out_ch)
        self.in_ch, self.out_ch = in_ch, out_ch
        self.conv_shortcut = conv_shortcut
        self.skip_rescale = skip_rescale

    def forward(self, x, temb=None):
        if x.shape[1] != self.in_ch:
            raise ValueError(f"{type(self).__name__} expects {self.in_ch} channels, got "
                             f"{x.shape[1]}")
        h = residual_branch_tail(self, self.Conv_0(self.act(self.GroupNorm_0(x))), temb)
        if self.in_ch != self.out_ch:
            x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
        return residual_sum(x, h, self.skip_rescale)
