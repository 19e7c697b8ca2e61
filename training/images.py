"""Image grids as PNG files (small images upscaled, smoothly by default, to be readable)."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from sde_base.fileio import atomic_write


def make_grid(images, nrow=None, padding=1, pad_value=1.0):
    """Tile images [B, C, H, W] in [0, 1] into one [C, H', W'] grid with `nrow` per row."""
    if images.dim() != 4:
        raise ValueError(f"images must have shape [B, C, H, W], got {tuple(images.shape)}")
    B, C, H, W = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(B))))
    ncol = int(math.ceil(B / nrow))
    grid = torch.full((C, ncol * (H + padding) + padding, nrow * (W + padding) + padding),
                      float(pad_value), dtype=torch.float32)
    for i in range(B):
        r, c = divmod(i, nrow)
        y, x = padding + r * (H + padding), padding + c * (W + padding)
        grid[:, y:y + H, x:x + W] = images[i].detach().float().cpu()
    return grid


def to_uint8(images):
    """[..., C, H, W] in [0, 1] -> uint8 [..., H, W, C] (clipped, rounded)."""
    x = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def upscale(images, size, resample="bicubic"):
    """Resize images [B, C, H, W] in [0, 1] to size x size ('nearest', 'bilinear' or 'bicubic'),
    clipped to [0, 1]."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    kw = {} if resample == "nearest" else {"align_corners": False}
    out = F.interpolate(images.detach().float().cpu(), size=(size, size), mode=resample, **kw)
    return out.clamp(0, 1)


def save_grid(images, path, nrow=None, padding=2, pad_value=0.5, tile=None, resample="bicubic"):
    """Write images [B, C, H, W] in [0, 1] as a PNG grid (atomically). Small images are shown
    as `tile` x `tile` pixel tiles (default 6x their size up to 48 pixels; larger images as they
    are), resized with `resample`: 'bicubic' (smooth: tiny images read best), 'bilinear' or
    'nearest' (the exact pixels as blocks). Grey separators. Returns the path."""
    from PIL import Image
    if images.dim() != 4:
        raise ValueError(f"images must have shape [B, C, H, W], got {tuple(images.shape)}")
    size = max(images.shape[-2:])
    tile = tile or (size if size >= 32 else min(48, 6 * size))
    grid = make_grid(upscale(images, tile, resample), nrow=nrow, padding=padding,
                     pad_value=pad_value)
    arr = to_uint8(grid)
    arr = arr[..., 0] if arr.shape[-1] == 1 else arr
    with atomic_write(path) as f:
        Image.fromarray(np.ascontiguousarray(arr)).save(f, format="PNG")
    return path


def save_npz(path, **arrays):
    """np.savez_compressed, written atomically."""
    with atomic_write(path) as f:
        np.savez_compressed(f, **arrays)
    return path
