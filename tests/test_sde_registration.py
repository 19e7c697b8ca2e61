"""A new SDE is one subclass registered by name: this file adds an Ornstein-Uhlenbeck SDE (with
T = 6, not 1) through the public registry only, and runs it through get_sde, the samplers, the
likelihood, a training loss and the network conventions against the exact-score oracle."""

import math

import pytest
import torch
from ml_collections import ConfigDict

import solvers
from likelihood import log_likelihood
from networks import get_score_fn
from sde_lib import SDE, SDES, get_sde, oracle, register_sde, sde_from_description
from sde_lib.sdes import standard_normal_logp
from training.losses import dsm_loss, get_loss_fn

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)


class OrnsteinUhlenbeckSDE(SDE):
    """dx = -x dt + sqrt(2) dw on [0, 6]: alpha = e^-t, sigma = sqrt(1 - e^-2t), prior N(0, I)."""

    T = 6.0
    config_fields = {"rate": "model.rate"}

    def __init__(self, rate=1.0, N=1000):
        super().__init__(N)
        self.rate = float(rate)

    def sde(self, x, t):
        self.check_time(x, t)
        return -self.rate * x, torch.full_like(t, math.sqrt(2 * self.rate))

    def alpha(self, t):
        return torch.exp(-self.rate * t)

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(-2 * self.rate * t))

    def prior_sampling(self, shape, generator=None, device=None, dtype=torch.float32):
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z):
        return standard_normal_logp(z)


@pytest.fixture
def ou():
    register_sde("toy_ou", OrnsteinUhlenbeckSDE)
    try:
        # N = 6000 makes a step T/N = 1e-3 long, as VP's; the ODE sampler's last (denoising)
        # step is one reverse-diffusion step of that length.
        yield OrnsteinUhlenbeckSDE(N=6000)
    finally:
        SDES._items.pop("toy_ou")


def _moment_error(x):
    x = x.double()
    return float((x.mean(0) - MU).norm() / COV.trace().sqrt()
                 + (torch.cov(x.T) - COV).norm() / COV.norm())


def test_registered_sde_is_built_from_its_config_and_description(ou):
    cfg = ConfigDict({"training": {"sde": "toy_ou"}, "model": {"rate": 1.0, "num_scales": 600}})
    sde = get_sde(cfg)
    assert type(sde) is OrnsteinUhlenbeckSDE and sde.N == 600 and sde.name == "toy_ou"
    assert sde_from_description(sde.describe()).describe() == sde.describe()
    assert sde.with_steps(50).N == 50
    lam = sde.log_snr(torch.tensor([0.1, 1.0, 5.0], dtype=torch.float64))
    assert torch.allclose(sde.t_of_log_snr(lam), torch.tensor([0.1, 1.0, 5.0],
                                                               dtype=torch.float64), rtol=1e-8)
    with pytest.raises(ValueError, match="already registered"):
        register_sde("vesde", OrnsteinUhlenbeckSDE)


@pytest.mark.parametrize("kw", [dict(sampler="pc", steps=600), dict(sampler="heun", steps=40),
                                dict(sampler="unipc", steps=12),
                                dict(sampler="ode", rtol=1e-5, atol=1e-5)])
def test_samplers_reach_the_exact_distribution(ou, kw):
    score = oracle.gaussian(MU, COV).marginal(ou).score
    x = solvers.sample(score, ou, (3000, 2), generator=torch.Generator().manual_seed(0),
                       **kw).samples
    assert _moment_error(x) < 0.09, kw


def test_likelihood_is_the_exact_log_density(ou):
    p = oracle.gaussian(MU, COV).marginal(ou)
    eps = ou.likelihood_eps
    x = p.sample(torch.full((4,), eps), generator=torch.Generator().manual_seed(1))
    exact = p.log_prob(x.double(), torch.full((4,), eps, dtype=torch.float64))
    res = log_likelihood(p.score, ou, x, estimator="exact")
    z = res.z.double()
    # the prior N(0, I) stands in for p_T (alpha(6) = 0.0025): that mismatch aside, exact
    mismatch = ou.prior_logp(z) - p.log_prob(z, torch.full((4,), ou.T, dtype=torch.float64))
    assert (res.logp.double() - exact).abs().max() < 0.01
    assert (res.logp.double() - exact - mismatch).abs().max() < 5e-4


def test_dsm_loss_is_minimised_by_the_exact_score(ou):
    """The exact score gives a lower DSM loss than a shifted one, with the same draws, and a
    training loss built from a config trains a time-label network on the SDE."""
    dist = oracle.gaussian(MU, COV)
    batch = dist.sample(4000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    score = dist.marginal(ou).score
    exact = dsm_loss(score, ou, batch, generator=torch.Generator().manual_seed(3))
    shifted = dsm_loss(lambda x, t: score(x, t) + 0.3, ou, batch,
                       generator=torch.Generator().manual_seed(3))
    assert exact < shifted
    # E||sigma s* + z||^2 / 2 summed over D = 2 dims is D/2 minus the Fisher term: below 1.
    assert 0 < float(exact) < 1.0

    class Net(torch.nn.Module):
        def forward(self, x, labels):
            self.labels = labels
            return torch.zeros_like(x)

    net = Net()
    cfg = ConfigDict({"training": {"continuous": True, "reduce_mean": False}})
    loss = get_loss_fn(cfg, ou)(net, batch.float()[:8], generator=torch.Generator().manual_seed(4))
    assert torch.isfinite(loss) and 0 <= float(net.labels.min()) <= float(net.labels.max()) <= 999
    t = torch.full((2,), ou.T)
    get_score_fn(ou, net)(torch.zeros(2, 2), t)
    assert torch.allclose(net.labels, torch.full((2,), 999.0))
