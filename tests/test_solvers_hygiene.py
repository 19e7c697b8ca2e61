"""Numerical hygiene and input checks of the samplers (issue 13): a NaN/inf from the score stops
every sampler at the step where it appeared (or, on request, is reported per sample without
poisoning the others); the shape probe catches an output of batch 1; PC needs steps >= 2 and a
finite snr. The score is the exact one of a Gaussian mixture (sde_lib.oracle), poisoned on
purpose in one sample below a given time."""

import math
import re

import pytest
import torch

import solvers
from sde_lib import VESDE, VPSDE, subVPSDE
from solvers.evaluations import NonFiniteError
from solvers.correctors import langevin

BUILTIN = ["pc", "ode", "heun", "dpm_solver++", "adaptive"]
# every registered sampler (the fast ones added later included) is covered by the same check
ALL_SAMPLERS = sorted(set(BUILTIN) | set(solvers.list_samplers()))


class Poisoned:
    """The score, with `value` (NaN or inf) in sample `row` at times t < `below`; counts the
    evaluations made after the first bad one."""

    def __init__(self, score, row=1, below=0.5, value=float("nan")):
        self.score, self.row, self.below, self.value = score, row, below, value
        self.bad_calls = 0

    def __call__(self, x, t):
        out = self.score(x, t)
        bad = torch.zeros(x.shape[0], dtype=torch.bool)
        if x.shape[0] > self.row and float(t[self.row]) < self.below:
            bad[self.row] = True
            self.bad_calls += 1
        return torch.where(bad[:, None], torch.full_like(out, self.value), out)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- raise (default)

@pytest.mark.parametrize("sampler", ALL_SAMPLERS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_score_stops_every_sampler_at_that_step(dist, sampler, value):
    sde = VPSDE(N=40)
    score = Poisoned(dist.marginal(sde).score, value=value)
    with pytest.raises(NonFiniteError) as info:
        solvers.sample(score, sde, (4, 4), sampler=sampler, generator=seeded())
    msg = str(info.value)
    assert "1 of 4 samples (rows [1])" in msg, msg
    step = re.search(r"sampler step (\d+) \(score evaluation (\d+), t = ([0-9.e-]+)\)", msg)
    assert step, msg
    assert 0 < float(step.group(3)) < 0.5                 # the time at which it appeared
    assert score.bad_calls == 1                           # stopped there, nothing after it


def test_pc_error_names_the_step_and_time(dist):
    sde = VESDE(N=20)
    # t_i = linspace(1, 1e-5, 20): the first time below 0.5 is t_10 = 0.47369 (step 11)
    with pytest.raises(NonFiniteError, match=r"at sampler step 11 \(score evaluation 21, "
                                             r"t = 0\.47368\d*\) for 1 of 4 samples"):
        solvers.sample(Poisoned(dist.marginal(sde).score), sde, (4, 4), generator=seeded())


def test_batch_chunks_report_rows_of_the_whole_batch(dist):
    sde = VESDE(N=20)
    with pytest.warns(RuntimeWarning, match="1 of 4 samples have a NaN/inf score"):
        res = solvers.sample(Poisoned(dist.marginal(sde).score), sde, (8, 4), batch_size=4,
                             generator=seeded(), on_nonfinite="keep")
    assert list(res.info["nonfinite"]) == [1, 5]    # row 1 of each chunk of 4


def test_nonfinite_result_is_an_error(dist):
    sde = VESDE(N=20)

    def broken_sampler(score_fn, sde, x, *, eps, denoise, generator, progress, callback):
        score_fn(x, torch.full((x.shape[0],), sde.T))
        return torch.where(torch.arange(x.shape[0])[:, None] == 2, torch.inf, x)

    with pytest.raises(NonFiniteError, match=r"result of sampler 'broken_sampler' holds NaN/inf "
                                             r"in 1 of 3 samples \(rows \[2\]\)"):
        solvers.sample(dist.marginal(sde).score, sde, (3, 4), sampler=broken_sampler)
    with pytest.raises(ValueError, match=r"x_init holds 8 NaN/inf values \(in samples \[0, 1\]\)"):
        solvers.sample(dist.marginal(sde).score, sde, x_init=torch.full((2, 4), math.nan))
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        solvers.sample(dist.marginal(sde).score, sde, (2, 4), on_nonfinite="ignore")


# --------------------------------------------------------------------------- keep

@pytest.mark.parametrize("sampler", ALL_SAMPLERS)
def test_keep_reports_the_bad_sample_and_spares_the_others(dist, sampler):
    sde = VPSDE(N=40)
    # PC with per-sample Langevin norms, so the others' steps do not depend on the bad one
    # (the batch norm's handling is tested below)
    kw = {"corrector_options": {"norm": "sample"}} if sampler == "pc" else {}
    clean = solvers.sample(dist.marginal(sde).score, sde, (4, 4), sampler=sampler,
                           generator=seeded(), **kw)
    res = solvers.sample(Poisoned(dist.marginal(sde).score), sde, (4, 4), sampler=sampler,
                         generator=seeded(), on_nonfinite="keep", **kw)
    assert list(res.info["nonfinite"]) == [1]
    step, when = res.info["nonfinite"][1]
    assert step >= 1 and when.startswith("t = ")
    others = torch.tensor([0, 2, 3])
    assert torch.isfinite(res.samples[others]).all()
    assert not torch.isfinite(res.samples[1]).all()
    if sampler in ("ode", "adaptive"):  # batch-wide step control: same path up to its tolerance
        assert res.nfe < 2000
        torch.testing.assert_close(res.samples[others], clean.samples[others], rtol=0.05,
                                   atol=0.05)
    else:                               # the others are exactly what they would have been
        assert torch.equal(res.samples[others], clean.samples[others])


def test_adaptive_batch_norm_and_ode_set_the_bad_sample_aside(dist):
    sde = subVPSDE()
    res = solvers.sample(Poisoned(dist.marginal(sde).score, below=2.0), sde, (4, 4),
                         sampler="adaptive", error_norm="batch", generator=seeded(),
                         on_nonfinite="keep")
    assert res.nfe < 2000 and torch.isfinite(res.samples[[0, 2, 3]]).all()
    res = solvers.ode_sampler(Poisoned(dist.marginal(sde).score), sde,
                              sde.prior_sampling((4, 4), generator=seeded()))
    assert torch.isfinite(res[[0, 2, 3]]).all() and torch.isnan(res[1]).all()


def test_langevin_batch_norm_leaves_out_nonfinite_samples(dist):
    """Algorithm 5's step 2 alpha (snr mean||z|| / mean||score||)^2, the mean of ||score|| over
    the finite samples only; the NaN sample stays NaN on its own."""
    sde = VESDE(N=20)
    score = Poisoned(dist.marginal(sde).score, below=2.0)
    x = sde.prior_sampling((6, 4), generator=seeded(), dtype=torch.float64) * 0.1
    t = torch.full((6,), 0.3, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="1 of 6 samples have a NaN/inf score"):
        new, mean = langevin(score, sde, x, t, snr=0.16, n_steps=1, eps=1e-5,
                             generator=seeded(1))
    keep = torch.tensor([0, 2, 3, 4, 5])
    grad = dist.marginal(sde).score(x, t)[keep]
    z = torch.randn(6, 4, generator=seeded(1), dtype=torch.float64)
    step = 2 * (0.16 * z.norm(dim=1).mean() / grad.norm(dim=1).mean()) ** 2
    torch.testing.assert_close(mean[keep], x[keep] + step * grad)
    torch.testing.assert_close(new[keep], x[keep] + step * grad + (2 * step).sqrt() * z[keep])
    assert torch.isnan(new[1]).all()


# --------------------------------------------------------------------------- input checks

@pytest.mark.parametrize("sampler", ALL_SAMPLERS)
def test_score_of_batch_one_is_caught_by_the_probe(dist, sampler):
    sde = VPSDE(N=40)
    score = dist.marginal(sde).score

    def broadcast(x, t):
        return score(x[:1], t[:1])

    with pytest.raises(ValueError, match=r"returns \[1, 4\] for input of shape \[2, 4\]"):
        solvers.sample(broadcast, sde, (8, 4), sampler=sampler)


@pytest.mark.parametrize("sde", [VESDE(N=1), VPSDE(N=1), subVPSDE(N=1), VESDE()],
                         ids=["ve", "vp", "subvp", "ve-steps"])
def test_pc_needs_two_steps(dist, sde):
    score = dist.marginal(sde).score
    with pytest.raises(ValueError, match=r"PC sampler needs steps >= 2"):
        solvers.sample(score, sde, (2, 4), steps=1 if sde.N > 1 else None)
    with pytest.raises(ValueError, match=r"PC sampler needs steps >= 2"):
        solvers.pc_sampler(score, sde, torch.zeros(2, 4), steps=1)


@pytest.mark.parametrize("snr", [math.inf, math.nan, -0.1, 0.0, "x"])
def test_snr_must_be_finite_and_positive(dist, snr):
    sde = VESDE(N=20)
    score = dist.marginal(sde).score
    with pytest.raises(ValueError, match="snr must be a finite positive number"):
        solvers.sample(score, sde, (2, 4), snr=snr)
    with pytest.raises(ValueError, match="snr must be a finite positive number"):
        solvers.pc_sampler(score, sde, torch.zeros(2, 4), snr=snr)


def test_encode_and_annealed_langevin_check_their_scores_too(dist):
    sde = VESDE(N=20)
    x = torch.zeros(3, 4)
    with pytest.raises(NonFiniteError, match=r"at score evaluation 1, t = 1e-05 for 1 of 3 "
                                             r"samples"):      # encode starts at eps
        solvers.encode(Poisoned(dist.marginal(sde).score, below=0.5), sde, x)
    with pytest.raises(NonFiniteError, match=r"sampler step 11 \(score evaluation 51, "
                                             r"t = 0\.47368\d*\) for 1 of 3 samples"):
        solvers.annealed_langevin(Poisoned(dist.marginal(sde).score), sde, (3, 4))
    res = solvers.annealed_langevin(Poisoned(dist.marginal(sde).score), sde, (3, 4),
                                    on_nonfinite="keep", generator=seeded())
    assert list(res.info["nonfinite"]) == [1] and torch.isfinite(res.samples[[0, 2]]).all()
