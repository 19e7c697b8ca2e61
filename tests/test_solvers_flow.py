"""solvers/flow.py: the one probability-flow ODE integrator, shared by the ODE sampler,
encode/decode and the likelihood: exact on a linear ODE, its last step ending at the end time,
and one check of methods and tolerances for every caller."""

import math

import pytest
import torch

import solvers
from likelihood import log_likelihood
from sde_lib import VPSDE, oracle
from solvers import flow


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "scipy_RK45"])
@pytest.mark.parametrize("t0,t1", [(0.1, 1.0), (1.0, 0.1)])
def test_solve_is_exact_on_a_linear_ode_and_stays_in_its_interval(method, t0, t1):
    """dy/dt = -t y has y(t1) = y(t0) exp(-(t1^2 - t0^2) / 2); no evaluation sees a time outside
    [t0, t1], in either direction."""
    seen = []

    def f(t, y):
        seen.append(float(t))
        return -t.to(y.dtype) * y

    y0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    y1 = flow.solve(f, y0, t0, t1, rtol=1e-9, atol=1e-9, method=method)
    torch.testing.assert_close(y1, y0 * math.exp(-(t1 ** 2 - t0 ** 2) / 2), rtol=1e-7, atol=0)
    lo, hi = sorted((t0, t1))
    assert min(seen) >= lo and max(seen) <= hi


def test_solve_takes_a_tuple_state():
    def f(t, y):
        return -y[0], torch.ones_like(y[1])

    a, b = flow.solve(f, (torch.ones(3, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)),
                      0.0, 2.0, rtol=1e-9, atol=1e-9, method="dopri5")
    torch.testing.assert_close(a, torch.full((3,), math.exp(-2.0), dtype=torch.float64))
    torch.testing.assert_close(b, torch.full((1,), 2.0, dtype=torch.float64))


@pytest.fixture(scope="module")
def setup():
    sde = VPSDE()
    dist = oracle.gaussian_mixture(torch.tensor([[1.0, 0.0], [-1.0, 0.5]]),
                                   torch.tensor([0.2, 0.3]))
    return sde, dist.marginal(sde).score, torch.tensor([[0.9, 0.1], [-1.0, 0.4]])


def test_sampler_and_likelihood_check_methods_one_way(setup):
    sde, score, x = setup
    with pytest.raises(ValueError, match=r"unknown ODE method 'rk99': give a torchdiffeq method, "
                                         r"one of dopri5, .*, or 'scipy_<method>'"):
        solvers.sample(score, sde, (2, 2), sampler="ode", method="rk99")
    with pytest.raises(ValueError, match=r"unknown ODE method 'rk99': give an adaptive "
                                         r"torchdiffeq method, one of dopri5, dopri8, bosh3"):
        log_likelihood(score, sde, x, method="rk99")
    # a fixed-step method samples, but gives no trusted likelihood (no error control)
    assert solvers.sample(score, sde, (2, 2), sampler="ode", method="rk4").samples.shape == (2, 2)
    with pytest.raises(ValueError, match="unknown ODE method 'rk4': give an adaptive"):
        log_likelihood(score, sde, x, method="rk4")
    for call in (lambda: solvers.sample(score, sde, (2, 2), sampler="ode", rtol=0.0),
                 lambda: log_likelihood(score, sde, x, atol=-1.0),
                 lambda: solvers.encode(score, sde, x, rtol=math.nan)):
        with pytest.raises(ValueError, match="the ODE tolerances rtol and atol must be finite "
                                             "and positive"):
            call()


def test_encode_decode_and_likelihood_share_the_drift(setup):
    """The latent of `encode` and the likelihood's latent solve the same ODE: at tight
    tolerances they agree."""
    sde, score, x = setup
    eps = sde.likelihood_eps
    z = solvers.encode(score, sde, x.double(), eps=eps, rtol=1e-9, atol=1e-9).z
    res = log_likelihood(score, sde, x.double(), estimator="exact", eps=eps, rtol=1e-9,
                         atol=1e-9)
    torch.testing.assert_close(res.z, z, rtol=1e-6, atol=1e-6)
    back = solvers.decode(score, sde, z, eps=eps, rtol=1e-9, atol=1e-9).samples
    torch.testing.assert_close(back, x.double(), rtol=1e-6, atol=1e-6)
