"""The forward SDEs against simulation and closed forms; the exact-score oracle against autograd."""

import math

import numpy as np
import pytest
import torch
from ml_collections import ConfigDict
from scipy import stats

from sde_lib import (SDE, SDES, VESDE, VPSDE, expand_to, get_sde, oracle, sde_from_description,
                     sde_names, subVPSDE)

# Every registered SDE runs through the per-SDE tests below; the short names are for the tests
# that are about one of the paper's three.
ALL = sde_names()
SHORT = {"ve": "vesde", "vp": "vpsde", "subvp": "subvpsde"}


def make(name, N=1000):
    return SDES.get(SHORT.get(name, name))(N=N)


def euler_maruyama(sde, x0, t_end, steps, generator):
    """Simulate the forward SDE from t = 0 with `steps` Euler-Maruyama steps."""
    x = x0.clone()
    dt = t_end / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), i * dt, dtype=x.dtype)
        drift, diffusion = sde.sde(x, t)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = x + drift * dt + expand_to(diffusion, x) * math.sqrt(dt) * z
    return x


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("frac", [0.3, 1.0])
def test_marginal_prob_matches_simulation(name, frac):
    sde = make(name)
    t_end = frac * sde.T
    g = torch.Generator().manual_seed(0)
    n = 20000
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64).expand(n, 2).clone()
    xt = euler_maruyama(sde, x0, t_end, 2000, g)
    t = torch.full((n,), t_end, dtype=torch.float64)
    mean, std = sde.marginal_prob(x0, t)
    _, std0 = sde.marginal_prob(x0, torch.zeros(n, dtype=torch.float64))
    # From a point mass at t=0 the variance gained is std(t)^2 - alpha(t)^2 std(0)^2: VE's
    # marginal_prob counts sigma_min at t = 0 (the original's convention), the others have std(0) = 0.
    alpha = mean[0, 0] / x0[0, 0]
    var_expected = std[0] ** 2 - alpha ** 2 * std0[0] ** 2
    emp_mean = xt.mean(0)
    emp_var = xt.var(0)
    assert torch.allclose(emp_mean, mean[0], atol=4 * math.sqrt(var_expected / n) + 1e-3)
    rel = (emp_var / var_expected - 1).abs().max()
    assert rel < 4 * math.sqrt(2 / n) + 0.01, (emp_var, var_expected)


@pytest.mark.parametrize("name", ALL)
def test_kernel_solves_the_moment_equations_of_the_sde(name):
    """For dx = f(t) x dt + g(t) dw the kernel's alpha and sigma obey d log alpha / dt = f(t)
    and d sigma^2 / dt = 2 f(t) sigma^2 + g(t)^2 (central differences, float64)."""
    sde = make(name)
    t = torch.tensor([0.05, 0.2, 0.5, 0.8, 0.97], dtype=torch.float64) * sde.T
    h = 1e-5 * sde.T
    one = torch.ones(5, 1, dtype=torch.float64)
    drift, diffusion = sde.sde(one, t)
    f = drift[:, 0]
    a_p, s_p = sde.coefficients(t + h)
    a_m, s_m = sde.coefficients(t - h)
    _, sigma = sde.coefficients(t)
    dlog_alpha = (torch.log(a_p) - torch.log(a_m)) / (2 * h)
    dvar = (s_p ** 2 - s_m ** 2) / (2 * h)
    assert torch.allclose(dlog_alpha, f, rtol=1e-5, atol=1e-7)
    assert torch.allclose(dvar, 2 * f * sigma ** 2 + diffusion ** 2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ALL)
def test_log_snr_and_its_inverse(name):
    """log_snr = log(alpha / sigma), decreasing; t_of_log_snr inverts it, and the closed forms
    of the subclasses agree with the base class's bisection."""
    sde = make(name)
    t = torch.tensor([0.01, 0.1, 0.4, 0.7, 0.99], dtype=torch.float64) * sde.T
    alpha, sigma = sde.coefficients(t)
    lam = sde.log_snr(t)
    assert torch.allclose(lam, torch.log(alpha / sigma), rtol=1e-12)
    assert (lam[1:] < lam[:-1]).all()
    assert torch.allclose(sde.t_of_log_snr(lam), t, rtol=1e-7, atol=1e-9 * sde.T)
    assert torch.allclose(SDE.t_of_log_snr(sde, lam), t, rtol=1e-7, atol=1e-9 * sde.T)


@pytest.mark.parametrize("name", ALL)
def test_description_config_and_other_n_rebuild_the_same_sde(name):
    sde = make(name, N=50)
    d = sde.describe()
    assert d["name"] == name == sde.name and d["N"] == 50
    again = sde_from_description(d)
    t = torch.linspace(0.01, 1.0, 7, dtype=torch.float64) * sde.T
    assert type(again) is type(sde) and again.describe() == d
    assert all(torch.equal(a, b) for a, b in zip(again.coefficients(t), sde.coefficients(t)))
    other = sde.with_steps(20)
    assert other.N == 20 and sde.N == 50 and other.params() == sde.params()
    assert sde.with_steps(50) is sde
    fields = {f.split(".")[1]: getattr(sde, p) for p, f in sde.config_fields.items()}
    cfg = ConfigDict({"training": {"sde": name}, "model": {**fields, "num_scales": 50}})
    assert get_sde(cfg).describe() == d


@pytest.mark.parametrize("name", ALL)
def test_discretize_consistent_with_sde(name):
    """f_i and G_i of `discretize` approach f dt and g sqrt(dt) as N grows."""
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.05, 0.2, 0.5, 0.8, 1.0], dtype=torch.float64) * make(name).T
    errors = []
    for N in [100, 1000, 10000]:
        sde = make(name, N)
        f, G = sde.discretize(x, t)
        drift, diffusion = sde.sde(x, t)
        dt = sde.T / N
        err_f = (f - drift * dt).abs().max() / (drift * dt).abs().max().clamp(min=1e-12)
        err_G = ((G / (diffusion * math.sqrt(dt))) - 1).abs().max()
        errors.append(max(float(err_f) if drift.abs().max() > 0 else 0.0, float(err_G)))
    assert errors[0] > errors[1] > errors[2] or errors[-1] < 1e-6, errors
    assert errors[-1] < 0.01, errors


def test_vp_discretize_is_ddpm():
    sde = VPSDE(N=1000)
    x = torch.ones(2, 3)
    t = torch.tensor([0.0, 1.0])
    f, G = sde.discretize(x, t)
    beta = torch.tensor([0.1 / 1000, 20.0 / 1000])
    assert torch.allclose(G, beta.sqrt())
    assert torch.allclose(f, (torch.sqrt(1 - beta)[:, None] - 1) * x)


def test_ve_discretize_is_smld():
    sde = VESDE(N=10)
    x = torch.zeros(3, 2)
    t = torch.tensor([0.0, 5 / 9, 1.0])
    _, G = sde.discretize(x, t)
    s = np.exp(np.linspace(np.log(0.01), np.log(50), 10))
    expected = [s[0], np.sqrt(s[5] ** 2 - s[4] ** 2), np.sqrt(s[9] ** 2 - s[8] ** 2)]
    assert np.allclose(G.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_prior_logp_closed_form(name):
    """The prior is N(0, s^2 I) with s = sigma(T) to two decimals (alpha(T) is 1 or nearly 0)."""
    sde = make(name)
    z = sde.prior_sampling((4, 2, 3, 3), generator=torch.Generator().manual_seed(2),
                           dtype=torch.float64)
    scale = round(float(sde.sigma(torch.tensor([sde.T], dtype=torch.float64))), 2)
    big = sde.prior_sampling((40000,), generator=torch.Generator().manual_seed(3))
    assert abs(float(big.std()) / scale - 1) < 0.02
    expected = stats.multivariate_normal(np.zeros(18), scale ** 2 * np.eye(18)).logpdf(
        z.reshape(4, -1).numpy())
    assert np.allclose(sde.prior_logp(z).numpy(), expected, rtol=1e-10)


def test_prior_sampling_reproducible():
    sde = VESDE()
    a = sde.prior_sampling((3, 4), generator=torch.Generator().manual_seed(5))
    b = sde.prior_sampling((3, 4), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert a.shape == (3, 4)
    assert abs(sde.prior_sampling((20000,), generator=torch.Generator().manual_seed(6)).std()
               - 50.0) < 1.0


def _linear_beta_alpha(t):
    return torch.exp(-0.5 * (0.1 * t + 0.5 * (20 - 0.1) * t ** 2))  # exp(-1/2 int_0^t beta)


def _cosine_alpha_bar(t, s=0.008):
    return torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2


# name -> t -> (alpha(t), sigma(t)), from the papers (defaults of each SDE). Every registered
# SDE must have its closed form here.
CLOSED_FORMS = {
    "vesde": lambda t: (torch.ones_like(t), 0.01 * 5000.0 ** t),
    "vpsde": lambda t: (_linear_beta_alpha(t), torch.sqrt(1 - _linear_beta_alpha(t) ** 2)),
    "subvpsde": lambda t: (_linear_beta_alpha(t), 1 - _linear_beta_alpha(t) ** 2),
    "cosine_vpsde": lambda t: (_cosine_alpha_bar(t).sqrt(), torch.sqrt(1 - _cosine_alpha_bar(t))),
    "edm_vesde": lambda t: (torch.ones_like(t), t),
}


@pytest.mark.parametrize("name", ALL)
def test_marginal_closed_forms(name):
    sde = make(name)
    t = torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=torch.float64) * sde.T
    mean, std = sde.marginal_prob(torch.ones(4, 1, dtype=torch.float64), t)
    alpha, sigma = CLOSED_FORMS[name](t)
    assert torch.allclose(mean[:, 0], alpha, rtol=1e-10, atol=1e-12)
    assert torch.allclose(std, sigma, rtol=1e-10, atol=1e-12)


def test_new_sdes_keep_their_papers_ends():
    """cosine VP: truncated at T = 0.995 (alpha_bar(T) = 6.1e-5, beta(T) = 400); EDM: T = 80,
    sigma(t) = t, prior N(0, 80^2 I), time limits 0.002."""
    cos, edm = make("cosine_vpsde"), make("edm_vesde")
    T = torch.tensor([cos.T], dtype=torch.float64)
    assert cos.T == 0.995 and cos.alpha(T) ** 2 == pytest.approx(6.07e-5, rel=0.01)
    assert float(cos.beta(T)) == pytest.approx(400, rel=0.01)
    assert cos.noise_labels == "time" and cos.discrete_model is None
    assert edm.T == 80.0 and edm.noise_labels == "sigma" and edm.discrete_model is None
    assert edm.training_eps == edm.sampling_eps == edm.likelihood_eps == 0.002


def _gaussian_score_numpy(x, t, sde, mu, cov):
    """Independent closed form: score of N(alpha mu, alpha^2 cov + sigma^2 I), in NumPy."""
    ones = torch.ones(1, 1, dtype=torch.float64)
    out = []
    for xi, ti in zip(x.numpy(), t.numpy()):
        a, s = sde.marginal_prob(ones, torch.tensor([ti], dtype=torch.float64))
        a, s = float(a), float(s)
        C = a ** 2 * cov + s ** 2 * np.eye(len(mu))
        out.append(-np.linalg.solve(C, xi - a * mu))
    return np.stack(out)


@pytest.mark.parametrize("name", ALL)
def test_reverse_drift_with_oracle_score(name):
    sde = make(name)
    g = torch.Generator().manual_seed(3)
    D = 4
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    cov = oracle.random_covariance(D, generator=g)
    p_t = oracle.gaussian(mu, cov).marginal(sde)
    x = torch.randn(6, D, generator=g, dtype=torch.float64) * 2
    t = (torch.rand(6, generator=g, dtype=torch.float64) * 0.999 + 1e-3) * sde.T
    score = _gaussian_score_numpy(x, t, sde, mu.numpy(), cov.numpy())
    drift, diffusion = sde.sde(x, t)
    g2 = (diffusion ** 2).numpy()[:, None]
    ode_drift, ode_diff = sde.reverse(p_t.score, probability_flow=True).sde(x, t)
    assert np.allclose(ode_drift.numpy(), drift.numpy() - 0.5 * g2 * score, rtol=1e-8, atol=1e-8)
    assert torch.all(ode_diff == 0)
    rev_drift, rev_diff = sde.reverse(p_t.score).sde(x, t)
    assert np.allclose(rev_drift.numpy(), drift.numpy() - g2 * score, rtol=1e-8, atol=1e-8)
    assert torch.equal(rev_diff, diffusion)
    f, G = sde.discretize(x, t)
    rf, rG = sde.reverse(p_t.score, probability_flow=True).discretize(x, t)
    assert np.allclose(rf.numpy(), f.numpy() - 0.5 * (G ** 2).numpy()[:, None] * score,
                       rtol=1e-8, atol=1e-8)
    assert torch.all(rG == 0)


@pytest.mark.parametrize("name", ALL)
def test_oracle_score_is_grad_log_prob(name):
    sde = make(name)
    g = torch.Generator().manual_seed(4)
    K, D = 3, 5
    covs = torch.stack([oracle.random_covariance(D, generator=g) for _ in range(K)])
    dist = oracle.gaussian_mixture(torch.randn(K, D, generator=g) * 2, covs, [0.2, 0.3, 0.5])
    p_t = dist.marginal(sde)
    x = torch.randn(8, D, generator=g, dtype=torch.float64).requires_grad_(True)
    t = torch.rand(8, generator=g, dtype=torch.float64) * sde.T
    (grad,) = torch.autograd.grad(p_t.log_prob(x, t).sum(), x)
    assert torch.allclose(p_t.score(x, t), grad, rtol=1e-9, atol=1e-9)


def test_oracle_log_prob_matches_scipy():
    sde = VPSDE()
    g = torch.Generator().manual_seed(7)
    K, D = 2, 3
    means = torch.randn(K, D, generator=g, dtype=torch.float64)
    covs = torch.stack([oracle.random_covariance(D, generator=g) for _ in range(K)])
    w = np.array([0.25, 0.75])
    dist = oracle.gaussian_mixture(means, covs, w)
    x = torch.randn(5, D, generator=g, dtype=torch.float64)
    t = torch.full((5,), 0.4, dtype=torch.float64)
    a = math.exp(-0.5 * (0.1 * 0.4 + 0.5 * 19.9 * 0.16))
    s2 = 1 - a ** 2
    expected = np.log(sum(w[k] * stats.multivariate_normal(a * means[k].numpy(), a ** 2 * covs[k].numpy()
                                                           + s2 * np.eye(D)).pdf(x.numpy())
                          for k in range(K)))
    assert np.allclose(dist.marginal(sde).log_prob(x, t).numpy(), expected, rtol=1e-10)
    assert np.allclose(dist.log_prob(x).numpy(), np.log(sum(
        w[k] * stats.multivariate_normal(means[k].numpy(), covs[k].numpy()).pdf(x.numpy())
        for k in range(K))), rtol=1e-10)


def test_oracle_marginal_samples_have_right_moments():
    sde = subVPSDE()
    g = torch.Generator().manual_seed(8)
    cov = oracle.random_covariance(3, generator=g)
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    p_t = oracle.gaussian(mu, cov).marginal(sde)
    t = torch.full((40000,), 0.3)
    x = p_t.sample(t, generator=g, dtype=torch.float64)
    a, s = p_t.coefficients(t[:1])
    C = a ** 2 * cov + s ** 2 * torch.eye(3, dtype=torch.float64)
    assert torch.allclose(x.mean(0), a * mu, atol=0.03)
    assert torch.allclose(torch.cov(x.T), C, atol=0.03)


def test_oracle_event_shape_images():
    dist = oracle.gaussian(torch.zeros(12), None, event_shape=(3, 2, 2))
    x = dist.sample(5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 3, 2, 2)
    p_t = dist.marginal(VESDE())
    assert p_t.score(x, torch.full((5,), 0.5)).shape == x.shape
    with pytest.raises(ValueError, match=r"x must have shape \[B, \*\[3, 2, 2\]\]"):
        p_t.score(x.reshape(5, 12), torch.full((5,), 0.5))


def test_get_sde_from_config():
    cfg = ConfigDict({"training": {"sde": "vpsde"},
                      "model": {"beta_min": 0.2, "beta_max": 10.0, "num_scales": 50,
                                "sigma_min": 0.02, "sigma_max": 30.0}})
    sde = get_sde(cfg)
    assert isinstance(sde, VPSDE) and sde.beta_1 == 10.0 and sde.N == 50
    cfg.training.sde = "vesde"
    sde = get_sde(cfg)
    assert isinstance(sde, VESDE) and sde.sigma_max == 30.0 and sde.N == 50
    cfg.training.sde = "subvpsde"
    assert isinstance(get_sde(cfg), subVPSDE)
    cfg.training.sde = "edm"
    with pytest.raises(ValueError, match="unknown SDE 'edm'.*known: cosine_vpsde, edm_vesde, "
                                         "subvpsde, vesde, vpsde"):
        get_sde(cfg)


def test_get_sde_names_the_missing_field():
    """A config without `training.sde` (the original ve/ncsn/celeba names it `training.loss`)
    or without a noise setting fails with the field's name, not AttributeError: 'sde'."""
    cfg = ConfigDict({"training": {"loss": "vesde"},
                      "model": {"sigma_min": 0.01, "sigma_max": 1.0, "num_scales": 10}})
    with pytest.raises(ValueError, match="config.training.sde is missing.*edm_vesde, subvpsde"):
        get_sde(cfg)
    with pytest.raises(ValueError, match=r"config.training.sde is missing \(the config has no "
                                         r"training\)"):
        get_sde(ConfigDict({"model": cfg.model}))
    cfg.training.sde = "vpsde"
    with pytest.raises(ValueError, match="config.model.beta_min is missing"):
        get_sde(cfg)
    assert get_sde({"training": {"sde": "VESDE"}, "model": dict(cfg.model)}).sigma_max == 1.0


def test_original_ncsn_celeba_config_gives_its_ve_sde():
    import configs

    sde = get_sde(configs.get_config("ve/ncsn/celeba"))
    assert isinstance(sde, VESDE) and (sde.sigma_min, sde.sigma_max, sde.N) == (0.01, 1.0, 10)


def test_defaults_of_the_paper():
    ve, vp, sub = VESDE(), VPSDE(), subVPSDE()
    assert (ve.sigma_min, ve.sigma_max, ve.N, ve.T) == (0.01, 50.0, 1000, 1.0)
    assert (vp.beta_0, vp.beta_1, vp.N) == (0.1, 20.0, 1000)
    assert (sub.beta_0, sub.beta_1, sub.N) == (0.1, 20.0, 1000)
    assert ve.sampling_eps == 1e-5 and vp.sampling_eps == 1e-3 and sub.sampling_eps == 1e-3
    assert all(isinstance(s, SDE) for s in (ve, vp, sub))


@pytest.mark.parametrize("name", ALL)
def test_bad_time_is_refused(name):
    sde = make(name)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\]"):
        sde.marginal_prob(x, torch.tensor([0.5, 1.5 * sde.T]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\].*-0\.1"):
        sde.sde(x, torch.tensor([-0.1, 0.5]))
    with pytest.raises(ValueError, match=r"t must have shape \[B\] = \[2\]"):
        sde.sde(x, torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="float tensor"):
        sde.discretize(x, 0.5)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="sigma_min"):
        VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="beta_min"):
        VPSDE(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="N must be a positive integer"):
        subVPSDE(N=0)
    with pytest.raises(ValueError, match="covs must have shape"):
        oracle.gaussian_mixture(torch.zeros(2, 3), torch.ones(3, 3))
    with pytest.raises(ValueError, match="weights"):
        oracle.gaussian_mixture(torch.zeros(2, 3), None, [-1.0, 2.0])


def test_smooth_image_covariance():
    """Squared-exponential pixel covariance times the channel correlation, plus the nugget."""
    cov = oracle.smooth_image_covariance(2, 2, 3, ell=1.5, amp=0.5, nugget=0.05, channel_corr=0.6)
    assert cov.shape == (12, 12) and cov.dtype == torch.float64
    assert torch.allclose(cov, cov.T) and torch.linalg.eigvalsh(cov).min() > 0.04
    # pixels (0, 0) and (1, 2) are at squared distance 5; channels 0 and 1 correlate 0.6
    assert cov[0, 0].item() == pytest.approx(0.5 + 0.05)
    assert cov[0, 5].item() == pytest.approx(0.5 * math.exp(-5 / 4.5))
    assert cov[0, 6 + 5].item() == pytest.approx(0.6 * 0.5 * math.exp(-5 / 4.5))
    three = oracle.smooth_image_covariance(3, 1, 1, nugget=0.0, channel_corr=None)
    assert torch.allclose(three / 0.5, torch.tensor([[1, .8, .3], [.8, 1, .5], [.3, .5, 1]],
                                                    dtype=torch.float64))
    with pytest.raises(ValueError, match="three-channel"):
        oracle.smooth_image_covariance(2, 2, 2, channel_corr=None)
