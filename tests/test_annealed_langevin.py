"""Annealed Langevin dynamics (NCSN Algorithm 1, NCSNv2 denoising, NCSN inpainting) against exact
answers: on Gaussian data every ALD step is linear, so the mean and covariance of its samples are
known in closed form (`ald_moments`); on a ring mixture the mode weights are 1/8."""

import math

import pytest
import torch

from sde_lib import VESDE, get_sde, oracle
from sde_lib.advisor import advise
from solvers import sample
from solvers.annealed import annealed_inpaint, annealed_langevin, annealed_levels, from_advice

torch.set_num_threads(1)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _correlated(dim=16, seed=0, zero_eigs=0):
    """N(mu, C) in `dim` dimensions; the `zero_eigs` smallest eigenvalues set to 0 (data on a
    subspace, where the last level's noise is all the error)."""
    g = _gen(seed)
    C = oracle.random_covariance(dim, generator=g, min_eig=0.05, max_eig=1.0)
    lam, U = torch.linalg.eigh(C)
    lam[:zero_eigs] = 0.0
    C = U @ torch.diag(lam) @ U.T
    C = (C + C.T) / 2
    mu = torch.linspace(-1.0, 1.0, dim, dtype=torch.float64)
    return mu, C


def ald_moments(mu, C, sde, n_steps_each, step_lr, denoise):
    """Exact mean and covariance of ALD on N(mu, C) from the prior N(0, sigma_max^2 I): in C's
    eigenbasis the score at level sigma is -y / (lam + sigma^2), so one step maps the mean m and
    variance v of y = U^T (x - mu) to r m and r^2 v + 2a, r = 1 - a / (lam + sigma^2); the
    denoising step multiplies y by lam / (lam + sigma_L^2)."""
    lam, U = torch.linalg.eigh(C)
    lam = lam.clamp(min=0)
    m = -(U.T @ mu)
    v = torch.full_like(lam, sde.sigma_max ** 2)
    sigmas = [sde.sigma_max * (sde.sigma_min / sde.sigma_max) ** (i / (sde.N - 1))
              for i in range(sde.N)]
    for s in sigmas:
        a = step_lr * s ** 2 / sde.sigma_min ** 2
        r = 1 - a / (lam + s ** 2)
        for _ in range(n_steps_each):
            m, v = r * m, r ** 2 * v + 2 * a
    if denoise:
        f = lam / (lam + sde.sigma_min ** 2)
        m, v = f * m, f ** 2 * v
    return mu + U @ m, U @ torch.diag(v) @ U.T


def _eigen_stats(x, mu, C):
    """Sample mean and per-eigendirection variances of x in C's eigenbasis."""
    _, U = torch.linalg.eigh(C)
    y = (x.double() - mu) @ U
    return y.mean(0), y.var(0), U


def _advised(dist, n=2000, n_steps_each=5):
    data = dist.sample(n, generator=_gen(11))
    adv = advise(data, n_steps_each=n_steps_each, generator=_gen(12))
    return adv, *from_advice(adv)


# ----------------------------------------------------------------------------- time grid


def test_levels_are_the_discrete_sigmas_each_visited_once():
    sde = VESDE(0.01, 8.0, N=23)
    times, sigmas = annealed_levels(sde)
    assert torch.allclose(sigmas.float(), sde.discrete_sigmas.flip(0), rtol=1e-6)
    # the kernel std at each time is that level's sigma, the discrete label is its index
    assert torch.allclose(sde.sigma(times), sigmas, rtol=1e-12)
    labels = torch.round((sde.T - times.float()) * (sde.N - 1)).long()
    assert labels.tolist() == list(range(sde.N))
    with pytest.raises(TypeError, match="VESDE"):
        annealed_levels(object())
    with pytest.raises(ValueError, match="at least 2"):
        annealed_levels(VESDE(0.01, 1.0, N=1))


def test_matches_the_pc_loop_with_the_ald_corrector():
    """`sample(predictor='none', corrector='ald', step_lr=...)` is the same algorithm on the
    grid linspace(T, eps): without denoising the two agree to ~ eps log(sigma_max/sigma_min)."""
    mu, C = _correlated(8)
    dist = oracle.gaussian(mu, C)
    sde = VESDE(0.01, 6.0, N=12)
    score = dist.marginal(sde)
    x0 = sde.prior_sampling((64, 8), generator=_gen(3))
    ours = annealed_langevin(score, sde, x_init=x0, n_steps_each=3, step_lr=2e-5, denoise=False,
                             generator=_gen(4))
    pc = sample(score, sde, x_init=x0, sampler="pc", predictor="none", corrector="ald",
                n_corrector_steps=3, corrector_options={"step_lr": 2e-5}, denoise=False,
                generator=_gen(4))
    assert ours.nfe == pc.nfe == 36
    assert (ours.samples - pc.samples).abs().max() < 2e-3 * pc.samples.abs().max()
    assert (ours.samples - pc.samples).abs().max() > 0  # different grids, not the same code path
    # the final denoising step differs on purpose: x + sigma_L^2 s, not the last Langevin mean
    den = annealed_langevin(score, sde, x_init=x0, n_steps_each=3, step_lr=2e-5,
                            generator=_gen(4))
    assert den.nfe == 37
    assert not torch.allclose(den.samples, ours.samples, atol=1e-4)


# ----------------------------------------------------------------------------- exact moments


@pytest.mark.parametrize("factor", [1.0, 0.1])
def test_gaussian_moments_match_the_exact_ald_recursion(factor):
    mu, C = _correlated(16)
    dist = oracle.gaussian(mu, C)
    adv, sde, kw = _advised(dist)
    step_lr = kw["step_lr"] * factor
    res = annealed_langevin(dist.marginal(sde), sde, (4000, 16), n_steps_each=kw["n_steps_each"],
                            step_lr=step_lr, generator=_gen(5))
    assert res.samples.shape == (4000, 16) and res.nfe == adv.num_scales * 5 + 1
    m_exact, S_exact = ald_moments(mu, C, sde, kw["n_steps_each"], step_lr, True)
    m, v, U = _eigen_stats(res.samples, mu, C)
    v_exact = torch.diagonal(U.T @ S_exact @ U)
    m_exact = U.T @ (m_exact - mu)
    assert ((v / v_exact - 1).abs() < 0.12).all(), (v / v_exact).tolist()
    assert ((m - m_exact).abs() < 5 * (v_exact / 4000).sqrt()).all()
    # the tolerance tells the step rules apart: 10x the step gives other moments
    _, S_other = ald_moments(mu, C, sde, kw["n_steps_each"], step_lr * (10 if factor < 1 else 0.1),
                             True)
    v_other = torch.diagonal(U.T @ S_other @ U)
    assert ((v / v_other - 1).abs() > 0.5).any()


def test_advised_settings_reproduce_the_gaussian_and_a_10x_smaller_step_does_not():
    """With the advisor's settings ALD's covariance is within a factor 2 of the data's (ALD
    with 5 steps per level overshoots directions whose variance is comparable to a level,
    frozen at lam + sigma^2 there; see benchmarks/RESULTS.md); 10x smaller steps fail."""
    mu, C = _correlated(16)
    dist = oracle.gaussian(mu, C)
    _, sde, kw = _advised(dist)

    def run(step_lr):
        x = annealed_langevin(dist.marginal(sde), sde, (2000, 16), n_steps_each=5,
                              step_lr=step_lr, generator=_gen(6)).samples.double()
        ratio = torch.cov(x.T).trace() / C.trace()
        return (x.mean(0) - mu).abs().max(), ratio

    err, ratio = run(kw["step_lr"])
    assert err < 0.15 and 1.0 < ratio < 2.0, (err, ratio)
    err, ratio = run(kw["step_lr"] / 10)
    assert err > 0.2 or ratio > 5, (err, ratio)


def test_ring_mixture_mode_weights():
    ring = oracle.ring_mixture(num_modes=8, radius=4.0, std=0.3, dim=6)
    _, sde, kw = _advised(ring)
    score = ring.marginal(sde)

    def run(step_lr):
        x = annealed_langevin(score, sde, (2000, 6), step_lr=step_lr, n_steps_each=5,
                              generator=_gen(7)).samples.double()
        d = torch.cdist(x, ring.means)
        near, k = d.min(1)
        weights = torch.bincount(k, minlength=8).double() / len(x)
        return weights, (near < 3 * 0.3 * math.sqrt(6)).double().mean()

    weights, inside = run(kw["step_lr"])
    assert (weights - 1 / 8).abs().max() < 0.04, weights.tolist()
    assert inside > 0.9, inside
    _, inside = run(kw["step_lr"] / 10)
    assert inside < 0.5, inside


def test_final_denoising_removes_the_last_levels_noise():
    """Data on an 8-dimensional subspace of R^16: off it the exact std is 0; the last level
    leaves noise of about sigma_L there, NCSNv2's denoising step removes it (exactly, as
    lam / (lam + sigma_L^2) = 0), and the samples' stds get closer to the data's."""
    mu, C = _correlated(16, zero_eigs=8)
    dist = oracle.gaussian(mu, C)
    sde = VESDE(0.01, 10.0, N=12)
    score = dist.marginal(sde)
    lam, U = torch.linalg.eigh(C)
    stds = {}
    for denoise in (False, True):
        x = annealed_langevin(score, sde, (2000, 16), n_steps_each=5, step_lr=3e-5,
                              denoise=denoise, generator=_gen(8)).samples.double()
        stds[denoise] = ((x - mu) @ U).std(0)
    _, S_plain = ald_moments(mu, C, sde, 5, 3e-5, False)
    v_plain = torch.diagonal(U.T @ S_plain @ U)
    off, on = slice(0, 8), slice(8, 16)
    # without denoising: the exact ALD std, about sigma_L off the subspace
    assert ((stds[False] / v_plain.sqrt() - 1).abs() < 0.1).all()
    assert (stds[False][off] > 0.005).all() and (stds[False][off] < 0.03).all()
    # with it: nothing off the subspace, on it lam / (lam + sigma_L^2) ~ 1 changes little
    assert (stds[True][off] < 1e-3).all(), stds[True][off].tolist()
    assert ((stds[True][on] / stds[False][on] - 1).abs() < 0.01).all()
    exact = lam.clamp(min=0).sqrt()
    assert (stds[True][off] - exact[off]).abs().sum() < 0.1 * (stds[False][off] - exact[off]).abs().sum()


# ----------------------------------------------------------------------------- inpainting


def inpaint_mean(mu, C, sde, n_steps_each, step_lr, data, known):
    """Exact mean of NCSN inpainting on N(mu, C): the known pixels are data + sigma z with
    E z = 0 and the score is linear, -(C + sigma^2 I)^{-1} (x - mu), so the unknown pixels'
    mean m follows m <- m - a [P_uu (m - mu_u) + P_uk (data_k - mu_k)], from m = 0 (the prior)."""
    k, u = known, ~known
    m = torch.zeros(int(u.sum()), dtype=torch.float64)
    for i in range(sde.N):
        s = sde.sigma_max * (sde.sigma_min / sde.sigma_max) ** (i / (sde.N - 1))
        a = step_lr * s ** 2 / sde.sigma_min ** 2
        P = torch.linalg.inv(C + s ** 2 * torch.eye(len(mu), dtype=torch.float64))
        for _ in range(n_steps_each):
            m = m - a * (P[u][:, u] @ (m - mu[u]) + P[u][:, k] @ (data[k] - mu[k]))
    s = sde.sigma_min  # the denoising step at sigma_L
    P = torch.linalg.inv(C + s ** 2 * torch.eye(len(mu), dtype=torch.float64))
    return m - s ** 2 * (P[u][:, u] @ (m - mu[u]) + P[u][:, k] @ (data[k] - mu[k]))


def test_inpainting_keeps_known_pixels_and_finds_the_conditional_mean():
    mu, C = _correlated(16, seed=1)
    dist = oracle.gaussian(mu, C)
    _, sde, kw = _advised(dist, n_steps_each=20)
    lam, U = torch.linalg.eigh(C)
    truth = (mu + 2 * lam[-1].sqrt() * U[:, -1]).float()  # 2 std out along the top direction
    known = torch.zeros(16)
    known[::2] = 1
    k, u = known.bool(), ~known.bool()
    data = truth.expand(1000, 16).clone()
    res = annealed_inpaint(dist.marginal(sde), sde, data, known, generator=_gen(10), **kw)
    x = res.samples.double()
    assert torch.equal(res.samples[:, k], data[:, k])
    exact = inpaint_mean(mu, C, sde, kw["n_steps_each"], kw["step_lr"], truth.double(), k)
    se = (x[:, u].var(0) / 1000).sqrt()
    assert ((x[:, u].mean(0) - exact).abs() < 5 * se).all()
    # ... which is near the exact conditional mean E[x_u | x_k], far from the prior mean
    Cuk, Ckk = C[u][:, k], C[k][:, k]
    cond = mu[u] + Cuk @ torch.linalg.solve(Ckk, truth.double()[k] - mu[k])
    cond_var = torch.diagonal(C[u][:, u] - Cuk @ torch.linalg.solve(Ckk, Cuk.T))
    err = (x[:, u].mean(0) - cond).abs()
    assert (err < 0.2).all(), err.tolist()
    assert err.norm() < 0.4 * (mu[u] - cond).norm(), (err.norm(), (mu[u] - cond).norm())
    ratio = x[:, u].var(0) / cond_var
    assert (ratio > 0.7).all() and (ratio < 2.5).all(), ratio.tolist()
    with pytest.raises(ValueError, match="mask"):
        annealed_inpaint(dist.marginal(sde), sde, data, torch.full((16,), 0.5), **kw)


# ----------------------------------------------------------------------------- NCSN models


@pytest.mark.parametrize("name", ["ve/ncsn/cifar10", "ve/ncsnv2/cifar10"])
def test_tiny_ncsn_models_run_through_the_discrete_score(name):
    import configs
    import networks

    c = configs.get_config(name)
    c.model.nf = 4
    c.data.image_size = 16
    c.model.num_scales = 4
    c.device = "cpu"
    torch.manual_seed(0)
    model = networks.create_model(c).eval()
    sde = get_sde(c)
    seen = []
    forward = model.forward

    def recording(x, y):
        seen.append(y.tolist())
        return forward(x, y)

    model.forward = recording
    score_fn = networks.get_score_fn(sde, model, continuous=False)
    shape = (2, c.data.num_channels, 16, 16)
    res = annealed_langevin(score_fn, sde, shape, n_steps_each=2, step_lr=c.sampling.snr ** 2 *
                            2 * sde.sigma_min ** 2, generator=_gen(1))
    assert res.samples.shape == shape and torch.isfinite(res.samples).all()
    assert res.nfe == 4 * 2 + 1
    assert [s[0] for s in seen] == [0, 0, 1, 1, 2, 2, 3, 3, 3]


# ----------------------------------------------------------------------------- reproducibility


def test_same_seed_same_samples_and_bad_input():
    ring = oracle.ring_mixture(dim=2)
    sde = VESDE(0.01, 10.0, N=8)
    score = ring.marginal(sde)
    a = annealed_langevin(score, sde, (50, 2), generator=_gen(1)).samples
    b = annealed_langevin(score, sde, (50, 2), generator=_gen(1)).samples
    c = annealed_langevin(score, sde, (50, 2), generator=_gen(2)).samples
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="step_lr"):
        annealed_langevin(score, sde, (4, 2), step_lr=0.0)
    with pytest.raises(ValueError, match="n_steps_each"):
        annealed_langevin(score, sde, (4, 2), n_steps_each=0)
    with pytest.raises(ValueError, match="shape"):
        annealed_langevin(score, sde, (4,))
