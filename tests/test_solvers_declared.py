"""solvers/declared.py: each sampler is declared once (function, default steps and grid, options
with types, defaults and help), and `sample`, the command line and the recorded options read that
declaration."""

import inspect
import re
from pathlib import Path

import pytest
import torch

import solvers
from sde_lib import VESDE, VPSDE, oracle
from solvers.declared import PROTOCOL, SDE_N, Option, option_table

ROOT = Path(__file__).resolve().parents[1]
SAMPLERS = solvers.list_samplers()


@pytest.fixture(scope="module")
def mixture():
    return oracle.gaussian_mixture(torch.tensor([[2.0, 0.0], [-1.0, 1.5]]),
                                   torch.tensor([0.2, 0.1]))


@pytest.mark.parametrize("name", SAMPLERS)
def test_a_sampler_function_names_exactly_its_declared_options(name):
    """The function takes the protocol keywords and the declared options, and holds no defaults
    for the options: the declaration is their one home."""
    spec = solvers.get_sampler(name)
    params = inspect.signature(spec.fn).parameters
    kw_only = {k for k, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert kw_only == set(PROTOCOL) | set(spec.options)
    assert all(params[k].default is inspect.Parameter.empty for k in spec.options)
    assert all(o.help and "\n" not in o.help for o in spec.options.values())


def test_sample_signature_keeps_the_pc_samplers_declared_defaults():
    params = inspect.signature(solvers.sample).parameters
    pc = solvers.get_sampler("pc").defaults()
    for k in ("predictor", "corrector", "snr", "n_corrector_steps"):
        assert params[k].default == pc[k]


def test_options_shared_by_samplers_have_one_type():
    table = option_table()
    assert table["rtol"].type is solvers.get_sampler("adaptive").options["rtol"].type
    assert {"steps", "grid", "predictor", "corrector", "snr", "n_corrector_steps"} == {
        k for k, o in table.items() if o.flag}


@pytest.mark.parametrize("name", SAMPLERS)
def test_recorded_options_are_complete_and_reproduce_the_samples(name, mixture):
    """info['options'] holds every declared option (hooks aside), steps and grid resolved, as
    JSON data; sampling again with exactly those options gives the same samples bit for bit."""
    sde = VPSDE(N=30)
    score = mixture.marginal(sde).score
    res = solvers.sample(score, sde, (4, 2), sampler=name, generator=torch.Generator()
                         .manual_seed(1))
    spec = solvers.get_sampler(name)
    record = res.info["options"]
    assert set(record) == {"sampler", "eps", "denoise"} | {
        k for k, o in spec.options.items() if not o.hook}
    if "steps" in spec.options:
        default = sde.N if spec.default_steps == SDE_N else spec.default_steps
        assert record["steps"] == res.info["steps"] == default
    if "grid" in spec.options:
        assert record["grid"] == spec.default_grid
    again = solvers.sample(score, sde, (4, 2), generator=torch.Generator().manual_seed(1),
                           **record)
    assert torch.equal(again.samples, res.samples) and again.info["options"] == record


def test_an_explicit_grid_is_recorded_with_its_steps(mixture):
    sde = VESDE()
    score = mixture.marginal(sde).score
    grid = torch.tensor([1.0, 0.3, 0.05, 1e-5], dtype=torch.float64)
    res = solvers.sample(score, sde, (3, 2), sampler="unipc", grid=grid,
                         generator=torch.Generator().manual_seed(2))
    assert res.info["options"]["grid"] == grid.tolist() and res.info["options"]["steps"] == 3
    again = solvers.sample(score, sde, (3, 2), generator=torch.Generator().manual_seed(2),
                           **res.info["options"])
    assert torch.equal(again.samples, res.samples)


def test_a_new_sampler_is_one_declaration(mixture):
    """A sampler registered with its options gets defaults, the one rule for options it does not
    take, choices checked, a place in the command line's option table, and a full record."""
    seen = {}

    @solvers.register_sampler("_test_scaled", steps=3, options=(
        Option("scale", float, 0.5, "factor applied at each step"),
        Option("mode", str, "a", "which mode", choices=("a", "b"))))
    def scaled(score_fn, sde, x, *, eps, denoise, generator, progress, callback, steps, scale,
               mode):
        seen.update(steps=steps, scale=scale, mode=mode)
        for _ in range(steps):
            x = x * scale
        return x

    try:
        sde = VESDE()
        score = mixture.marginal(sde).score
        x = torch.ones(2, 2)
        res = solvers.sample(score, sde, x_init=x, sampler="_test_scaled")
        assert seen == dict(steps=3, scale=0.5, mode="a")
        assert torch.equal(res.samples, x * 0.125)
        assert res.info["options"] == {"sampler": "_test_scaled", "eps": sde.sampling_eps,
                                       "denoise": True, "steps": 3, "scale": 0.5, "mode": "a"}
        assert torch.equal(scaled(score, sde, x, scale=2.0), x * 8)  # called directly
        with pytest.raises(ValueError, match=r"sampler '_test_scaled' does not take rtol, snr; "
                                             r"its options: steps, scale, mode$"):
            solvers.sample(score, sde, x_init=x, sampler="_test_scaled", rtol=1.0, snr=0.3)
        with pytest.raises(ValueError, match=r"sampler '_test_scaled': mode must be one of a, b"):
            solvers.sample(score, sde, x_init=x, sampler="_test_scaled", mode="c")
        assert option_table()["scale"].default == 0.5
        assert option_table()["scale"].parse("2.5") == 2.5
    finally:
        solvers.SAMPLERS._items.pop("_test_scaled", None)


def test_corrector_options_are_declared():
    langevin = solvers.get_corrector("langevin")
    assert list(langevin.options) == ["norm"] and langevin.options["norm"].default == "batch"
    assert list(solvers.get_corrector("ald").options) == ["step_lr"]
    assert solvers.get_corrector("none").options == {}


def test_a_plain_function_is_a_sampler_without_options(mixture):
    def prior(score_fn, sde, x, *, eps, denoise, generator, progress, callback):
        return x

    sde = VESDE()
    res = solvers.sample(mixture.marginal(sde).score, sde, x_init=torch.zeros(2, 2),
                         sampler=prior)
    assert res.info["options"] == {"sampler": "prior", "eps": sde.sampling_eps, "denoise": True}
    with pytest.raises(ValueError, match=r"sampler 'prior' does not take steps; its options: "
                                         r"\(none\)"):
        solvers.sample(mixture.marginal(sde).score, sde, (2, 2), sampler=prior, steps=3)


def test_no_signature_inspection_and_no_private_torchdiffeq():
    """Options are read from the declarations, not from signatures; torchdiffeq is used through
    its public API only."""
    for folder in ("solvers", "sde_cli"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            assert not re.search(r"inspect\.signature|import inspect", text), path
    for path in ROOT.rglob("*.py"):
        if "tests" not in path.parts:
            assert "torchdiffeq._impl" not in path.read_text(), path
