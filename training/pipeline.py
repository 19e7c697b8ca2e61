"""The training input pipeline: an exactly resumable, shardable order of batches, and the
per-batch random transforms (flips, uniform dequantization, scaling) of `config.data`.

Order: epoch e visits the dataset in the permutation drawn from a generator seeded with
(seed, e); a global batch is the next `batch_size` indices of it (an incomplete tail is dropped,
as the original's `drop_remainder`). The state is just (epoch, position), so a resumed run sees
exactly the batches the uninterrupted run would have. With several processes, each takes a
contiguous slice of every global batch, so the global batch does not depend on the number of
processes.
"""

import torch

from likelihood.bpd import truncated_normal
from training.data import get_data_scaler


def mix_seed(*parts):
    """A 63-bit seed from integers (splitmix64 steps), for independent streams per (seed, key)."""
    h = 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    for p in parts:
        h = (h ^ (int(p) & mask)) & mask
        h = (h + 0x9E3779B97F4A7C15) & mask
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & mask
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & mask
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def shard_slice(global_batch, rank, world_size):
    """The rows [lo, hi) of a global batch that process `rank` of `world_size` takes."""
    if global_batch % world_size:
        raise ValueError(f"the batch size {global_batch} must be divisible by the number of "
                         f"processes {world_size}")
    per = global_batch // world_size
    return slice(rank * per, (rank + 1) * per)


class BatchOrder:
    """Indices of successive global batches over a dataset of n items (see module docstring)."""

    def __init__(self, n, batch_size, seed, shuffle=True):
        if batch_size < 1 or batch_size > n:
            raise ValueError(f"batch size {batch_size} must lie in [1, dataset size {n}]")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.shuffle = shuffle
        self.epoch, self.position = 0, 0
        self._perm, self._perm_epoch = None, None

    def permutation(self, epoch):
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(mix_seed(self.seed, 0xDA7A, epoch))
        return torch.randperm(self.n, generator=g)

    def next(self):
        """The indices [batch_size] of the next global batch."""
        if self.position + self.batch_size > self.n:
            self.epoch, self.position = self.epoch + 1, 0
        if self._perm_epoch != self.epoch:
            self._perm, self._perm_epoch = self.permutation(self.epoch), self.epoch
        idx = self._perm[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return idx

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position, "n": self.n,
                "batch_size": self.batch_size, "seed": self.seed}

    def load_state_dict(self, state):
        for key in ("n", "batch_size", "seed"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(f"cannot resume the data order: checkpoint has {key}="
                                 f"{int(state[key])}, this run has {getattr(self, key)}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def dequantization_of(config):
    """The training data's dequantization: config.data.dequantization ('uniform',
    'truncated_normal' or 'none'), else 'uniform' when config.data.uniform_dequantization."""
    name = config.data.get("dequantization", None)
    if name is None:
        return "uniform" if config.data.get("uniform_dequantization", False) else "none"
    if name not in ("none", "uniform", "truncated_normal"):
        raise ValueError(f"config.data.dequantization must be 'none', 'uniform' or "
                         f"'truncated_normal', got {name!r}")
    return name


def augment(x, config, generator=None, global_batch=None, rows=None):
    """Random flips (config.data.random_flip) and dequantization (`dequantization_of`) of images
    in [0, 1], then the data scaler. Uniform: (255 x + u) / 256. Truncated normal (i-DODE):
    x + s e, e ~ N(0, 1) truncated to the level's bin |s e| <= 1 / (2 (L - 1)), with
    s = config.data.dequantization_std (in [0, 1] units) and L = config.data.levels (256);
    see `likelihood.bpd` for the bits/dim offset of each.

    With `global_batch` and `rows`, the random draws are made for the whole global batch and the
    `rows` of this process are used, so the result does not depend on the number of processes."""
    B = x.shape[0] if global_batch is None else int(global_batch)
    rows = slice(0, x.shape[0]) if rows is None else rows
    if config.data.get("random_flip", False):
        flip = (torch.rand(B, generator=generator, device=x.device) < 0.5)[rows]
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    method = dequantization_of(config)
    if method == "uniform":
        u = torch.rand((B,) + tuple(x.shape[1:]), generator=generator, device=x.device,
                       dtype=x.dtype)[rows]
        x = (x * 255.0 + u) / 256.0  # = training.data.uniform_dequantize with this u
    elif method == "truncated_normal":
        L = int(config.data.get("levels", 256))
        std = float(config.data.get("dequantization_std", 0.0))
        if not std > 0:
            raise ValueError(f"truncated-normal dequantization needs config.data."
                             f"dequantization_std > 0 (in [0, 1] units), got {std}")
        e = truncated_normal((B,) + tuple(x.shape[1:]), 0.5 / (L - 1) / std,
                             generator=generator, device=x.device)[rows]
        x = (torch.round(x * (L - 1)) / (L - 1) + std * e).to(x.dtype)
    return get_data_scaler(config)(x)


def get_images(dataset, indices):
    """Images [len(indices), C, H, W] in [0, 1] (and labels) for a list of dataset indices."""
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(indices)
    items = [dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
