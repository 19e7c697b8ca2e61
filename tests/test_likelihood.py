"""The likelihood against exact log-densities of the oracle (Gaussian and Gaussian-mixture data)."""

import itertools
import math

import pytest
import torch

from likelihood import (batch_rms_norm, bits_per_dim, bits_per_dim_details, bpd_from_logp,
                        discretization_offset, exact_divergence, hutchinson_divergence,
                        log_likelihood, per_sample_norm, uniform_dequantization)
from cases import likelihood_gaussian, likelihood_mixture
from sde_lib import SDES as REGISTRY, VESDE, VPSDE, oracle, sde_names, subVPSDE

SDES = {"ve": VESDE, "vp": VPSDE, "subvp": subVPSDE}
SHAPE = (1, 8, 8)  # D = 64
D = 64
BITS = D * math.log(2)  # nats per bit/dim


# The ODE's answer uses the prior in place of p_T. For VE (sigma_max = 50) that costs about
# |data mean| / sigma_max nats per sample (std over z ~ p_T), so the data here has a small overall
# mean (a mixture's components still sit apart): the mismatch has a std below 2e-4 bits/dim (at
# most 7e-4 in 2000 draws), so the 0.002 bits/dim test measures the method, not the SDE's prior.

def gaussian(seed=0):
    return likelihood_gaussian(D, SHAPE, seed)


def mixture(seed=1):
    return likelihood_mixture(D, SHAPE, seed)


def data_at_eps(dist, sde, n, seed):
    """Exact draws of x(eps) and the exact log p_eps(x) (float64)."""
    eps = sde.likelihood_eps
    p = dist.marginal(sde)
    x = p.sample(torch.full((n,), eps), generator=torch.Generator().manual_seed(seed))
    return p, x, p.log_prob(x.double(), torch.full((n,), eps, dtype=torch.float64))


def prior_mismatch(p, sde, z):
    """log prior(z) - log p_T(z): what replacing p_T by the prior adds to the ODE's answer."""
    z = z.double()
    return sde.prior_logp(z) - p.log_prob(z, torch.full((z.shape[0],), sde.T, dtype=torch.float64))


@pytest.mark.parametrize("data", ["gaussian", "mixture"])
@pytest.mark.parametrize("name", sde_names())
def test_exact_divergence_matches_closed_form(name, data):
    """log_likelihood against the exact log p_eps, for every registered SDE."""
    sde = REGISTRY.get(name)()
    dist = gaussian() if data == "gaussian" else mixture()
    p, x, exact = data_at_eps(dist, sde, 3, seed=10)
    res = log_likelihood(p.score, sde, x, estimator="exact")
    assert res.logp.shape == (3,) and res.z.shape == x.shape and res.nfe > 10
    assert res.eps == sde.likelihood_eps and torch.all(res.logp_stderr == 0)
    err_bpd = (res.logp - exact).abs() / BITS
    assert err_bpd.max() < 0.002, err_bpd
    # Without the (small, model-inherent) prior-vs-p_T mismatch the solver's error is far smaller.
    solver_err = (res.logp - exact - prior_mismatch(p, sde, res.z)).abs() / BITS
    assert solver_err.max() < 2e-4, solver_err


@pytest.mark.parametrize("data,name,estimator", [
    ("gaussian", "ve", "rademacher"), ("gaussian", "vp", "rademacher"),
    ("gaussian", "subvp", "rademacher"), ("gaussian", "vp", "gaussian"),
    ("mixture", "ve", "rademacher"), ("mixture", "vp", "rademacher"),
    ("mixture", "subvp", "gaussian")])
def test_hutchinson_within_standard_error(data, name, estimator):
    sde = SDES[name]()
    dist = gaussian() if data == "gaussian" else mixture()
    p, x, exact = data_at_eps(dist, sde, 6, seed=20)
    res = log_likelihood(p.score, sde, x, estimator=estimator, n_probes=32,
                         generator=torch.Generator().manual_seed(3))
    assert res.logp_probes.shape == (32, 6)
    stderr = res.logp_stderr
    assert torch.all(stderr > 0) and torch.all(stderr / BITS < 0.1), stderr / BITS
    # Solver tolerance (1e-5) adds far less than the probes' standard error. z is t-distributed
    # (31 degrees of freedom, skewed probe estimates): 4 standard errors at most.
    z = (res.logp - exact - prior_mismatch(p, sde, res.z)) / stderr
    assert z.abs().max() < 4, z
    assert 0.25 < z.pow(2).mean().sqrt() < 2.0, z  # the reported error: neither too small nor big


def test_estimators_share_the_trajectory_and_probes_are_reproducible():
    sde = VPSDE()
    p, x, _ = data_at_eps(gaussian(), sde, 2, seed=5)
    a = log_likelihood(p.score, sde, x, n_probes=3, generator=torch.Generator().manual_seed(7))
    b = log_likelihood(p.score, sde, x, n_probes=3, generator=torch.Generator().manual_seed(7))
    c = log_likelihood(p.score, sde, x, estimator="exact")
    assert torch.equal(a.logp, b.logp) and a.nfe == b.nfe
    assert torch.allclose(a.z, c.z, atol=1e-4)  # the latent does not depend on the estimator
    one_probe = log_likelihood(p.score, sde, x, generator=torch.Generator())
    assert torch.isnan(one_probe.logp_stderr).all()


def test_float32_state_and_batch_norm_options():
    sde = subVPSDE()
    p, x, exact = data_at_eps(gaussian(), sde, 2, seed=6)
    for kw in [dict(state_dtype=torch.float32), dict(error_norm="batch"), dict(method="bosh3")]:
        res = log_likelihood(p.score, sde, x, estimator="exact", **kw)
        assert ((res.logp - exact).abs() / BITS).max() < 0.002, kw


def test_exact_and_hutchinson_divergence_of_a_linear_field():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)  # per-sample matrices
    fn = lambda x, t: torch.einsum("bij,bj->bi", A.repeat(x.shape[0] // 2, 1, 1), x)  # noqa: E731
    x = torch.randn(2, 3, generator=g, dtype=torch.float64)
    trace = A.diagonal(dim1=1, dim2=2).sum(1)
    for chunk in (None, 1, 2):
        f, div = exact_divergence(fn, x, torch.zeros(2, dtype=torch.float64), chunk)
        assert torch.allclose(div, trace) and torch.allclose(f, fn(x, None))
    # Averaged over all 2^3 Rademacher vectors the off-diagonal terms cancel exactly.
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=3)), dtype=torch.float64)
    probes = signs[:, None, :].expand(8, 2, 3)
    _, div = hutchinson_divergence(fn, x, torch.zeros(2, dtype=torch.float64), probes)
    assert div.shape == (8, 2) and torch.allclose(div.mean(0), trace)


def test_per_sample_norm_is_the_originals_norm_per_sample():
    x_err = torch.full((100, 5), 0.1)
    x_err[7] = 2.0
    delta = torch.full((3, 100), 0.1)
    delta[2, 40] = -6.0
    alone = [batch_rms_norm((x_err[b:b + 1], delta[:, b:b + 1])) for b in range(100)]
    assert per_sample_norm((x_err, delta)).item() == pytest.approx(max(alone).item())
    assert max(alone).item() == pytest.approx(math.sqrt((0.05 + 0.02 + 36) / 8))  # sample 40
    assert batch_rms_norm((x_err, delta)).item() < 0.5  # the batch RMS hides samples 7 and 40


# ----------------------------------------------------------------------------- bits/dim

def test_offset_derived_from_range_matches_original():
    original = lambda inverse_scaler: 7.0 - inverse_scaler(-1.0)  # noqa: E731
    assert discretization_offset((0.0, 1.0)) == pytest.approx(original(lambda v: v)) == 8.0
    centered = original(lambda v: (v + 1) / 2)
    assert discretization_offset((-1.0, 1.0)) == pytest.approx(centered) == 7.0
    assert discretization_offset((0.0, 255.0)) == pytest.approx(8 - math.log2(255))
    assert discretization_offset((0.0, 1.0), levels=17) == pytest.approx(math.log2(17))
    # A density uniform over the data range is exactly `bits` bits/dim, whatever the range.
    for lo, hi in [(0.0, 1.0), (-1.0, 1.0), (0.0, 255.0), (-3.0, 5.0)]:
        logp = torch.tensor([-D * math.log(hi - lo)], dtype=torch.float64)
        assert bpd_from_logp(logp, D, (lo, hi)).item() == pytest.approx(8.0)
        assert bpd_from_logp(logp, D, (lo, hi), bits=5).item() == pytest.approx(5.0)


def test_dequantization_is_the_originals_and_stays_in_its_bin():
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, 256, (4, 3, 5, 5), generator=g)
    x01 = k.float() / 255.0
    for centered in (False, True):
        scaler = (lambda v: 2 * v - 1) if centered else (lambda v: v)
        lo, hi = scaler(0.0), scaler(1.0)
        y = uniform_dequantization(scaler(x01), (lo, hi),
                                   generator=torch.Generator().manual_seed(1))
        u = torch.rand(x01.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        assert torch.allclose(y, scaler((255 * x01 + u.float()) / 256), atol=1e-6)
        assert torch.equal(torch.floor((y.double() - lo) / (hi - lo) * 256).long(), k)


def quantized_images(dist, n, seed):
    """8-bit images in [-1, 1] from a Gaussian of the oracle, rounded to the grid."""
    x = dist.sample(n, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)
    return torch.round((x + 1) / 2 * 255) / 255 * 2 - 1


def test_bits_per_dim_of_dequantized_images_matches_closed_form():
    sde = VPSDE()
    g = torch.Generator().manual_seed(0)
    dist = oracle.gaussian(torch.zeros(D), 0.3 * oracle.random_covariance(D, generator=g),
                           event_shape=SHAPE)
    images = quantized_images(dist, 3, seed=1)
    p = dist.marginal(sde)
    res = bits_per_dim_details(p.score, sde, images, data_range=(-1, 1), estimator="exact",
                               generator=torch.Generator().manual_seed(2))
    eps = torch.full((3,), res.eps, dtype=torch.float64)
    expected = -p.log_prob(res.x.double(), eps) / BITS + 7.0
    assert res.offset == 7.0 and res.x.shape == images.shape and not torch.equal(res.x, images)
    assert (res.bpd - expected).abs().max() < 0.002
    again = bits_per_dim(p.score, sde, images, data_range=(-1, 1), estimator="exact",
                         generator=torch.Generator().manual_seed(2))
    assert torch.equal(again, res.bpd)


# ----------------------------------------------------------------------------- bad input

def test_bad_input_gives_clear_errors():
    sde = VPSDE()
    p = gaussian().marginal(sde)
    x = p.sample(torch.full((2,), 1e-5), generator=torch.Generator().manual_seed(0))
    bad = x.clone()
    bad[1, 0, 2, 3] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        log_likelihood(p.score, sde, bad)
    with pytest.raises(ValueError, match="shape"):
        log_likelihood(p.score, sde, x[:, 0, 0, 0])
    with pytest.raises(ValueError, match="estimator"):
        log_likelihood(p.score, sde, x, estimator="hutch")
    with pytest.raises(ValueError, match="n_probes"):
        log_likelihood(p.score, sde, x, n_probes=0)
    with pytest.raises(ValueError, match="adaptive"):
        log_likelihood(p.score, sde, x, method="euler")
    with pytest.raises(ValueError, match="eps"):
        log_likelihood(p.score, sde, x, eps=1.5)
    with pytest.raises(ValueError, match="shape"):
        log_likelihood(lambda xx, t: p.score(xx, t).flatten(1), sde, x)
    with pytest.raises(ValueError, match="no_grad"):
        log_likelihood(lambda xx, t: p.score(xx.detach(), t), VESDE(), x)
    with pytest.raises(FloatingPointError, match="not finite"):
        log_likelihood(lambda xx, t: p.score(xx, t) * math.nan, sde, x)

    images = quantized_images(gaussian(), 2, seed=0)
    with pytest.raises(ValueError, match=r"data_range \[0.0, 1.0\]"):
        bits_per_dim(p.score, sde, images, data_range=(0, 1))
    nan_images = images.clone()
    nan_images[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        bits_per_dim(p.score, sde, nan_images, data_range=(-1, 1))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        bits_per_dim(p.score, sde, images.flatten(1), data_range=(-1, 1))
    with pytest.raises(ValueError, match="grid"):
        bits_per_dim(p.score, sde, images + 1e-3, data_range=(-1, 1.01))
    with pytest.raises(ValueError, match="lo < hi"):
        bits_per_dim(p.score, sde, images, data_range=(1, -1))
    with pytest.warns(UserWarning, match="dequantize=False"):
        bits_per_dim(p.score, sde, images, data_range=(-1, 1), dequantize=False,
                     estimator="rademacher", rtol=1e-3, atol=1e-3)


def test_random_projections_live_with_the_divergence_code():
    """Hutchinson's probes (E[v v^T] = I) are likelihood's; sliced score matching in training
    imports them from there, and importing likelihood imports nothing of training."""
    import subprocess
    import sys
    from pathlib import Path

    from likelihood.divergence import random_projections
    from training import objectives

    assert objectives.random_projections is random_projections
    g = torch.Generator().manual_seed(0)
    for kind in ("rademacher", "gaussian"):
        v = random_projections((40000, 3), kind, generator=g, dtype=torch.float64)
        assert torch.allclose(v.T @ v / len(v), torch.eye(3, dtype=torch.float64), atol=0.03)
    assert set(random_projections((100,), "rademacher", generator=g).unique().tolist()) == {-1, 1}
    with pytest.raises(ValueError, match="noise_type.*'sphere'"):
        random_projections((2,), "sphere")
    code = "import sys, likelihood; print(sorted(m for m in sys.modules if m.startswith('training')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
