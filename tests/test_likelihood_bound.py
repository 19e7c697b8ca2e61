"""The variational bound, the importance distribution of t and the dequantizers against exact
answers (Gaussian and Gaussian-mixture data, whose scores and densities are exact)."""

import math

import pytest
import torch
from scipy import stats

from likelihood import (ImportanceTime, bits_per_dim_details, bound, truncated_normal_offset,
                        discretization_offset, truncated_normal_dequantization)
from likelihood.bound import stratified_stderr
from likelihood.bpd import truncated_normal_entropy
from likelihood.importance import g2_over_sigma2, log_snr
from cases import likelihood_gaussian, likelihood_mixture
from sde_lib import SDES, VESDE, VPSDE, oracle, subVPSDE

SDE_CLASSES = {"ve": VESDE, "vp": VPSDE, "subvp": subVPSDE}
SHAPE = (1, 8, 8)
D = 64
NATS_PER_BPD = D * math.log(2)
# The stated gap of the bound under the exact score, beyond its Monte Carlo error: the prior's
# mismatch with p_T and the decoder's smoothing by sigma(eps) (both tiny here), 0.01 bits/dim.
GAP_BPD = 0.01


def gaussian(seed=0):
    return likelihood_gaussian(D, SHAPE, seed)


def mixture(seed=1):
    return likelihood_mixture(D, SHAPE, seed)


@pytest.mark.parametrize("data", ["gaussian", "mixture"])
@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_bound_holds_and_is_tight_for_the_exact_score(name, data):
    sde = SDE_CLASSES[name]()
    dist = gaussian() if data == "gaussian" else mixture()
    p = dist.marginal(sde)
    x = dist.sample(16, generator=torch.Generator().manual_seed(1))
    exact = -dist.log_prob(x.double()).double()
    res = bound(p.score, sde, x, n_samples=128, generator=torch.Generator().manual_seed(2))
    assert res.nll.shape == (16,) and res.nfe == 128 and res.importance_sampling
    assert torch.all(res.nll_stderr > 0)
    # Never below the exact NLL by more than three standard errors, image by image ...
    assert torch.all(res.nll - exact > -3 * res.nll_stderr), (res.nll - exact) / res.nll_stderr
    # ... and on average within the stated gap (plus three standard errors of the mean).
    gap = (res.nll - exact).mean()
    se_mean = res.nll_stderr.pow(2).sum().sqrt() / 16
    assert gap.abs() < GAP_BPD * NATS_PER_BPD + 3 * se_mean, (gap, se_mean)


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_a_wrong_score_raises_the_bound(name):
    sde = SDE_CLASSES[name]()
    dist = mixture()
    p = dist.marginal(sde)
    x = dist.sample(8, generator=torch.Generator().manual_seed(3))
    draws = {}
    for scale in (1.0, 0.9):
        res = bound(lambda y, t: scale * p.score(y, t), sde, x, n_samples=64,
                    generator=torch.Generator().manual_seed(4))
        draws[scale] = res.nll_samples
    diff = draws[0.9] - draws[1.0]  # the same draws: the rise alone
    rise, se = diff.mean(0), stratified_stderr(diff)
    assert torch.all(rise > 1.0) and torch.all(rise > 3 * se), (rise, se)
    assert rise.mean() > 10 * se.pow(2).sum().sqrt() / len(se)


def test_importance_sampling_cuts_the_variance_where_g2_over_sigma2_varies():
    sde, dist = VPSDE(), gaussian()
    p = dist.marginal(sde)
    x = dist.sample(8, generator=torch.Generator().manual_seed(5))
    se = {IS: bound(p.score, sde, x, n_samples=32, importance_sampling=IS,
                    generator=torch.Generator().manual_seed(6)).nll_stderr.mean()
          for IS in (True, False)}
    assert se[True] * 5 < se[False], se
    # For VE g^2 / sigma^2 is constant: the importance distribution is the uniform one.
    ve = VESDE()
    res = [bound(dist.marginal(ve).score, ve, x, n_samples=8, importance_sampling=IS,
                 generator=torch.Generator().manual_seed(7)).nll for IS in (True, False)]
    torch.testing.assert_close(res[0], res[1], rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("control", ["snr", "full", "none"])
def test_every_control_variate_is_unbiased(control):
    sde, dist = VPSDE(), gaussian()
    p = dist.marginal(sde)
    x = dist.sample(1, generator=torch.Generator().manual_seed(8)).expand(12, *SHAPE)
    exact = -dist.log_prob(x[:1].double()).double()
    res = bound(p.score, sde, x, n_samples=64, control=control,
                generator=torch.Generator().manual_seed(9))
    se = res.nll_stderr.pow(2).mean().sqrt() / math.sqrt(12)  # 12 independent repeats
    assert (res.nll.mean() - exact).abs() < GAP_BPD * NATS_PER_BPD + 3 * se, (res.nll.mean(), exact, se)


def test_bound_is_reproducible_and_checks_its_input():
    sde, dist = subVPSDE(), gaussian()
    p = dist.marginal(sde)
    x = dist.sample(3, generator=torch.Generator().manual_seed(10))
    a, b = (bound(p.score, sde, x, n_samples=4, generator=torch.Generator().manual_seed(11))
            for _ in range(2))
    torch.testing.assert_close(a.nll_samples, b.nll_samples)
    with pytest.raises(ValueError, match="n_samples"):
        bound(p.score, sde, x, n_samples=0)
    with pytest.raises(ValueError, match="eps"):
        bound(p.score, sde, x, eps=0.0)
    with pytest.raises(ValueError, match="non-finite"):
        bound(p.score, sde, x.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match="control"):
        bound(p.score, sde, x, control="other")


class _LongVE(VESDE):
    """A VE SDE on [0, 80] with sigma(t) = t (Karras et al.'s): T is not 1, defined here alone."""

    @property
    def T(self):
        return 80.0

    def sigma(self, t):
        return t

    def sde(self, x, t):
        self.check_time(x, t)
        return torch.zeros_like(x), torch.sqrt(2 * t)

    def prior_sampling(self, shape, generator=None, device=None, dtype=torch.float32):
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype) * 80.0

    def prior_logp(self, z):
        return -0.5 * z[0].numel() * math.log(2 * math.pi * 80.0 ** 2) - z.flatten(1).pow(2).sum(1) / (2 * 80.0 ** 2)


def _registered_sdes():
    return [SDES.get(name)() for name in SDES] + [_LongVE()]


@pytest.mark.parametrize("sde", _registered_sdes(), ids=lambda s: type(s).__name__)
def test_importance_density_is_minus_the_log_snr_derivative_and_sampled_exactly(sde):
    eps = 2e-3 if sde.T > 1 else 1e-5
    prop = ImportanceTime(sde, eps)
    t = torch.exp(torch.linspace(math.log(eps * 1.01), math.log(sde.T * 0.99), 200,
                                 dtype=torch.float64))
    h = 1e-6 * t
    dlam = (log_snr(sde, t + h) - log_snr(sde, t - h)) / (2 * h)
    torch.testing.assert_close(-dlam, g2_over_sigma2(sde, t), rtol=1e-4, atol=0)
    # The inverse CDF: the CDF of the quantile is u, and draws follow it (Kolmogorov-Smirnov).
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    q = prop.quantile(u)
    assert q[0] == pytest.approx(eps) and q[-1] == pytest.approx(sde.T)
    torch.testing.assert_close((prop.lam_eps - log_snr(sde, q)) / prop.Z, u, atol=1e-9, rtol=0)
    draws = prop.sample(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert draws.min() >= eps and draws.max() <= sde.T
    cdf = lambda s: ((prop.lam_eps - log_snr(sde, torch.as_tensor(s))) / prop.Z).numpy()
    assert stats.kstest(draws.numpy(), cdf).pvalue > 1e-3
    # The weight restores the uniform-t expectation: E_q[w(t) f(t)] = mean of f on [eps, T].
    f = lambda s: torch.sin(s / sde.T * 3) ** 2
    grid = torch.linspace(eps, sde.T, 200001, dtype=torch.float64)
    uniform_mean = torch.trapezoid(f(grid), grid) / (sde.T - eps)
    assert (prop.weight(draws) * f(draws)).mean() == pytest.approx(uniform_mean.item(), rel=0.1)


def test_bound_runs_on_an_sde_with_t_not_one():
    sde, dist = _LongVE(), gaussian()
    p = dist.marginal(sde)
    x = dist.sample(8, generator=torch.Generator().manual_seed(12))
    exact = -dist.log_prob(x.double()).double()
    res = bound(p.score, sde, x, n_samples=64, eps=2e-3, generator=torch.Generator().manual_seed(13))
    assert torch.all(res.nll - exact > -3 * res.nll_stderr)
    # sigma(eps) = 2e-3 smooths the data far less than its std, so the gap stays small.
    assert (res.nll - exact).mean().abs() < GAP_BPD * NATS_PER_BPD + 3 * res.nll_stderr.mean()


# ----------------------------------------------------------------------------- dequantization

L = 256
DQ = 16  # dimensions of the quantised Gaussian


def quantised_gaussian(method, n, seed):
    """Images of a diagonal Gaussian in [0, 1] quantised to 8 bits on the dequantizer's own bins,
    and their exact discrete bits/dim (bin probabilities from 1-D CDF differences)."""
    g = torch.Generator().manual_seed(seed)
    mu = 0.5 + 0.1 * torch.rand(DQ, generator=g, dtype=torch.float64)
    sd = 0.06 + 0.06 * torch.rand(DQ, generator=g, dtype=torch.float64)
    xc = mu + sd * torch.randn(n, DQ, generator=g, dtype=torch.float64)
    if method == "uniform":  # bins [k / L, (k + 1) / L): the original's (255 x + u) / 256
        k = torch.floor(xc * L)
        lo, hi = k / L, (k + 1) / L
    else:  # bins of width 1 / (L - 1) centred on the levels k / (L - 1)
        k = torch.round(xc * (L - 1))
        lo, hi = (k - 0.5) / (L - 1), (k + 0.5) / (L - 1)
    cdf = lambda v: torch.special.ndtr((v - mu) / sd)
    exact_bpd = -torch.log2(cdf(hi) - cdf(lo)).sum(1) / DQ
    images = (k / (L - 1)).reshape(n, 1, 4, 4)
    dist = oracle.gaussian(mu, sd ** 2, event_shape=(1, 4, 4))
    return images.float(), exact_bpd, dist


def test_truncated_normal_offset_is_minus_its_entropy_and_tends_to_uniform():
    for std, half in [(0.5, 1.0), (1.0, 0.3), (0.01, 0.004)]:
        ref = stats.truncnorm(-half / std, half / std, scale=std).entropy()
        assert truncated_normal_entropy(std, half) == pytest.approx(ref, rel=1e-7, abs=1e-9)
    for std in (1e-3, 4e-3):  # 8-bit data in [-1, 1]: bins of half-width 1 / 255
        ref = stats.truncnorm(-1 / 255 / std, 1 / 255 / std, scale=std).entropy()
        assert -truncated_normal_offset((-1.0, 1.0), std) * math.log(2) == pytest.approx(ref)
    # Wide std: uniform on bins of width (hi - lo) / (L - 1).
    assert truncated_normal_offset((-1.0, 1.0), 1e3) == pytest.approx(math.log2(255 / 2), abs=1e-6)
    assert discretization_offset((-1.0, 1.0)) == 7.0


def test_truncated_normal_dequantization_stays_in_its_bin_with_the_right_law():
    images = torch.full((4000, 1, 1, 1), 100 / 255)
    y = truncated_normal_dequantization(images, (0.0, 1.0), std=0.002,
                                        generator=torch.Generator().manual_seed(0))
    e = (y.double() - 100 / 255).flatten()
    half = 0.5 / 255
    assert e.abs().max() <= half + 1e-7
    ref = stats.truncnorm(-half / 0.002, half / 0.002, scale=0.002)
    assert stats.kstest(e.numpy(), ref.cdf).pvalue > 1e-3
    with pytest.raises(ValueError, match="grid"):
        truncated_normal_dequantization(images + 0.3 / 255, (0.0, 1.0), std=0.002)


@pytest.mark.parametrize("method", ["uniform", "truncated_normal"])
def test_dequantized_density_bounds_the_exact_discrete_bits_per_dim(method):
    """With the exact continuous density: E_q[-log p(y)] / (D ln 2) + offset >= -log2 P(k) / D."""
    images, exact_bpd, dist = quantised_gaussian(method, 64, seed=1)
    gen = torch.Generator().manual_seed(2)
    std = 0.5 / 255 / 2  # truncation at two standard deviations
    reps = []
    for _ in range(200):
        if method == "uniform":
            from likelihood import uniform_dequantization
            y, off = uniform_dequantization(images, (0.0, 1.0), generator=gen), discretization_offset((0.0, 1.0))
        else:
            y = truncated_normal_dequantization(images, (0.0, 1.0), std, generator=gen)
            off = truncated_normal_offset((0.0, 1.0), std)
        reps.append(-dist.log_prob(y.double()).double() / (DQ * math.log(2)) + off)
    reps = torch.stack(reps)
    est, se = reps.mean(0), reps.std(0) / math.sqrt(len(reps))
    assert torch.all(est - exact_bpd > -3 * se - 1e-6)
    # The gap: for uniform only the density's curvature within a bin (tiny); the truncated
    # normal also pays its entropy below a uniform's on the bin, log2(bin) + offset per dim.
    expected = 0.0 if method == "uniform" else math.log2(1 / 255) + truncated_normal_offset((0.0, 1.0), std)
    assert (est - exact_bpd).mean() == pytest.approx(expected, abs=2e-3)


@pytest.mark.parametrize("method", ["uniform", "truncated_normal"])
def test_bound_in_bits_per_dim_bounds_the_exact_discrete_likelihood(method):
    images, exact_bpd, dist = quantised_gaussian(method, 16, seed=3)
    sde = VPSDE()
    res = bits_per_dim_details(dist.marginal(sde).score, sde, images, data_range=(0.0, 1.0),
                               method="bound", dequantize=method, n_samples=64,
                               generator=torch.Generator().manual_seed(4))
    assert res.method == "bound" and res.dequantize == method and res.nfe == 64
    assert torch.all(res.bpd - exact_bpd > -3 * res.bpd_stderr), (res.bpd - exact_bpd) / res.bpd_stderr
    # Stated gap: 0.05 bits/dim (the dequantizer's gap, at most 0.03 here, plus the bound's).
    se_mean = res.bpd_stderr.pow(2).sum().sqrt() / 16
    assert (res.bpd - exact_bpd).mean() < 0.05 + 3 * se_mean
