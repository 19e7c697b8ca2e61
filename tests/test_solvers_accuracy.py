"""Samplers against exact answers: the closed-form probability-flow map of a Gaussian, exact
moments of a Gaussian, exact mode weights of a mixture (sde_lib.oracle gives every score).

Gaussian data N(mu, Sigma), Sigma = U diag(lam) U^T, under a linear SDE has the marginals
N(alpha_t mu, U diag(alpha_t^2 lam + sigma_t^2) U^T), and the probability-flow ODE keeps each
eigen-coordinate's standardised value: y_s = y_t sqrt(v_s / v_t), v = alpha^2 lam + sigma^2
(from dv/dt = 2 f v + g^2). So a deterministic sampler's output is compared point by point
with the exact solution from the same x(T).
"""


import pytest
import torch

import solvers
from sde_lib import SDES as REGISTRY, VESDE, VPSDE, oracle, sde_names

from cases import exact_flow

SDES = [REGISTRY.get(name) for name in sde_names()]  # every registered SDE, defaults
# The PC sampler's grid is uniform in t. EDM's time is its noise level on [0.002, 80], so a
# uniform grid there spends most steps at high noise and needs about 10x the steps of the other
# SDEs for the same error (the fast samplers' grids, in sigma or log-SNR, do not).
PC_STEPS = {"edm_vesde": 10}


def pc_steps(sde_cls, steps):
    return steps * PC_STEPS.get(sde_cls.name, 1)


# With so many steps the PC moment tests would take minutes for EDM; its PC sampling is checked
# by the probability-flow predictors and the mixture's mode weights instead.
PC_MOMENT_SDES = [c for c in SDES if c.name not in PC_STEPS]
D = 8


def flow_errors(sde, gaussian, settings, n=64):
    """max |x - x_exact| / std(x_exact) for each sampler setting, from the same x(T)."""
    mu, cov, dist = gaussian
    score = dist.marginal(sde).score
    xT = sde.prior_sampling((n, D), generator=torch.Generator().manual_seed(1))
    eps = sde.sampling_eps
    ref = exact_flow(sde, mu, cov, xT, sde.T, eps)
    out = []
    for kw in settings:
        x = solvers.sample(score, sde, x_init=xT, denoise=False, **kw).samples
        out.append(float((x.double() - ref).abs().max() / ref.std()))
    return out


def assert_falls(errors, bound, what):
    assert all(b < a for a, b in zip(errors, errors[1:])), f"{what}: errors {errors} do not fall"
    assert errors[-1] < bound, f"{what}: final error {errors[-1]:.3g} >= {bound}"


@pytest.mark.parametrize("sde_cls", SDES)
def test_heun_converges_to_exact_flow(sde_cls, gaussian8):
    errs = flow_errors(sde_cls(), gaussian8, [dict(sampler="heun", steps=s) for s in (6, 12, 24)])
    assert_falls(errs, 0.08, "heun")
    # second order: doubling the steps divides the error by about 4 (at least 3 here)
    assert errs[2] < errs[1] / 3


@pytest.mark.parametrize("sde_cls", SDES)
@pytest.mark.parametrize("order,steps,bound", [(2, (5, 10, 20, 40), 0.02),
                                               (3, (10, 20, 40), 0.005)])
def test_dpm_solver_converges_to_exact_flow(sde_cls, order, steps, bound, gaussian8):
    errs = flow_errors(sde_cls(), gaussian8, [dict(sampler="dpm_solver++", steps=s, order=order)
                                              for s in steps])
    assert_falls(errs, bound, f"dpm_solver++ order {order}")


@pytest.mark.parametrize("sde_cls", SDES)
@pytest.mark.parametrize("method", ["dopri5", "scipy_RK45"])
def test_ode_sampler_converges_to_exact_flow(sde_cls, method, gaussian8):
    """(With loose tolerances the embedded error estimate can accept long steps, so the error
    is not monotone in the tolerance there; compared at 1e-3 and the default 1e-5.)"""
    errs = flow_errors(sde_cls(), gaussian8,
                       [dict(sampler="ode", rtol=tol, atol=tol, method=method)
                        for tol in (1e-3, 1e-5)])
    assert_falls(errs, 2e-4, f"ode {method}")


@pytest.mark.parametrize("sde_cls, predictor", [
    (sde_cls, predictor) for sde_cls in SDES
    for predictor in ("reverse_diffusion", "euler_maruyama", "ancestral_sampling")
    # for EDM (no discrete model) the Euler-Maruyama discretisation is reverse_diffusion again
    if not (predictor == "euler_maruyama" and sde_cls.name in PC_STEPS)])
def test_probability_flow_predictors_converge(sde_cls, predictor, gaussian8):
    """Each predictor in probability-flow mode is a first-order solver of the ODE. (Its last
    step ends near t = 0 instead of eps, a bias of order eps that stays below the bound.)"""
    errs = flow_errors(sde_cls(), gaussian8,
                       [dict(sampler="pc", predictor=predictor, corrector="none",
                             probability_flow=True, steps=pc_steps(sde_cls, s))
                        for s in (50, 200, 1000)], n=32)
    assert_falls(errs, 0.05, f"probability-flow {predictor}")


# --------------------------------------------------------------------------- stochastic samplers

MU2 = torch.tensor([3.0, -2.0], dtype=torch.float64)
COV2 = torch.tensor([[0.5, 0.3], [0.3, 0.3]], dtype=torch.float64)   # eigenvalues 0.08, 0.72


def moment_error(x):
    """||mean - mu|| / sqrt(tr Sigma) + ||cov - Sigma||_F / ||Sigma||_F against N(MU2, COV2).
    Its Monte-Carlo floor for 4000 exact samples is about 0.055 (0.04 to 0.075 over seeds)."""
    x = x.double()
    return float((x.mean(0) - MU2).norm() / COV2.trace().sqrt()
                 + (torch.cov(x.T) - COV2).norm() / COV2.norm())


def stochastic_errors(sde, settings, n=(2000,), seed=0):
    """moment_error of each setting's samples; n: the sample count of each (the last repeats)."""
    score = oracle.gaussian(MU2, COV2).marginal(sde).score
    counts = list(n) + [n[-1]] * (len(settings) - len(n))
    return [moment_error(solvers.sample(score, sde, (k, 2),
                                        generator=torch.Generator().manual_seed(seed),
                                        **kw).samples)
            for kw, k in zip(settings, counts)]


def test_exact_samples_meet_the_bound():
    """The Monte-Carlo floor of moment_error (4000 samples) sits below the bounds used here."""
    errs = [moment_error(oracle.gaussian(MU2, COV2).sample(
        4000, generator=torch.Generator().manual_seed(s))) for s in range(4)]
    assert sum(errs) / len(errs) < 0.065 and max(errs) < 0.08, errs


# coarse steps: VP/sub-VP need steps > beta_max = 20 for the DDPM discretisation.
COARSE = {"vesde": 12, "edm_vesde": 12}


@pytest.mark.parametrize("sde_cls", PC_MOMENT_SDES)
@pytest.mark.parametrize("predictor,corrector,bound", [
    ("reverse_diffusion", "langevin", 0.08), ("euler_maruyama", "langevin", 0.08),
    ("ancestral_sampling", "langevin", 0.08), ("reverse_diffusion", "none", 0.12),
    ("ancestral_sampling", "none", 0.12)])
def test_pc_sampler_moments(sde_cls, predictor, corrector, bound):
    """PC samples of a Gaussian: the moment error at 400 steps (4000 samples) is below that at
    a coarse step count and below `bound` (the Monte-Carlo floor is about 0.055; Langevin with
    snr 0.16 also inflates variances by ~2%)."""
    errs = stochastic_errors(sde_cls(), [dict(predictor=predictor, corrector=corrector,
                                              steps=pc_steps(sde_cls, s))
                                         for s in (COARSE.get(sde_cls.name, 25), 400)], n=(2000, 4000))
    assert errs[0] > errs[1] and errs[1] < bound, errs


def test_ald_corrector_only_sampler_ve():
    """NCSN's annealed Langevin dynamics (predictor 'none', corrector 'ald', snr 0.316 = NCSN's
    step_lr 2e-5 at sigma_L = 0.01): more Langevin steps per level, smaller error."""
    errs = stochastic_errors(VESDE(), [dict(predictor="none", corrector="ald", snr=0.316,
                                            steps=100, n_corrector_steps=c) for c in (1, 3, 6)])
    assert_falls(errs, 0.2, "ald")


@pytest.mark.parametrize("sde_cls", SDES)
def test_adaptive_sde_solver_moments(sde_cls):
    """Jolicoeur-Martineau et al. 2021 in 2-D with one step for the batch (error_norm='batch'):
    a loose tolerance is worse than the default one, which ends near the Monte-Carlo floor."""
    errs = stochastic_errors(sde_cls(), [dict(sampler="adaptive", error_norm="batch", rtol=r)
                                         for r in (2.0, 0.05)])
    assert errs[1] < errs[0] and errs[1] < 0.1, errs


def test_adaptive_per_sample_steps_in_64d():
    """The paper's per-sample step control, in 64-D where its error norm is reliable: mean and
    total variance of a Gaussian within a few percent."""
    g = torch.Generator().manual_seed(4)
    mu = torch.randn(64, generator=g, dtype=torch.float64)
    cov = oracle.random_covariance(64, generator=g, min_eig=0.05, max_eig=1.0)
    sde = VPSDE()
    res = solvers.sample(oracle.gaussian(mu, cov).marginal(sde).score, sde, (400, 64),
                         sampler="adaptive", generator=torch.Generator().manual_seed(0))
    x = res.samples.double()
    assert float((x.mean(0) - mu).norm() / cov.trace().sqrt()) < 0.1
    assert abs(float(torch.cov(x.T).trace() / cov.trace()) - 1) < 0.05
    assert res.nfe < 1000


# --------------------------------------------------------------------------- mixtures

@pytest.fixture(scope="module")
def ring():
    return oracle.ring_mixture(num_modes=8, radius=4.0, std=0.3)


def mode_tv(x, dist):
    labels = dist.component_log_probs(x).argmax(1)
    freq = torch.bincount(labels, minlength=dist.num_components).double() / len(labels)
    return 0.5 * float((freq - dist.weights).abs().sum())


@pytest.mark.parametrize("sde_cls", SDES)
def test_mode_weights_of_a_mixture(sde_cls, ring):
    """8 well-separated modes: every sampler puts the right mass on each (TV of the mode
    frequencies < 0.07 with 1000 samples; the Monte-Carlo floor is about 0.03) with the right
    spread. (DPM-Solver++ at its default 20 steps is 10-17% off in spread for sub-VP here, whose
    uniform-logSNR grid spends a third of its steps below sigma = 0.01; see the benchmark.)"""
    sde = sde_cls()
    score = ring.marginal(sde).score
    for kw in (dict(sampler="pc", steps=pc_steps(sde_cls, 200)), dict(sampler="heun"),
               dict(sampler="dpm_solver++", steps=30), dict(sampler="ode", rtol=1e-4, atol=1e-4)):
        x = solvers.sample(score, sde, (1000, 2), generator=torch.Generator().manual_seed(0),
                           **kw).samples
        assert mode_tv(x, ring) < 0.07, kw
        # within-mode spread: the mean squared distance to the nearest mode is 2 std^2
        d2 = torch.cdist(x.double(), ring.means).min(1).values.pow(2).mean()
        assert abs(float(d2) / (2 * 0.3 ** 2) - 1) < 0.15, (kw, float(d2))


# --------------------------------------------------------------------------- encode / decode

@pytest.mark.parametrize("sde_cls", SDES)
def test_encode_decode_round_trip(sde_cls, gaussian8):
    """decode(encode(x)) = x within 1e-3, and encode matches the exact flow to T."""
    mu, cov, dist = gaussian8
    sde = sde_cls()
    eps = sde.sampling_eps
    m = dist.marginal(sde)
    x = m.sample(torch.full((16,), eps), generator=torch.Generator().manual_seed(2))
    enc = solvers.encode(m.score, sde, x)
    z_exact = exact_flow(sde, mu, cov, x, eps, sde.T)
    assert float((enc.z.double() - z_exact).abs().max() / z_exact.std()) < 1e-3
    dec = solvers.decode(m.score, sde, enc.z)
    assert float((dec.samples - x).abs().max()) < 1e-3
    assert enc.nfe > 0 and dec.nfe > 0


def test_encode_decode_scipy_round_trip(gaussian8):
    _, _, dist = gaussian8
    sde = VPSDE()
    m = dist.marginal(sde)
    x = m.sample(torch.full((8,), sde.sampling_eps), generator=torch.Generator().manual_seed(2))
    z, nfe = solvers.encode(m.score, sde, x, method="scipy_RK45")
    back = solvers.decode(m.score, sde, z, method="scipy_RK45").samples
    assert float((back - x).abs().max()) < 1e-3 and nfe > 0


@pytest.mark.parametrize("sde_cls", SDES)
def test_ode_denoising_step_is_close_to_the_posterior_mean(sde_cls, gaussian8):
    """The ODE sampler's last, noise-free step at eps approximates Tweedie's E[x(0) | x(eps)]:
    its error is under a tenth of the correction it makes (EDM's T/N-long step overshot the
    posterior mean 79-fold)."""
    from solvers.ode import denoise_step
    mu, cov, dist = gaussian8
    sde = sde_cls()
    eps = sde.sampling_eps
    marginal = dist.marginal(sde)
    t = torch.full((256,), eps, dtype=torch.float64)
    x = marginal.sample(t, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alpha, sigma = (float(v[0]) for v in sde.coefficients(t[:1]))
    gain = alpha * cov @ torch.linalg.inv(alpha ** 2 * cov + sigma ** 2 * torch.eye(D).double())
    posterior_mean = mu + (x - alpha * mu) @ gain.T  # exact for Gaussian data
    error = (denoise_step(marginal.score, sde, x, eps) - posterior_mean).norm(dim=1)
    assert float((error / (posterior_mean - x).norm(dim=1)).max()) < 0.1
