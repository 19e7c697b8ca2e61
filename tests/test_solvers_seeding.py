"""One generator per row (`solvers.seeding.RowGenerators`): every sampler gives each sample as a
function of its own seed, whatever its batch-mates and the batch size; options that couple the
rows are refused."""

import pytest
import torch

import solvers
from sde_lib import VESDE, VPSDE, oracle
from solvers.seeding import RowGenerators, prior_draw, row_coupling

# (sampler, options): every registered sampler with its noise-drawing options switched on.
SAMPLERS = [("pc", dict(steps=30, corrector_options={"norm": "sample"})),
            ("pc", dict(steps=30, predictor="ancestral_sampling", corrector="ald")),
            ("heun", dict(steps=8, S_churn=2.0)), ("dpm_solver++", dict(steps=8)),
            ("unipc", dict(steps=8)), ("adaptive", dict(rtol=0.05))]


def exact_score(sde):
    dist = oracle.gaussian(torch.full((4,), 0.3, dtype=torch.float64),
                           torch.eye(4, dtype=torch.float64) * 0.5)
    marginal = dist.marginal(sde)
    return lambda x, t: marginal.score(x.double(), t.double()).float()


@pytest.mark.parametrize("sde", [VPSDE(N=30), VESDE(N=30)], ids=["vp", "ve"])
@pytest.mark.parametrize("sampler,options", SAMPLERS, ids=[f"{s}-{i}" for i, (s, _) in
                                                             enumerate(SAMPLERS)])
def test_each_sample_is_a_function_of_its_seed_alone(sde, sampler, options):
    score = exact_score(sde)

    def run(seeds, **kw):
        return solvers.sample(score, sde, (len(seeds), 4), sampler=sampler,
                              generator=RowGenerators(seeds), **options, **kw).samples

    whole = run(range(8))
    assert torch.equal(run([2, 3, 4]), whole[2:5])            # other batch-mates
    assert torch.equal(run(range(8), batch_size=3), whole)     # other batch size
    assert torch.equal(run([5, 1]), whole[[5, 1]])             # other order
    assert not torch.equal(whole[0], whole[1])


def test_the_ode_sampler_depends_on_batch_mates_only_within_its_error():
    sde = VPSDE(N=30)
    score = exact_score(sde)
    a = solvers.sample(score, sde, (8, 4), sampler="ode", generator=RowGenerators(range(8)))
    b = solvers.sample(score, sde, (3, 4), sampler="ode", generator=RowGenerators([2, 3, 4]))
    assert torch.allclose(a.samples[2:5], b.samples, rtol=0, atol=1e-3)  # the solve's global error


def test_prior_rows_are_the_prior_draws_of_their_own_seeds():
    sde = VESDE(sigma_max=50.0)
    x = prior_draw(sde, (3, 2, 2), RowGenerators([7, 8, 9]))
    one = sde.prior_sampling((1, 2, 2), generator=torch.Generator().manual_seed(8))
    assert torch.equal(x[1:2], one)


def test_row_coupling_options_are_refused_by_name():
    sde = VPSDE(N=30)
    with pytest.raises(ValueError, match="norm='batch'.*'sample'"):
        solvers.sample(exact_score(sde), sde, (4, 4), steps=30, generator=RowGenerators(range(4)))
    with pytest.raises(ValueError, match="error_norm='batch'"):
        solvers.sample(exact_score(sde), sde, (4, 4), sampler="adaptive", error_norm="batch",
                       generator=RowGenerators(range(4)))
    with pytest.raises(ValueError, match="3 rows but the RowGenerators hold 4 seeds"):
        solvers.sample(exact_score(sde), sde, (3, 4), sampler="heun",
                       generator=RowGenerators(range(4)))
    assert row_coupling("pc", {"corrector": "langevin", "n_corrector_steps": 1}) is not None
    assert row_coupling("pc", {"corrector": "none"}) is None
    assert row_coupling("heun", {}) is None
