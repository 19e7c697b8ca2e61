"""NCSN++ / DDPM++ layers (Song et al. 2021, App. H): Fourier noise embedding, skip combiner,
attention with optional 1/sqrt(2) rescaling, FIR resampling and the DDPM / BigGAN residual blocks.

Module and parameter names follow score_sde_pytorch so that its checkpoints load unchanged.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from networks import up_or_down_sampling as resample
from networks.layers import NIN, ddpm_conv1x1, ddpm_conv3x3, default_init, dense, self_attention

conv1x1 = ddpm_conv1x1
conv3x3 = ddpm_conv3x3

_SQRT2 = math.sqrt(2.)


def residual_sum(x, h, skip_rescale):
    """x + h, divided by sqrt(2) when `skip_rescale` (keeps the variance of the sum)."""
    return (x + h) / _SQRT2 if skip_rescale else x + h


def group_norm(channels):
    """The NCSN++ GroupNorm: min(C // 4, 32) groups, eps 1e-6."""
    return nn.GroupNorm(num_groups=min(channels // 4, 32), num_channels=channels, eps=1e-6)


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar s: [sin(2 pi s W), cos(2 pi s W)], W ~ N(0, scale^2),
    fixed (not trained). [B] -> [B, 2 * embedding_size]; NCSN++ feeds s = log sigma."""

    def __init__(self, embedding_size=256, scale=1.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, x):
        proj = x[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class Combine(nn.Module):
    """Merge a skip input x into y: Conv1x1(x) concatenated with y ('cat') or added to it ('sum')."""

    def __init__(self, dim1, dim2, method='cat'):
        super().__init__()
        if method not in ('cat', 'sum'):
            raise ValueError(f"Combine method must be 'cat' or 'sum', got {method!r}")
        self.Conv_0 = conv1x1(dim1, dim2)
        self.method = method

    def forward(self, x, y):
        h = self.Conv_0(x)
        return torch.cat([h, y], dim=1) if self.method == 'cat' else h + y


class AttnBlockpp(nn.Module):
    """Self-attention over pixels with a residual connection, optionally rescaled by 1/sqrt(2)."""

    def __init__(self, channels, skip_rescale=False, init_scale=0.):
        super().__init__()
        self.GroupNorm_0 = group_norm(channels)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x):
        h = self_attention(x, self.GroupNorm_0, self.NIN_0, self.NIN_1, self.NIN_2, self.NIN_3)
        return residual_sum(x, h, self.skip_rescale)


def _fir_conv(in_ch, out_ch, fir_kernel, up=False, down=False):
    return resample.Conv2d(in_ch, out_ch, kernel=3, up=up, down=down, resample_kernel=fir_kernel,
                           use_bias=True, kernel_init=default_init())


class Upsample(nn.Module):
    """2x upsampling: nearest neighbour (+ 3x3 conv) or FIR (`fir`, optionally fused with a 3x3
    conv); `out_ch` defaults to `in_ch`."""

    def __init__(self, in_ch=None, out_ch=None, with_conv=False, fir=False, fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv:
            if fir:
                self.Conv2d_0 = _fir_conv(in_ch, out_ch, fir_kernel, up=True)
            else:
                self.Conv_0 = conv3x3(in_ch, out_ch)
        self.fir, self.with_conv = fir, with_conv
        self.fir_kernel = tuple(fir_kernel)
        self.out_ch = out_ch
        if fir and not with_conv:
            self.register_buffer('fir_up', resample.prepare_kernel(fir_kernel, 2, up=True),
                                 persistent=False)

    def forward(self, x):
        if self.fir:
            if self.with_conv:
                return self.Conv2d_0(x)
            return resample.upsample_2d(x, kernel=self.fir_up)
        h = F.interpolate(x, scale_factor=2, mode='nearest')
        return self.Conv_0(h) if self.with_conv else h


class Downsample(nn.Module):
    """2x downsampling: stride-2 3x3 conv with 'SAME' padding or average pooling, or FIR (`fir`,
    optionally fused with a stride-2 3x3 conv); `out_ch` defaults to `in_ch`."""

    def __init__(self, in_ch=None, out_ch=None, with_conv=False, fir=False, fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv:
            if fir:
                self.Conv2d_0 = _fir_conv(in_ch, out_ch, fir_kernel, down=True)
            else:
                self.Conv_0 = conv3x3(in_ch, out_ch, stride=2, padding=0)
        self.fir, self.with_conv = fir, with_conv
        self.fir_kernel = tuple(fir_kernel)
        self.out_ch = out_ch
        if fir and not with_conv:
            self.register_buffer('fir_down', resample.prepare_kernel(fir_kernel, 2), persistent=False)

    def forward(self, x):
        if self.fir:
            if self.with_conv:
                return self.Conv2d_0(x)
            return resample.downsample_2d(x, kernel=self.fir_down)
        if self.with_conv:
            return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2, stride=2)


class ResnetBlockDDPMpp(nn.Module):
    """DDPM residual block with NCSN++ group counts and optional 1/sqrt(2) skip rescaling."""

    def __init__(self, act, in_ch, out_ch=None, temb_dim=None, conv_shortcut=False, dropout=0.1,
                 skip_rescale=False, init_scale=0.):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = dense(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch:
            if conv_shortcut:
                self.Conv_2 = conv3x3(in_ch, out_ch)
            else:
                self.NIN_0 = NIN(in_ch, out_ch)
        self.skip_rescale = skip_rescale
        self.act = act
        self.in_ch, self.out_ch = in_ch, out_ch
        self.conv_shortcut = conv_shortcut

    def forward(self, x, temb=None):
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.in_ch != self.out_ch:
            x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
        return residual_sum(x, h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-style residual block (Brock et al. 2019) whose resampling (`up` / `down` by 2, FIR or
    naive) happens inside the block, on both the residual and the shortcut path."""

    def __init__(self, act, in_ch, out_ch=None, temb_dim=None, up=False, down=False, dropout=0.1,
                 fir=False, fir_kernel=(1, 3, 3, 1), skip_rescale=True, init_scale=0.):
        super().__init__()
        if up and down:
            raise ValueError("ResnetBlockBigGANpp: up and down cannot both be set")
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch)
        self.up, self.down = up, down
        self.fir = fir
        self.fir_kernel = tuple(fir_kernel)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = dense(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        self.has_shortcut = in_ch != out_ch or up or down
        if self.has_shortcut:
            self.Conv_2 = conv1x1(in_ch, out_ch)
        self.skip_rescale = skip_rescale
        self.act = act
        self.in_ch, self.out_ch = in_ch, out_ch
        if fir and (up or down):
            self.register_buffer('fir_resample', resample.prepare_kernel(fir_kernel, 2, up=up),
                                 persistent=False)

    def _resample(self, x):
        if self.up:
            if self.fir:
                return resample.upsample_2d(x, kernel=self.fir_resample)
            return resample.naive_upsample_2d(x, factor=2)
        if self.down:
            if self.fir:
                return resample.downsample_2d(x, kernel=self.fir_resample)
            return resample.naive_downsample_2d(x, factor=2)
        return x

    def forward(self, x, temb=None):
        h = self._resample(self.act(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.has_shortcut:
            x = self.Conv_2(x)
        return residual_sum(x, h, self.skip_rescale)
