"""solvers: the API, seeding, batch splitting, hooks, registries, NFE counts and bad input."""

import math
import re

import pytest
import torch

import solvers
from sde_lib import VESDE, VPSDE, oracle, subVPSDE
from solvers.shapes import time_vector

SDES = [VESDE, VPSDE, subVPSDE]


class Counter:
    """A score function that counts its calls and the batch sizes it saw."""

    def __init__(self, fn):
        self.fn, self.calls, self.batches = fn, 0, []

    def __call__(self, x, t):
        self.calls += 1
        self.batches.append(x.shape[0])
        return self.fn(x, t)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- API and results

def test_default_is_the_pc_sampler_with_the_originals_settings(dist):
    sde = VESDE(N=50)
    score = Counter(dist.marginal(sde).score)
    res = solvers.sample(score, sde, (8, 4), generator=seeded())
    assert isinstance(res, solvers.SampleResult)
    assert res.samples.shape == (8, 4) and res.samples.dtype == torch.float32
    # N = sde.N steps, one corrector + one predictor evaluation each: N (1 + 1)
    assert res.nfe == 50 * 2
    assert score.calls == res.nfe + 1 and score.batches[0] == 2  # + the two-sample shape probe
    assert res.info["eps"] == VESDE.sampling_eps and res.info["steps"] == 50
    samples, nfe = res
    assert nfe == res.nfe and samples is res.samples


@pytest.mark.parametrize("kwargs,nfe", [
    (dict(sampler="pc", steps=30, n_corrector_steps=2), 30 * 3),
    (dict(sampler="pc", steps=30, corrector="none"), 30),
    (dict(sampler="pc", steps=30, predictor="none", corrector="ald"), 30),
    (dict(sampler="heun", steps=7), 2 * 7 + 1),
    (dict(sampler="heun", steps=7, denoise=False), 2 * 7),
    (dict(sampler="heun", steps=7, second_order=False), 7 + 1),
    (dict(sampler="dpm_solver++", steps=9), 9 + 1),
    (dict(sampler="dpm_solver++", steps=9, denoise=False), 9),
])
def test_nfe_counts(dist, kwargs, nfe):
    sde = VPSDE()
    score = Counter(dist.marginal(sde).score)
    res = solvers.sample(score, sde, (4, 4), generator=seeded(), **kwargs)
    assert res.nfe == nfe and score.calls == nfe + 1


def test_ode_nfe_counts_every_evaluation(dist):
    sde = VESDE()
    score = Counter(dist.marginal(sde).score)
    res = solvers.sample(score, sde, (4, 4), sampler="ode", check_shape=False)
    assert res.nfe == score.calls > 20
    score = Counter(dist.marginal(sde).score)
    no_denoise = solvers.sample(score, sde, (4, 4), sampler="ode", denoise=False,
                                check_shape=False, generator=seeded(1))
    assert no_denoise.nfe == score.calls


def test_lists_of_names():
    assert set(solvers.list_samplers()) >= {"pc", "ode", "heun", "dpm_solver++", "adaptive"}
    assert set(solvers.list_predictors()) == {"euler_maruyama", "reverse_diffusion",
                                              "ancestral_sampling", "none"}
    assert set(solvers.list_correctors()) == {"langevin", "ald", "none"}
    assert set(solvers.GRIDS) >= {"uniform", "karras", "karras_t", "logsnr"}


# --------------------------------------------------------------------------- reproducibility

@pytest.mark.parametrize("kwargs", [dict(sampler="pc", steps=40),
                                    dict(sampler="pc", steps=40, predictor="ancestral_sampling"),
                                    dict(sampler="adaptive", error_norm="batch", rtol=0.1),
                                    dict(sampler="heun", steps=5)])
def test_same_seed_same_samples(dist, kwargs):
    sde = VPSDE()
    score = dist.marginal(sde).score
    a = solvers.sample(score, sde, (6, 4), generator=seeded(3), **kwargs).samples
    b = solvers.sample(score, sde, (6, 4), generator=seeded(3), **kwargs).samples
    c = solvers.sample(score, sde, (6, 4), generator=seeded(4), **kwargs).samples
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_batch_splitting(dist):
    sde = VESDE(N=20)
    score = Counter(dist.marginal(sde).score)
    res = solvers.sample(score, sde, (10, 4), batch_size=4, generator=seeded(), check_shape=False)
    assert res.samples.shape == (10, 4)
    assert score.batches == [4] * 40 + [4] * 40 + [2] * 40
    assert res.info["nfe_per_batch"] == [40, 40, 40] and res.nfe == 40
    again = solvers.sample(dist.marginal(sde).score, sde, (10, 4), batch_size=4,
                           generator=seeded(), check_shape=False)
    assert torch.equal(res.samples, again.samples)
    # a deterministic sampler from given starting points gives the same result split or not
    z = sde.prior_sampling((10, 4), generator=seeded(5))
    whole = solvers.sample(dist.marginal(sde).score, sde, x_init=z, sampler="dpm_solver++")
    split = solvers.sample(dist.marginal(sde).score, sde, x_init=z, sampler="dpm_solver++",
                           batch_size=3)
    torch.testing.assert_close(whole.samples, split.samples, rtol=1e-5, atol=1e-5)


def test_langevin_per_sample_rule_is_batch_independent(dist):
    """norm='sample': a sample does not depend on its batch-mates; the original's rule
    (batch-averaged norms, default) makes it depend on them."""
    sde = VESDE(N=10)
    score = dist.marginal(sde).score
    x1 = sde.prior_sampling((3, 4), generator=seeded(1))
    x2 = x1.clone()
    x2[1:] = sde.prior_sampling((2, 4), generator=seeded(2))
    outs = {}
    for norm in ("sample", "batch"):
        a, b = (solvers.sample(score, sde, x_init=x, generator=seeded(9),
                               corrector_options={"norm": norm}).samples for x in (x1, x2))
        outs[norm] = torch.allclose(a[0], b[0])
    assert outs == {"sample": True, "batch": False}


def test_ald_step_lr_matches_ncsn_snr():
    """ALD's NCSN step size step_lr sigma_i^2 / sigma_L^2 equals the original's
    2 (snr sigma_i)^2 rule (VE, alpha = 1) at snr = sqrt(step_lr / (2 sigma_L^2))."""
    dist = oracle.gaussian(torch.zeros(3), 0.5)
    sde = VESDE(N=30)
    score = dist.marginal(sde).score
    step_lr = 2e-5
    sigma_L = float(sde.sigma(torch.tensor(sde.sampling_eps, dtype=torch.float64)))
    kw = dict(predictor="none", corrector="ald", n_corrector_steps=2)
    a = solvers.sample(score, sde, (5, 3), generator=seeded(),
                       corrector_options={"step_lr": step_lr}, **kw).samples
    b = solvers.sample(score, sde, (5, 3), generator=seeded(),
                       snr=math.sqrt(step_lr / (2 * sigma_L ** 2)), **kw).samples
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- hooks and registries

def test_project_and_callback_hooks(dist):
    """project runs after every predictor and corrector update (as inpainting needs), callback
    after every step; a projection that pins a coordinate pins it in the result."""
    sde = VPSDE(N=25)
    seen = {"project": 0, "callback": []}

    def project(x, x_mean, t):
        seen["project"] += 1
        x, x_mean = x.clone(), x_mean.clone()
        x[:, 0] = 0.25
        x_mean[:, 0] = 0.25
        return x, x_mean

    def callback(i, t, x, x_mean):
        seen["callback"].append(i)
        assert t.shape == (x.shape[0],)

    res = solvers.sample(dist.marginal(sde).score, sde, (5, 4), generator=seeded(),
                         project=project, callback=callback)
    assert seen["project"] == 2 * 25 and seen["callback"] == list(range(25))
    assert torch.all(res.samples[:, 0] == 0.25)


def test_hooks_see_their_rows_under_batch_splitting(dist):
    """An inpainting-style projection marked `with_rows` indexes per-sample data with the `rows`
    it is given."""
    sde = VESDE(N=10)
    target = torch.arange(7, dtype=torch.float32)
    seen = []

    def project(x, x_mean, t, rows):
        seen.append((rows.start, rows.stop))
        x, x_mean = x.clone(), x_mean.clone()
        x[:, 0] = target[rows]
        x_mean[:, 0] = target[rows]
        return x, x_mean

    res = solvers.sample(dist.marginal(sde).score, sde, (7, 4), batch_size=3,
                         project=solvers.with_rows(project), generator=seeded())
    assert torch.equal(res.samples[:, 0], target)
    assert sorted(set(seen)) == [(0, 3), (3, 6), (6, 7)]


def test_predictor_first_order_option(dist):
    sde = VESDE(N=15)
    order = []

    @solvers.register_predictor("_test_recording_predictor")
    def recording(score_fn, sde, x, t, *, probability_flow=False, generator=None):
        order.append("P")
        return x, x

    def corrector(score_fn, sde, x, t, *, snr, n_steps, eps, generator=None):
        order.append("C")
        return x, x

    try:
        solvers.sample(dist.marginal(sde).score, sde, (2, 4), predictor="_test_recording_predictor",
                       corrector=corrector, steps=2, generator=seeded())
        assert order == ["C", "P", "C", "P"]  # the original's order: corrector first
        order.clear()
        solvers.sample(dist.marginal(sde).score, sde, (2, 4), predictor="_test_recording_predictor",
                       corrector=corrector, steps=2, corrector_first=False, generator=seeded())
        assert order == ["P", "C", "P", "C"]
        with pytest.raises(ValueError, match="already registered"):
            solvers.register_predictor("_test_recording_predictor", recording)
    finally:
        solvers.PREDICTORS._items.pop("_test_recording_predictor", None)


def test_register_a_sampler(dist):
    def prior_mean(score_fn, sde, x, *, eps, denoise, generator, progress, callback):
        return torch.zeros_like(x)

    solvers.register_sampler("_test_zero", prior_mean)
    try:
        res = solvers.sample(dist.marginal(VPSDE()).score, VPSDE(), (3, 4), sampler="_test_zero")
        assert torch.all(res.samples == 0) and res.nfe == 0
    finally:
        solvers.SAMPLERS._items.pop("_test_zero", None)


@pytest.mark.parametrize("sampler", ["ode", "heun", "dpm_solver++", "unipc", "adaptive"])
@pytest.mark.parametrize("option,value", [("predictor", "euler_maruyama"),
                                          ("corrector", "none"), ("snr", 0.2),
                                          ("n_corrector_steps", 3)])
def test_pc_arguments_given_to_another_sampler_are_an_error(dist, sampler, option, value):
    """sample()'s PC arguments keep their defaults in its signature; one given another value
    is an error for a sampler that does not take it, naming the sampler and its options."""
    sde = VPSDE()
    score = Counter(dist.marginal(sde).score)
    options = ", ".join(solvers.get_sampler(sampler).options)
    with pytest.raises(ValueError, match=rf"sampler '{re.escape(sampler)}' does not take "
                                         rf"{option}; its options: {re.escape(options)}$"):
        solvers.sample(score, sde, (3, 4), sampler=sampler, **{option: value})
    assert score.calls == 0


def test_pc_arguments_at_their_defaults_do_not_stop_another_sampler(dist):
    """Passing the PC arguments at their defaults (as a caller forwarding them does) runs the ODE
    sampler as if they were left out."""
    sde = VPSDE()
    score = dist.marginal(sde).score
    plain = solvers.sample(score, sde, (3, 4), sampler="ode", generator=seeded())
    res = solvers.sample(score, sde, (3, 4), sampler="ode", predictor="reverse_diffusion",
                         corrector="langevin", snr=0.16, n_corrector_steps=1,
                         generator=seeded())
    assert torch.equal(res.samples, plain.samples)
    assert "predictor" not in res.info["options"]


def test_grids_run_from_T_to_eps():
    for sde in (VESDE(), VPSDE(), subVPSDE()):
        for name in solvers.GRIDS:
            t = solvers.get_grid(name)(sde, 10, sde.sampling_eps)
            assert t.shape == (11,) and t[0] == sde.T and t[-1] == sde.sampling_eps
            assert torch.all(t[1:] < t[:-1]), name
    # the Karras grid is rho-spaced in sigma / alpha (= sigma for VE)
    sde = VESDE()
    t = solvers.get_grid("karras")(sde, 4, 1e-5, rho=7.0)
    s = sde.sigma(t)
    u = torch.linspace(0, 1, 5, dtype=torch.float64)
    lo, hi = sde.sigma(torch.tensor(1e-5, dtype=torch.float64)), sde.sigma_max
    expected = (hi ** (1 / 7) + u * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
    torch.testing.assert_close(s, expected, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- bad input

def test_unknown_names_list_the_known_ones(dist):
    sde = VESDE()
    score = Counter(dist.marginal(sde).score)
    with pytest.raises(ValueError, match=r"unknown sampler 'nope'; known: .*dpm_solver\+\+.*pc"):
        solvers.sample(score, sde, (2, 4), sampler="nope")
    with pytest.raises(ValueError, match=r"unknown predictor 'rd'; known: ancestral_sampling, "
                                         r"euler_maruyama, none, reverse_diffusion"):
        solvers.sample(score, sde, (2, 4), predictor="rd")
    with pytest.raises(ValueError, match=r"unknown corrector 'lang'; known: ald, langevin, none"):
        solvers.sample(score, sde, (2, 4), corrector="lang")
    with pytest.raises(ValueError, match=r"unknown time grid 'x'; known: karras"):
        solvers.sample(score, sde, (2, 4), sampler="heun", grid="x")
    with pytest.raises(ValueError, match="unknown ODE method 'rk99'"):
        solvers.sample(score, sde, (2, 4), sampler="ode", method="rk99")
    with pytest.raises(ValueError, match=r"sampler 'heun' does not take rtol; its options: "):
        solvers.sample(score, sde, (2, 4), sampler="heun", rtol=1e-3)
    with pytest.raises(ValueError, match="sampler 'ode' does not take steps"):
        solvers.sample(score, sde, (2, 4), sampler="ode", steps=10)
    assert score.calls == 0 or score.batches == [2] * score.calls  # at most shape probes


def test_shape_that_does_not_fit_fails_before_any_work(dist):
    sde = VESDE()
    score = Counter(dist.marginal(sde).score)
    with pytest.raises(ValueError, match=r"samples of shape \[3\]"):
        solvers.sample(score, sde, (64, 3))
    assert score.batches == [2]  # only the two-sample probe ran

    def wrong_output(x, t):
        return x[:, :2]

    with pytest.raises(ValueError, match=r"returns \[2, 2\] for input of shape \[2, 4\]"):
        solvers.sample(wrong_output, sde, (8, 4))
    for bad in [(0, 4), (4,), (2, -1), "abc", (2.5, 4)]:
        with pytest.raises(ValueError, match="shape must be"):
            solvers.sample(score, sde, bad)
    with pytest.raises(ValueError, match="does not match x_init"):
        solvers.sample(score, sde, (3, 4), x_init=torch.zeros(2, 4))


def test_bad_values(dist):
    sde = VPSDE()
    score = dist.marginal(sde).score
    with pytest.raises(ValueError, match="eps must lie in"):
        solvers.sample(score, sde, (2, 4), eps=1.5)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        solvers.sample(score, sde, (2, 4), steps=0)
    with pytest.raises(ValueError, match=r"betas up to 2 >= 1"):
        solvers.sample(score, sde, (2, 4), steps=10)   # VP needs steps > beta_max = 20
    with pytest.raises(ValueError, match=r"corrector 'langevin' does not take step_lr; its "
                                         r"options: norm"):
        solvers.sample(score, sde, (2, 4), steps=30, corrector_options={"step_lr": 1e-5})
    with pytest.raises(ValueError, match="corrector 'langevin': norm must be one of batch, "
                                         "sample, got 'x'"):
        solvers.sample(score, sde, (2, 4), steps=30, corrector_options={"norm": "x"})
    with pytest.raises(ValueError, match="error_norm"):
        solvers.sample(score, sde, (2, 4), sampler="adaptive", error_norm="x")
    with pytest.raises(ValueError, match="sampler 'dpm_solver\\+\\+': order must be one of "
                                         "1, 2, 3, got 4"):
        solvers.sample(score, sde, (2, 4), sampler="dpm_solver++", order=4)


def test_generator_device_and_dtype(dist):
    """float64 sampling, and a CPU generator whatever the device."""
    sde = VESDE(N=20)
    res = solvers.sample(dist.marginal(sde).score, sde, (3, 4), dtype=torch.float64,
                         generator=seeded())
    assert res.samples.dtype == torch.float64
    if torch.cuda.is_available():  # pragma: no cover - GPU machines only
        a = solvers.sample(dist.marginal(sde).score, sde, (3, 4), device="cuda", generator=seeded(),
                           check_shape=False, sampler="heun", steps=4)
        b = solvers.sample(dist.marginal(sde).score, sde, (3, 4), generator=seeded(),
                           sampler="heun", steps=4)
        torch.testing.assert_close(a.samples.cpu(), b.samples, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler", ["pc", "ode", "heun", "dpm_solver++", "adaptive"])
def test_progress_bar(dist, sampler, capsys):
    sde = VPSDE(N=30)
    kw = {"steps": 3} if sampler in ("heun", "dpm_solver++") else {}
    res = solvers.sample(dist.marginal(sde).score, sde, (2, 4), sampler=sampler, progress=True,
                         generator=seeded(), **kw)
    assert res.samples.shape == (2, 4)
    assert sampler.replace("_", "") in capsys.readouterr().err.replace("_", "")


def test_time_vector():
    x = torch.zeros(3, 2, dtype=torch.float64)
    t = time_vector(0.5, x)
    assert t.shape == (3,) and t.dtype == torch.float64 and torch.all(t == 0.5)
