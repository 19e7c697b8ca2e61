"""FIR up/down-sampling of images (StyleGAN2's `upfirdn2d` and the fused resampling convolutions),
in plain PyTorch: no compiled extension, any device, any floating dtype.

Convention (as in StyleGAN2 and score_sde): `upfirdn2d` upsamples by zero insertion, pads (negative
pads crop), convolves with the FIR kernel in the true-convolution sense (the kernel is flipped),
then keeps every `down`-th sample.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def _pair(v, what):
    if isinstance(v, int):
        return v, v
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{what} must be an int or a pair, got {v}")
    return v


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """Upsample, FIR-filter and downsample a batch of images `x` [N, C, H, W].

    y = downsample_down( pad_{p0,p1}( zero_insert_up(x) ) * kernel ), with `*` the 2-D convolution
    (flipped kernel) over the valid region, and the same `up`, `down`, `pad=(p0, p1)` on both axes.
    Output size per axis: (L * up + p0 + p1 - k) // down + 1. The kernel is a [kh, kw] tensor.
    """
    if x.dim() != 4:
        raise ValueError(f"upfirdn2d expects x of shape [N, C, H, W], got {tuple(x.shape)}")
    up, down = int(up), int(down)
    if up < 1 or down < 1:
        raise ValueError(f"up and down must be >= 1, got up={up}, down={down}")
    p0, p1 = _pair(pad, 'pad')
    kernel = torch.as_tensor(kernel)
    if kernel.dim() != 2:
        raise ValueError(f"upfirdn2d expects a 2-D kernel, got shape {tuple(kernel.shape)}")
    N, C, H, W = x.shape
    kh, kw = kernel.shape
    out_h, out_w = H * up + p0 + p1 - kh + 1, W * up + p0 + p1 - kw + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"upfirdn2d: kernel {kh}x{kw} larger than the padded upsampled input "
                         f"{H * up + p0 + p1}x{W * up + p0 + p1}")
    kernel = kernel.to(device=x.device, dtype=x.dtype)

    if up == 1:
        # Pad (or crop), then correlate with the flipped kernel: a true convolution.
        h = F.pad(x, (p0, p1, p0, p1))
        w = torch.flip(kernel, (0, 1))[None, None].repeat(C, 1, 1, 1)
        return F.conv2d(h, w, stride=down, groups=C)

    # Zero insertion followed by convolution is exactly a strided transposed convolution with the
    # unflipped kernel: z[m] = sum_{i*up + a = m} x[i] k[a], m in [0, (L - 1) * up + k - 1].
    # The padded-upsampled-filtered signal is y[n] = z[n + k - 1 - p0]: shift/crop z accordingly.
    w = kernel[None, None].repeat(C, 1, 1, 1)
    z = F.conv_transpose2d(x, w, stride=up, groups=C)
    zh, zw = z.shape[-2:]
    oh, ow = kh - 1 - p0, kw - 1 - p0
    y = F.pad(z, (-ow, out_w - (zw - ow), -oh, out_h - (zh - oh)))
    if down > 1:
        y = y[:, :, ::down, ::down]
    return y


def setup_kernel(k):
    """A normalized 2-D FIR kernel (sums to 1) from a 1-D separable kernel or a square 2-D one."""
    k = np.asarray(k, dtype=np.float32)
    if k.ndim == 1:
        k = np.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"FIR kernel must be 1-D or square 2-D, got shape {k.shape}")
    total = k.sum()
    if total == 0:
        raise ValueError("FIR kernel sums to zero and cannot be normalized")
    return k / total


def prepare_kernel(k=None, factor=2, gain=1, up=False):
    """The 2-D FIR kernel the resamplers apply, as a float32 tensor: `setup_kernel(k)` (default
    taps [1] * factor) times `gain`, and times factor**2 when upsampling (zero insertion keeps one
    sample in factor**2). Modules keep it as a buffer so that no kernel is copied per call."""
    if not (isinstance(factor, int) and factor >= 1):
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    k = setup_kernel([1] * factor if k is None else k) * (gain * (factor ** 2 if up else 1))
    return torch.from_numpy(np.ascontiguousarray(k, dtype=np.float32))


def _kernel(kernel, k, factor, gain, up):
    return prepare_kernel(k, factor, gain, up) if kernel is None else kernel


def upsample_2d(x, k=None, factor=2, gain=1, *, kernel=None):
    """Upsample [N, C, H, W] by `factor` with FIR taps `k` (default: nearest neighbour), scaled so
    that a constant image keeps its value times `gain`. `kernel`: a `prepare_kernel(..., up=True)`
    tensor to use instead of `k` and `gain`."""
    kernel = _kernel(kernel, k, factor, gain, up=True)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x, k=None, factor=2, gain=1, *, kernel=None):
    """Downsample [N, C, H, W] by `factor` with FIR taps `k` (default: average pooling).
    `kernel`: a `prepare_kernel(...)` tensor to use instead of `k` and `gain`."""
    kernel = _kernel(kernel, k, factor, gain, up=False)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x, w, k=None, factor=2, gain=1, *, kernel=None):
    """Upsample by `factor` and apply the convolution `w` [out, in, kh, kw] (odd square kernel) in
    one fused step: a strided transposed convolution with the flipped weight, then one FIR pass.
    Output [N, out, H * factor, W * factor]."""
    out_c, in_c, kh, kw = w.shape
    if kh != kw:
        raise ValueError(f"upsample_conv_2d needs a square weight, got {kh}x{kw}")
    if x.shape[1] != in_c:
        raise ValueError(f"upsample_conv_2d: input has {x.shape[1]} channels, weight expects {in_c}")
    kernel = _kernel(kernel, k, factor, gain, up=True)
    p = (kernel.shape[0] - factor) - (kw - 1)
    wt = torch.flip(w, (2, 3)).transpose(0, 1)  # [in, out, kh, kw] for conv_transpose2d
    x = F.conv_transpose2d(x, wt, stride=factor)
    return upfirdn2d(x, kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x, w, k=None, factor=2, gain=1, *, kernel=None):
    """FIR-filter, then apply the convolution `w` [out, in, kh, kw] with stride `factor`, padding
    only once: the fused `conv2d` followed by `downsample_2d`. Output [N, out, H/factor, W/factor]."""
    _, _, kh, kw = w.shape
    if kh != kw:
        raise ValueError(f"conv_downsample_2d needs a square weight, got {kh}x{kw}")
    kernel = _kernel(kernel, k, factor, gain, up=False)
    p = (kernel.shape[0] - factor) + (kw - 1)
    x = upfirdn2d(x, kernel, pad=((p + 1) // 2, p // 2))
    return F.conv2d(x, w, stride=factor)


def naive_upsample_2d(x, factor=2):
    """Nearest-neighbour upsampling by an integer factor."""
    N, C, H, W = x.shape
    x = x.reshape(N, C, H, 1, W, 1).expand(N, C, H, factor, W, factor)
    return x.reshape(N, C, H * factor, W * factor)


def naive_downsample_2d(x, factor=2):
    """Average pooling over factor x factor blocks."""
    N, C, H, W = x.shape
    return x.reshape(N, C, H // factor, factor, W // factor, factor).mean(dim=(3, 5))


class Conv2d(nn.Module):
    """Convolution with odd square kernel `kernel`, optionally fused with FIR up- or downsampling
    by 2 (StyleGAN2). Parameters `weight` [out, in, k, k] and `bias` [out]."""

    def __init__(self, in_ch, out_ch, kernel, up=False, down=False, resample_kernel=(1, 3, 3, 1),
                 use_bias=True, kernel_init=None):
        super().__init__()
        if up and down:
            raise ValueError("Conv2d: up and down cannot both be set")
        if kernel < 1 or kernel % 2 != 1:
            raise ValueError(f"Conv2d: kernel size must be odd and positive, got {kernel}")
        self.weight = nn.Parameter(torch.zeros(out_ch, in_ch, kernel, kernel))
        if kernel_init is not None:
            self.weight.data = kernel_init(self.weight.data.shape)
        if use_bias:
            self.bias = nn.Parameter(torch.zeros(out_ch))
        self.up, self.down = up, down
        self.resample_kernel = tuple(resample_kernel)
        self.kernel = kernel
        self.use_bias = use_bias
        if up or down:  # not part of the state dict
            self.register_buffer('fir', prepare_kernel(resample_kernel, 2, up=up), persistent=False)

    def forward(self, x):
        if self.up:
            x = upsample_conv_2d(x, self.weight, kernel=self.fir)
        elif self.down:
            x = conv_downsample_2d(x, self.weight, kernel=self.fir)
        else:
            x = F.conv2d(x, self.weight, padding=self.kernel // 2)
        if self.use_bias:
            x = x + self.bias.reshape(1, -1, 1, 1)
        return x
