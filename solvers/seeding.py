"""One random generator per sample: every draw of a row (its prior draw and each noise draw of
the sampler) comes from that row's own generator, so a sample is a function of its seed alone,
whatever its batch-mates, the batch size or the number of processes (EDM's `generate.py` rule:
one generator per seed).

    g = RowGenerators(range(64, 128))            # seeds of the 64 rows
    solvers.sample(score_fn, sde, (64, 1, 8, 8), generator=g, corrector_options={"norm": "sample"})

`solvers.noise.randn` and `prior_draw` accept a `RowGenerators` wherever they accept a
`torch.Generator`, so every sampler draws through it without code of its own. Options that
couple the rows of a batch (the Langevin corrector's batch-averaged step size, the adaptive
solver's batch error norm) are named by `row_coupling` and refused with a `RowGenerators`.
"""

import torch


class RowGenerators:
    """One CPU `torch.Generator` per row, seeded with that row's seed. Draws are made row by
    row on the CPU (so a GPU run draws the same numbers) and stacked; `select(rows)` gives the
    generators of a slice of the batch (the same objects, so their states advance)."""

    def __init__(self, seeds, *, generators=None):
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("RowGenerators needs at least one seed")
        if any(s < 0 or s >= 2 ** 63 for s in self.seeds):
            raise ValueError("seeds must lie in [0, 2**63)")
        self.generators = generators if generators is not None else [
            torch.Generator(device="cpu").manual_seed(s) for s in self.seeds]
        self.device = torch.device("cpu")

    def __len__(self):
        return len(self.seeds)

    def select(self, rows):
        """The generators of the rows `rows` (a slice) of the batch."""
        return RowGenerators(self.seeds[rows], generators=self.generators[rows])

    def check_rows(self, n, what="the batch"):
        if n != len(self):
            raise ValueError(f"{what} has {n} rows but the RowGenerators hold {len(self)} seeds "
                             f"(one generator per row)")

    def randn(self, shape, dtype=torch.float32):
        """Standard normal noise of `shape` [B, ...] on the CPU, row i from generator i."""
        shape = tuple(int(s) for s in shape)
        self.check_rows(shape[0])
        return torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype)
                            for g in self.generators])


def prior_draw(sde, shape, generator=None, device=None, dtype=torch.float32):
    """x(T) ~ the SDE's prior, [B, ...], drawn from `generator` on its own device and moved to
    `device` (a CPU generator gives the same draw on every device). With a `RowGenerators`,
    each row is the prior draw of one row's generator."""
    if isinstance(generator, RowGenerators):
        generator.check_rows(int(shape[0]))
        rows = [sde.prior_sampling((1,) + tuple(shape[1:]), generator=g, device="cpu",
                                   dtype=dtype) for g in generator.generators]
        return torch.cat(rows).to(device)
    where = generator.device if generator is not None else device
    return sde.prior_sampling(tuple(shape), generator=generator, device=where,
                              dtype=dtype).to(device)


def row_coupling(sampler, options):
    """What makes a sample depend on its batch-mates under `sampler` with `options` (the
    keywords `solvers.sample` gets), as a sentence naming the option to change, or None when
    every row is computed from its own state and draws alone."""
    corrector = options.get("corrector", "langevin")
    if sampler == "pc" and corrector == "langevin" and options.get("n_corrector_steps", 1):
        norm = (options.get("corrector_options") or {}).get("norm", "batch")
        if norm != "sample":
            return ("the Langevin corrector's step size averages norms over the batch "
                    "(norm='batch', the original's rule); pass corrector_options={'norm': "
                    "'sample'} for the per-sample rule")
    if sampler == "adaptive" and options.get("error_norm", "sample") != "sample":
        return ("the adaptive solver's error_norm='batch' gives the whole batch one step size; "
                "use error_norm='sample'")
    return None


def step_coupling(sampler):
    """Samplers whose adaptive step size is shared by the batch: their samples depend on the
    batch-mates within the solver's error (set by rtol/atol), not more; a sentence, or None."""
    if sampler == "ode":
        return ("the probability-flow ODE solver controls the error of the whole batch as one "
                "vector, so a sample depends on its batch-mates within the solver's error (set by "
                "rtol/atol)")
    return None
