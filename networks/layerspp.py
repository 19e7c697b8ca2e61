"""NCSN++ / DDPM++ layers (Song et al. 2021, App. H): Fourier noise embedding, skip combiner,
attention with optional 1/sqrt(2) rescaling, FIR resampling and the DDPM / BigGAN residual blocks.

Module and parameter names follow score_sde_pytorch so that its checkpoints load unchanged.
"""

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from networks import up_or_down_sampling as resample
from networks.layers import (NIN, ResnetBlockDDPM, add_residual_layers, ddpm_conv1x1, ddpm_conv3x3,
                             default_init, residual_branch_tail, residual_sum, self_attention)

conv1x1 = ddpm_conv1x1
conv3x3 = ddpm_conv3x3


def group_norm(channels, groups=None):
    """The NCSN++ GroupNorm: min(C // 4, 32) groups unless `groups` says otherwise, eps 1e-6."""
    groups = min(channels // 4, 32) if groups is None else groups
    if groups < 1 or channels % groups:
        raise ValueError(f"GroupNorm: {groups} groups do not divide {channels} channels")
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6)


def _groups_norm(groups):
    """A GroupNorm factory with a fixed group count (None: NCSN++'s rule)."""
    return None if groups is None else functools.partial(group_norm, groups=groups)


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
    """Self-attention over pixels with a residual connection, optionally rescaled by 1/sqrt(2);
    `heads` attention heads (one in NCSN++), a GroupNorm of `groups` groups (default NCSN++'s
    min(C // 4, 32))."""

    def __init__(self, channels, skip_rescale=False, init_scale=0., heads=1, groups=None):
        super().__init__()
        if heads < 1 or channels % heads:
            raise ValueError(f"{heads} attention heads do not divide {channels} channels")
        self.GroupNorm_0 = group_norm(channels, groups)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale
        self.heads = heads

    def forward(self, x):
        h = self_attention(x, self.GroupNorm_0, self.NIN_0, self.NIN_1, self.NIN_2, self.NIN_3,
                           heads=self.heads)
        return residual_sum(x, h, self.skip_rescale)


def _fir_conv(in_ch, out_ch, fir_kernel, up=False, down=False):
    return resample.Conv2d(in_ch, out_ch, kernel=3, up=up, down=down, resample_kernel=fir_kernel,
                           use_bias=True, kernel_init=default_init())


class _Resample(nn.Module):
    """2x up- or downsampling, shared by Upsample and Downsample: nearest neighbour / average
    pooling, a 3x3 conv (stride 2 with 'SAME' padding going down), or FIR (`fir`, optionally fused
    with the conv: `Conv2d_0`); `out_ch` defaults to `in_ch`."""

    def __init__(self, in_ch, out_ch, with_conv, fir, fir_kernel, up):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv:
            if fir:
                self.Conv2d_0 = _fir_conv(in_ch, out_ch, fir_kernel, up=up, down=not up)
            else:  # stride-2 'SAME' conv when going down (the input is padded in forward)
                self.Conv_0 = (conv3x3(in_ch, out_ch) if up else
                               conv3x3(in_ch, out_ch, stride=2, padding=0))
        self.up, self.fir, self.with_conv = up, fir, with_conv
        self.fir_kernel = tuple(fir_kernel)
        self.out_ch = out_ch
        if fir and not with_conv:
            self.register_buffer('fir_resample', resample.prepare_kernel(fir_kernel, 2, up=up),
                                 persistent=False)

    def forward(self, x):
        if self.fir:
            if self.with_conv:
                return self.Conv2d_0(x)
            fir = resample.upsample_2d if self.up else resample.downsample_2d
            return fir(x, kernel=self.fir_resample)
        if self.up:
            h = F.interpolate(x, scale_factor=2, mode='nearest')
            return self.Conv_0(h) if self.with_conv else h
        if self.with_conv:
            return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2, stride=2)


class Upsample(_Resample):
    """2x upsampling: nearest neighbour (+ 3x3 conv) or FIR (`fir`, optionally fused with a 3x3
    conv); `out_ch` defaults to `in_ch`."""

    def __init__(self, in_ch=None, out_ch=None, with_conv=False, fir=False, fir_kernel=(1, 3, 3, 1)):
        super().__init__(in_ch, out_ch, with_conv, fir, fir_kernel, up=True)


class Downsample(_Resample):
    """2x downsampling: stride-2 3x3 conv with 'SAME' padding or average pooling, or FIR (`fir`,
    optionally fused with a stride-2 3x3 conv); `out_ch` defaults to `in_ch`."""

    def __init__(self, in_ch=None, out_ch=None, with_conv=False, fir=False, fir_kernel=(1, 3, 3, 1)):
        super().__init__(in_ch, out_ch, with_conv, fir, fir_kernel, up=False)


class ResnetBlockDDPMpp(ResnetBlockDDPM):
    """DDPM residual block with NCSN++ group counts (`group_norm`; `in_groups` for the first
    GroupNorm) and optional 1/sqrt(2) skip rescaling."""

    def __init__(self, act, in_ch, out_ch=None, temb_dim=None, conv_shortcut=False, dropout=0.1,
                 skip_rescale=False, init_scale=0., in_groups=None):
        super().__init__(act, in_ch, out_ch, temb_dim, conv_shortcut, dropout, norm=group_norm,
                         init_scale=init_scale, skip_rescale=skip_rescale,
                         in_norm=_groups_norm(in_groups))


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-style residual block (Brock et al. 2019) whose resampling (`up` / `down` by 2, FIR or
    naive) happens inside the block, on both the residual and the shortcut path; `in_groups`:
    the first GroupNorm's group count (default NCSN++'s rule)."""

    def __init__(self, act, in_ch, out_ch=None, temb_dim=None, up=False, down=False, dropout=0.1,
                 fir=False, fir_kernel=(1, 3, 3, 1), skip_rescale=True, init_scale=0.,
                 in_groups=None):
        super().__init__()
        if up and down:
            raise ValueError("ResnetBlockBigGANpp: up and down cannot both be set")
        out_ch = out_ch or in_ch
        add_residual_layers(self, group_norm, in_ch, out_ch, temb_dim, dropout, init_scale,
                            _groups_norm(in_groups))
        self.up, self.down = up, down
        self.fir = fir
        self.fir_kernel = tuple(fir_kernel)
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
        h = residual_branch_tail(self, self.Conv_0(h), temb)
        if self.has_shortcut:
            x = self.Conv_2(x)
        return residual_sum(x, h, self.skip_rescale)
