"""Building blocks of the RefineNet-style NCSN (Song & Ermon 2019) and NCSNv2 (2020) networks.

One class per block serves both networks: given a normalisation factory `norm`, a block is the
noise-conditional NCSN version (its norms take (x, y), y the noise-level index); without it, the
NCSNv2 version. Module and parameter names (`convs`, `norms`, `1_1_conv`, `1_1_norm`,
`adapt_convs`, `output_convs`, `msf`, `crp`, `conv1`, `normalize1`, `shortcut`, ...) and their
registration order are those of score_sde_pytorch, so state dicts and EMA parameter lists match.

Departures from score_sde_pytorch, whose NCSN/NCSNv2 networks do not run as published:
  * dilated 3x3 convolutions pad by their dilation ("same" size, as NCSNv2's own code does;
    the score_sde port padded by 1, which makes the residual sums fail on a shape mismatch);
  * a bias-free 3x3 convolution is allowed (the port scaled a missing bias and crashed).
Neither changes a parameter name or shape.
"""

import torch.nn as nn
import torch.nn.functional as F


def ncsn_conv1x1(in_planes, out_planes, stride=1, bias=True, dilation=1, init_scale=1., padding=0):
    """1x1 convolution, PyTorch's default initialisation scaled by `init_scale` (0 means 1e-10)."""
    conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=bias,
                     dilation=dilation, padding=padding)
    return _scale_init(conv, init_scale)


def ncsn_conv3x3(in_planes, out_planes, stride=1, bias=True, dilation=1, init_scale=1.,
                 padding=None):
    """3x3 convolution, PyTorch's default initialisation scaled by `init_scale` (0 means 1e-10).
    `padding` defaults to `dilation`, which keeps the spatial size at stride 1."""
    conv = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, bias=bias,
                     dilation=dilation, padding=dilation if padding is None else padding)
    return _scale_init(conv, init_scale)


def _scale_init(conv, init_scale):
    scale = 1e-10 if init_scale == 0 else init_scale
    if scale != 1:
        conv.weight.data.mul_(scale)
        if conv.bias is not None:
            conv.bias.data.mul_(scale)
    return conv


def _normalize(norm, x, y):
    """Apply a plain (y is None) or noise-conditional normalisation layer."""
    return norm(x) if y is None else norm(x, y)


def mean_pool2x2(x):
    """Average over non-overlapping 2x2 windows (the original's sum of four strided views / 4)."""
    return (x[:, :, ::2, ::2] + x[:, :, 1::2, ::2] + x[:, :, ::2, 1::2] + x[:, :, 1::2, 1::2]) / 4.


class ConvMeanPool(nn.Module):
    """Convolution (stride 1, 'same' padding) followed by 2x2 mean pooling. `adjust_padding`
    pads one row/column at the top-left first (the original's option for 28px inputs; it puts
    the convolution under `conv.1`)."""

    def __init__(self, input_dim, output_dim, kernel_size=3, biases=True, adjust_padding=False):
        super().__init__()
        conv = nn.Conv2d(input_dim, output_dim, kernel_size, stride=1, padding=kernel_size // 2,
                         bias=biases)
        self.conv = nn.Sequential(nn.ZeroPad2d((1, 0, 1, 0)), conv) if adjust_padding else conv

    def forward(self, x):
        return mean_pool2x2(self.conv(x))


class CRPBlock(nn.Module):
    """Chained residual pooling (RefineNet): x <- act(x); path_0 = x; for each stage
    path_i = conv(pool(norm(path_{i-1}))) and x += path_i. Max pooling in NCSNv2, average pooling
    with a norm before each pool in NCSN (pass `norm` and pool='avg')."""

    def __init__(self, features, n_stages, act=nn.ReLU(), norm=None, pool='max'):
        super().__init__()
        if pool not in ('max', 'avg'):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        self.convs = nn.ModuleList([ncsn_conv3x3(features, features, bias=False)
                                    for _ in range(n_stages)])
        if norm is not None:
            self.norms = nn.ModuleList([norm(features) for _ in range(n_stages)])
        self.n_stages = n_stages
        pool_cls = nn.MaxPool2d if pool == 'max' else nn.AvgPool2d
        self.pool = pool_cls(kernel_size=5, stride=1, padding=2)
        self.act = act

    def forward(self, x, y=None):
        x = self.act(x)
        path = x
        for i in range(self.n_stages):
            if hasattr(self, 'norms'):
                path = _normalize(self.norms[i], path, y)
            path = self.convs[i](self.pool(path))
            x = path + x
        return x


class RCUBlock(nn.Module):
    """Residual conv units (RefineNet): `n_blocks` times x <- x + (act -> conv)^n_stages (x),
    with a norm before each act when `norm` is given (NCSN). Layers are named
    '{block}_{stage}_conv' and '{block}_{stage}_norm', 1-based."""

    def __init__(self, features, n_blocks, n_stages, act=nn.ReLU(), norm=None):
        super().__init__()
        self.with_norm = norm is not None
        for i in range(1, n_blocks + 1):
            for j in range(1, n_stages + 1):
                if self.with_norm:
                    setattr(self, f'{i}_{j}_norm', norm(features))
                setattr(self, f'{i}_{j}_conv', ncsn_conv3x3(features, features, bias=False))
        self.n_blocks = n_blocks
        self.n_stages = n_stages
        self.act = act

    def forward(self, x, y=None):
        for i in range(1, self.n_blocks + 1):
            residual = x
            for j in range(1, self.n_stages + 1):
                if self.with_norm:
                    x = _normalize(getattr(self, f'{i}_{j}_norm'), x, y)
                x = getattr(self, f'{i}_{j}_conv')(self.act(x))
            x = x + residual
        return x


class MSFBlock(nn.Module):
    """Multi-resolution fusion (RefineNet): sum over inputs of conv(norm(x_i)) resized
    bilinearly (align_corners=True) to `shape`."""

    def __init__(self, in_planes, features, norm=None):
        super().__init__()
        if not isinstance(in_planes, (list, tuple)):
            raise TypeError(f"in_planes must be a list or tuple, got {type(in_planes).__name__}")
        self.convs = nn.ModuleList([ncsn_conv3x3(c, features, bias=True) for c in in_planes])
        if norm is not None:
            self.norms = nn.ModuleList([norm(c) for c in in_planes])
        self.features = features

    def forward(self, xs, shape, y=None):
        total = 0
        for i, x in enumerate(xs):
            if hasattr(self, 'norms'):
                x = _normalize(self.norms[i], x, y)
            h = F.interpolate(self.convs[i](x), size=tuple(shape), mode='bilinear',
                              align_corners=True)
            total = total + h
        return total


class RefineBlock(nn.Module):
    """RefineNet block: adapt each input with two RCUs, fuse them (MSF) unless `start` (one
    input), chained residual pooling, then 1 output RCU (3 when `end`)."""

    def __init__(self, in_planes, features, act=nn.ReLU(), start=False, end=False, norm=None,
                 pool='max'):
        super().__init__()
        if not isinstance(in_planes, (list, tuple)):
            raise TypeError(f"in_planes must be a list or tuple, got {type(in_planes).__name__}")
        self.n_blocks = len(in_planes)
        self.adapt_convs = nn.ModuleList([RCUBlock(c, 2, 2, act, norm=norm) for c in in_planes])
        self.output_convs = RCUBlock(features, 3 if end else 1, 2, act, norm=norm)
        if not start:
            self.msf = MSFBlock(in_planes, features, norm=norm)
        self.crp = CRPBlock(features, 2, act, norm=norm, pool=pool)

    def forward(self, xs, output_shape, y=None):
        if len(xs) != self.n_blocks:
            raise ValueError(f"RefineBlock expects {self.n_blocks} inputs, got {len(xs)}")
        hs = [adapt(x, y) for adapt, x in zip(self.adapt_convs, xs)]
        h = self.msf(hs, output_shape, y) if self.n_blocks > 1 else hs[0]
        return self.output_convs(self.crp(h, y), y)


class ResidualBlock(nn.Module):
    """Pre-activation residual block: x + conv2(act(norm2(conv1(act(norm1(x)))))), with a
    shortcut convolution when the channels change or resample == 'down'.

    resample='down' halves the resolution (conv then 2x2 mean pool) when dilation == 1; with
    dilation > 1 the block keeps the resolution and only dilates (NCSNv2's deeper stages).
    `norm` is a factory `norm(num_features)`; the layers take (x, y) in NCSN."""

    def __init__(self, input_dim, output_dim, norm, resample=None, act=nn.ELU(),
                 adjust_padding=False, dilation=1):
        super().__init__()
        if resample not in (None, 'down'):
            raise ValueError(f"resample must be None or 'down', got {resample!r}")
        self.non_linearity = act
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.resample = resample
        dilated = dilation > 1
        # Registration order conv1, normalize2, conv2, shortcut, normalize1: the original's.
        if resample == 'down':
            self.conv1 = ncsn_conv3x3(input_dim, input_dim, dilation=dilation)
            self.normalize2 = norm(input_dim)
            if dilated:
                self.conv2 = ncsn_conv3x3(input_dim, output_dim, dilation=dilation)
                self.shortcut = ncsn_conv3x3(input_dim, output_dim, dilation=dilation)
            else:
                self.conv2 = ConvMeanPool(input_dim, output_dim, 3, adjust_padding=adjust_padding)
                self.shortcut = ConvMeanPool(input_dim, output_dim, kernel_size=1,
                                             adjust_padding=adjust_padding)
        else:
            self.conv1 = ncsn_conv3x3(input_dim, output_dim, dilation=dilation)
            self.normalize2 = norm(output_dim)
            self.conv2 = ncsn_conv3x3(output_dim, output_dim, dilation=dilation)
            if output_dim != input_dim:
                self.shortcut = (ncsn_conv3x3(input_dim, output_dim, dilation=dilation) if dilated
                                 else ncsn_conv1x1(input_dim, output_dim))
        self.normalize1 = norm(input_dim)

    def forward(self, x, y=None):
        h = self.non_linearity(_normalize(self.normalize1, x, y))
        h = self.conv1(h)
        h = self.non_linearity(_normalize(self.normalize2, h, y))
        h = self.conv2(h)
        shortcut = self.shortcut(x) if hasattr(self, 'shortcut') else x
        return shortcut + h
