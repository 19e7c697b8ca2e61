"""Seeded noise for the samplers: every random draw takes a torch.Generator, and is made on the
generator's own device, so a CPU generator gives the same numbers whatever device a sampler runs
on."""

import torch

from solvers.seeding import RowGenerators


def randn(shape, generator=None, device=None, dtype=torch.float32):
    """Standard normal noise drawn from `generator` on the generator's own device, then moved
    to `device`: a CPU generator gives the same numbers whatever device the sampler runs on.
    A `solvers.seeding.RowGenerators` draws each row from that row's own generator."""
    if isinstance(generator, RowGenerators):
        return generator.randn(shape, dtype=dtype).to(device)
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    z = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype)
    return z.to(device)


def randn_like(x, generator=None):
    return randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
