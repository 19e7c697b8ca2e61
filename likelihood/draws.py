"""Random draws from one generator, or from one generator per image (`solvers.seeding.
RowGenerators`): with the latter, image b's part of every draw (its dequantization noise, its
Hutchinson probes, the bound's times and noise) comes from generator b alone, so it does not
depend on which other images share its batch."""

import torch

from solvers.seeding import RowGenerators


def draw(sample, shape, generator, device, batch_dim=0):
    """`sample(shape, generator, device)` -> a tensor of `shape`, moved to `device`. With a
    `RowGenerators`, the slices along `batch_dim` (one per image) are drawn one by one, slice b
    from generator b on the CPU, and stacked. Without a generator the draw is made on `device`."""
    shape = tuple(int(s) for s in shape)
    if isinstance(generator, RowGenerators):
        generator.check_rows(shape[batch_dim])
        rest = shape[:batch_dim] + shape[batch_dim + 1:]
        rows = [sample(rest, g, torch.device("cpu")) for g in generator.generators]
        return torch.stack(rows, dim=batch_dim).to(device)
    where = generator.device if generator is not None else device
    return sample(shape, generator, where).to(device)
