"""Losses against the exact-score oracle: each is minimised by the exact (noise-conditional) score.

For a loss of the form E[lambda || s(x_t) - target ||^2] with E[target | x_t] = s*(x_t), the
per-sample change from s* to s* + delta is

    d = lambda ||delta||^2 + 2 lambda <delta, s* - target>,

whose second term has mean zero exactly when s* is the minimiser. With common random numbers we
check (1) the loss rises, (2) the residual d - lambda ||delta||^2 has mean zero within 5 standard
errors, and (3) the same statistic is far from zero for a wrong "score", so the check has power.
"""

import math

import pytest
import torch

from sde_lib import VESDE, VPSDE, expand_to, oracle, subVPSDE
from training.losses import TrainingLoss, ddpm_loss, dsm_loss, smld_loss, smld_sigmas

N_SAMPLES = 20000
EVENT = (1, 2, 2)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(3, 4, generator=g, dtype=torch.float64) * 1.5
    covs = 0.05 + torch.rand(3, 4, generator=g, dtype=torch.float64) * 0.5
    dist = oracle.gaussian_mixture(means, covs, weights=[0.5, 0.3, 0.2], event_shape=EVENT)
    return dist, dist.sample(N_SAMPLES, generator=g, dtype=torch.float64)


def _direction():
    u = torch.tensor([0.6, -0.3, 0.5, 0.8], dtype=torch.float64).reshape(EVENT)
    return u


def _reduce(sq, reduce_mean):
    sq = sq.reshape(sq.shape[0], -1)
    return sq.mean(1) if reduce_mean else 0.5 * sq.sum(1)


def _check_minimum(loss_of, base, delta, expect_minimum=True):
    """loss_of(fn) -> per-sample losses with fixed noise (and sets loss_of.last_weight_quad =
    lambda ||delta||^2 of its last call); delta(x, t) -> [B, ...]."""
    l0 = loss_of(base)
    l1 = loss_of(lambda x, t: base(x, t) + delta(x, t))
    d = l1 - l0
    quad = loss_of.last_weight_quad
    resid = d - quad
    se = resid.std() / math.sqrt(len(resid))
    z = (resid.mean() / se).item()
    if expect_minimum:
        assert d.mean() > 0
        assert abs(z) < 5, (f"residual mean {resid.mean().item():.3g} is {z:.1f} standard errors "
                            f"from 0")
        assert torch.allclose(d.mean(), quad.mean(), rtol=0.15)
    else:
        assert abs(z) > 8, f"a wrong score should fail the check, got z = {z:.1f}"
    return z


def _loss_and_input(loss, fn, *args, **kwargs):
    """loss(fn, *args, **kwargs) and the input x the loss gave the network fn(x, labels)."""
    seen = {}

    def recording(x, labels):
        seen["x"] = x
        return fn(x, labels)

    return loss(recording, *args, **kwargs), seen["x"]


class _DSM:
    """Per-sample DSM losses with fixed t and z; records lambda ||delta||^2 of the last call."""

    def __init__(self, sde, batch, likelihood_weighting, reduce_mean, seed=1):
        g = torch.Generator().manual_seed(seed)
        self.sde, self.batch = sde, batch
        self.lw, self.rm = likelihood_weighting, reduce_mean
        eps = sde.training_eps
        self.t = torch.rand(len(batch), generator=g, dtype=batch.dtype) * (sde.T - eps) + eps
        self.z = torch.randn(batch.shape, generator=g, dtype=batch.dtype)
        _, std = sde.marginal_prob(batch, self.t)
        self.weight = (sde.sde(batch, self.t)[1] ** 2) if likelihood_weighting else std ** 2
        self.last_weight_quad = None
        self.delta_fn = None

    def __call__(self, score_fn):
        captured = {}

        def wrapped(x, t):
            out = score_fn(x, t)
            captured["x"], captured["out"] = x, out
            return out

        losses = dsm_loss(wrapped, self.sde, self.batch, reduce_mean=self.rm,
                          likelihood_weighting=self.lw, t=self.t, z=self.z, batch_mean=False)
        if self.delta_fn is not None:
            delta = self.delta_fn(captured["x"], self.t)
            self.last_weight_quad = self.weight * _reduce(delta ** 2, self.rm)
        return losses


@pytest.mark.parametrize("sde", [VESDE(sigma_min=0.01, sigma_max=10.0), VPSDE(), subVPSDE()],
                         ids=["ve", "vp", "subvp"])
@pytest.mark.parametrize("likelihood_weighting", [False, True], ids=["sigma2", "lw"])
def test_dsm_minimised_by_exact_score(sde, likelihood_weighting):
    dist, x0 = _data()
    exact = dist.marginal(sde).score
    u = _direction()
    loss_of = _DSM(sde, x0, likelihood_weighting, reduce_mean=False)

    def delta(x, t):  # a smooth perturbation of the score, scaled to the score's size
        std = sde.marginal_prob(x, t)[1]
        scale = 0.5 / std if not likelihood_weighting else 0.5 * torch.ones_like(std)
        return expand_to(scale, x) * u * torch.tanh(x.sum((1, 2, 3), keepdim=True))

    loss_of.delta_fn = delta
    _check_minimum(loss_of, exact, delta)


def test_dsm_check_has_power():
    """The sub-VP loss is not minimised by the VP marginal's score (different std)."""
    dist, x0 = _data()
    sde, wrong_sde = subVPSDE(), VPSDE()
    wrong = dist.marginal(wrong_sde).score
    loss_of = _DSM(sde, x0, likelihood_weighting=False, reduce_mean=False)
    # Perturb along the error of the wrong score: the cross term is then far from zero.
    exact = dist.marginal(sde).score
    loss_of.delta_fn = lambda x, t: exact(x, t) - wrong(x, t)
    _check_minimum(loss_of, wrong, loss_of.delta_fn, expect_minimum=False)


def test_dsm_reduce_mean_is_mean_and_half_sum_otherwise():
    dist, x0 = _data()
    sde = VPSDE()
    a = _DSM(sde, x0[:64], False, reduce_mean=True)(dist.marginal(sde).score)
    b = _DSM(sde, x0[:64], False, reduce_mean=False)(dist.marginal(sde).score)
    D = x0[0].numel()
    torch.testing.assert_close(b, a * D / 2)


def test_dsm_draws_time_in_eps_T_and_is_reproducible():
    sde = VESDE()
    x = torch.zeros(4096, 1, 2, 2)
    seen = []

    def score_fn(xt, t):
        seen.append(t)
        return torch.zeros_like(xt)

    l1 = dsm_loss(score_fn, sde, x, eps=0.25, generator=torch.Generator().manual_seed(3))
    l2 = dsm_loss(score_fn, sde, x, eps=0.25, generator=torch.Generator().manual_seed(3))
    assert l1.item() == l2.item()
    t = seen[0]
    assert t.min() >= 0.25 and t.max() <= 1.0 and t.min() < 0.26 and t.max() > 0.99


def test_smld_loss_minimised_by_exact_noise_conditional_score():
    dist, x0 = _data()
    sde = VESDE(sigma_min=0.01, sigma_max=10.0, N=10)
    p_t = dist.marginal(sde)
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, sde.N, (len(x0),), generator=g)
    z = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    sigmas = smld_sigmas(sde).double()[labels]
    # Label j is the j-th largest sigma = sigma(t) at t = 1 - j / (N - 1).
    assert torch.allclose(sigmas, sde.marginal_prob(x0, 1 - labels.double() / (sde.N - 1))[1])

    def exact(x, lab):
        return p_t.score(x, 1 - lab.to(x.dtype) / (sde.N - 1))

    u = _direction()

    def delta(x, lab):
        scale = expand_to(0.5 / smld_sigmas(sde).double()[lab], x)
        return scale * u * torch.tanh(x.sum((1, 2, 3), keepdim=True))

    def loss_of(fn):
        out, x = _loss_and_input(smld_loss, fn, sde, x0, labels=labels, z=z, batch_mean=False)
        loss_of.last_weight_quad = sigmas ** 2 * _reduce(delta(x, labels) ** 2, False)
        return out

    _check_minimum(loss_of, exact, delta)


class _DiscreteVP:
    """The DDPM marginals N(sqrt(abar_i) x0, (1 - abar_i) I) indexed by t = i, for the oracle."""

    def __init__(self, vpsde):
        self.a, self.s = vpsde.sqrt_alphas_cumprod.double(), vpsde.sqrt_1m_alphas_cumprod.double()

    def check_time(self, x, t):
        pass

    def coefficients(self, t):
        i = t.long()
        return self.a[i].to(t.dtype), self.s[i].to(t.dtype)


def test_ddpm_loss_minimised_by_exact_noise_prediction():
    dist, x0 = _data()
    sde = VPSDE(N=20)
    p_i = dist.marginal(_DiscreteVP(sde))
    s = sde.sqrt_1m_alphas_cumprod.double()
    g = torch.Generator().manual_seed(6)
    labels = torch.randint(0, sde.N, (len(x0),), generator=g)
    z = torch.randn(x0.shape, generator=g, dtype=x0.dtype)

    def exact(x, lab):  # eps_hat = -sqrt(1 - abar_i) * score
        return -expand_to(s[lab], x) * p_i.score(x, lab.to(x.dtype))

    u = _direction()

    def delta(x, lab):
        return 0.3 * u * torch.tanh(x.sum((1, 2, 3), keepdim=True))

    def loss_of(fn):
        out, x = _loss_and_input(ddpm_loss, fn, sde, x0, labels=labels, z=z, batch_mean=False)
        loss_of.last_weight_quad = _reduce(delta(x, labels) ** 2, True)
        return out

    _check_minimum(loss_of, exact, delta)


def test_discrete_losses_check_their_sde():
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(TypeError, match="VESDE"):
        smld_loss(lambda x, l: x, VPSDE(), x)
    with pytest.raises(TypeError, match="VPSDE"):
        ddpm_loss(lambda x, l: x, subVPSDE(), x)
    with pytest.raises(ValueError, match="continuous"):
        TrainingLoss(VESDE(), "smld", likelihood_weighting=True)
    with pytest.raises(ValueError, match="VP SDE"):
        TrainingLoss(subVPSDE(), "ddpm")


def test_training_loss_draw_matches_generator_draws():
    """Explicit noise from `draw` gives the same loss as letting the loss draw it."""
    sde = VPSDE()
    x = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    model = lambda xt, labels: xt * 0.3 + labels[:, None, None, None] * 1e-3  # noqa: E731
    loss = TrainingLoss(sde, "ddpm", reduce_mean=True)
    noise = loss.draw(x.shape, generator=torch.Generator().manual_seed(4))
    a = loss(model, x, noise)
    b = ddpm_loss(model, sde, x, reduce_mean=True, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)


def test_dsm_is_registered_as_an_objective_with_the_same_value():
    from training.objectives import get_objective
    dist, x0 = _data()
    sde = VPSDE()
    score = dist.marginal(sde).score
    g = torch.Generator().manual_seed(2)
    t = torch.rand(64, generator=g, dtype=x0.dtype) * 0.9 + 0.1
    z = torch.randn((64,) + EVENT, generator=g, dtype=x0.dtype)
    a = get_objective("dsm")(score, x0[:64], t, sde=sde, z=z, weighting="likelihood")
    b = dsm_loss(score, sde, x0[:64], t=t, z=z, likelihood_weighting=True)
    torch.testing.assert_close(a, b)


def test_config_objective_swaps_the_loss():
    """training.objective = 'ssm_vr' trains with sliced score matching at the same times."""
    from ml_collections import ConfigDict
    from training.losses import get_loss_fn
    sde = VESDE(sigma_max=5.0)
    c = ConfigDict({"training": {"continuous": True, "reduce_mean": False,
                                 "likelihood_weighting": False, "objective": "ssm_vr"}})
    loss = get_loss_fn(c, sde)
    assert loss.objective is not None
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    model = lambda x, labels: net(x) / labels[:, None, None, None]  # noqa: E731
    x = torch.rand(4, 1, 4, 4)
    value = loss(model, x, generator=torch.Generator().manual_seed(0))
    value.backward()
    assert torch.isfinite(value) and net.weight.grad is not None


@pytest.mark.parametrize("sde", [VESDE(sigma_min=0.01, sigma_max=10.0), VPSDE(), subVPSDE()],
                         ids=["ve", "vp", "subvp"])
@pytest.mark.parametrize("likelihood_weighting", [False, True], ids=["sigma2", "lw"])
def test_importance_sampling_keeps_the_expected_loss(sde, likelihood_weighting):
    dist, x0 = _data()
    score = lambda x, t: 0.9 * dist.marginal(sde).score(x, t)  # noqa: E731  (a nonzero loss)
    losses = {IS: dsm_loss(score, sde, x0, likelihood_weighting=likelihood_weighting,
                           importance_sampling=IS, batch_mean=False,
                           generator=torch.Generator().manual_seed(5 + IS))
              for IS in (False, True)}
    mean = {k: v.mean() for k, v in losses.items()}
    se = math.sqrt(sum(v.var() / len(v) for v in losses.values()))
    assert abs(mean[True] - mean[False]) < 4 * se, (mean, se)
    if likelihood_weighting and not isinstance(sde, VESDE):
        # g^2 / sigma^2 grows like 1/t near 0 for VP and sub-VP: the variance falls sharply.
        assert losses[True].var() * 10 < losses[False].var()


def test_importance_sampled_draws_are_the_generators_and_need_continuous_training():
    from likelihood.importance import ImportanceTime
    sde = VPSDE()
    x = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    score = lambda xt, t: -xt  # noqa: E731
    loss = TrainingLoss(sde, "dsm", likelihood_weighting=True, importance_sampling=True)
    noise = loss.draw(x.shape, generator=torch.Generator().manual_seed(4))
    t = ImportanceTime(sde, sde.training_eps).sample(8, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(noise["t"], t)
    a = dsm_loss(score, sde, x, likelihood_weighting=True, importance_sampling=True, **noise)
    b = dsm_loss(score, sde, x, likelihood_weighting=True, importance_sampling=True,
                 generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    unweighted = dsm_loss(score, sde, x, likelihood_weighting=True, **noise)
    assert not torch.allclose(a, unweighted)
    with pytest.raises(ValueError, match="continuous"):
        TrainingLoss(VESDE(), "smld", importance_sampling=True)
