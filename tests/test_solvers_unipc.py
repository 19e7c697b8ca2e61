"""solvers/unipc.py: UniPC (Zhao et al. 2023) against exact answers.

Gaussian data N(mu, Sigma) has a closed-form probability-flow map (`cases.exact_flow`): each
eigen-coordinate keeps its standardised value, y_s = y_t sqrt(v_s / v_t), v = alpha^2 lam +
sigma^2. Deterministic samplers are compared point by point with it from the same x(T); orders of
convergence are least-squares slopes of log(error) against log(steps).
"""

import math

import pytest
import torch

import solvers
from sde_lib import VESDE, VPSDE, oracle, subVPSDE
from solvers.unipc import gaussian_denoiser, unipc_coefficients

from cases import exact_flow

SDES = [VESDE, VPSDE, subVPSDE]
D = 8


def flow_errors(sde, gaussian, steps, **kwargs):
    """max |x - x_exact| / std(x_exact) at x(eps) (no final denoising), float64 throughout."""
    mu, cov, dist = gaussian
    score = dist.marginal(sde).score
    x_T = sde.prior_sampling((64, D), generator=torch.Generator().manual_seed(1),
                             dtype=torch.float64)
    ref = exact_flow(sde, mu, cov, x_T, sde.T, sde.sampling_eps)
    out = []
    for n in steps:
        res = solvers.sample(score, sde, x_init=x_T, denoise=False, steps=n, **kwargs)
        assert res.nfe == n
        out.append(float((res.samples - ref).abs().max() / ref.std()))
    return out


def slope(steps, errors):
    """-d log(error) / d log(steps), least squares."""
    A = torch.tensor([[math.log(n), 1.0] for n in steps], dtype=torch.float64)
    b = torch.log(torch.tensor(errors, dtype=torch.float64))[:, None]
    return -float(torch.linalg.lstsq(A, b).solution[0])


STEPS = (16, 24, 32, 48, 64)


# Measured slopes (VE / VP / sub-VP), B(h) = h (bh1) | e^h - 1 (bh2):
#   UniPC-1 2.16/2.17/2.19 | 1.95/1.94/1.87, UniPC-2 3.10/3.11/3.14 | 2.90/2.87/2.69,
#   UniPC-3 3.21/3.40/4.07 | 3.20/3.40/4.06, UniP-2 2.15/2.17/2.28 | 1.92/1.90/1.77,
#   UniP-3 3.97/3.91/3.92 (both).
# UniPC-p is of order p + 1 (bh2's smaller errors are less asymptotic at these steps), but the
# first step can only be UniPC-1 (local error O(h^3)), which caps UniPC-3's global order at 3
# (its slope lies between 3 and 4); UniP-3 is at least of order 3 (here above it).
@pytest.mark.parametrize("sde_cls", SDES)
@pytest.mark.parametrize("options,lo,hi", [
    (dict(order=1, variant="bh1"), 1.8, 2.5),
    (dict(order=1, variant="bh2"), 1.7, 2.5),
    (dict(order=2, variant="bh1"), 2.7, 3.5),
    (dict(order=2, variant="bh2"), 2.5, 3.5),
    (dict(order=3, variant="bh1"), 2.8, 4.6),
    (dict(order=3, variant="bh2"), 2.8, 4.6),
    (dict(order=2, variant="bh1", use_corrector=False), 1.8, 2.6),
    (dict(order=2, variant="bh2", use_corrector=False), 1.6, 2.6),
    (dict(order=3, use_corrector=False), 2.7, 4.6),
])
def test_unipc_order_of_convergence(sde_cls, options, lo, hi, gaussian8):
    errors = flow_errors(sde_cls(), gaussian8, STEPS, sampler="unipc", **options)
    p = slope(STEPS, errors)
    assert lo <= p <= hi, f"slope {p:.2f} outside [{lo}, {hi}] (errors {errors})"


@pytest.mark.parametrize("sde_cls", SDES)
def test_unipc_matches_the_closed_form_flow(sde_cls, gaussian8):
    """UniPC-3 with 16 evaluations (denoise=False) is within 2% of the state's std of the exact
    flow, with 24 within 0.2%, and beats DPM-Solver++(3M) at equal NFE."""
    sde = sde_cls()
    err16, err24 = flow_errors(sde, gaussian8, (16, 24), sampler="unipc", order=3)
    assert err16 < 2e-2 and err24 < 2e-3, (err16, err24)
    dpm16, dpm24 = flow_errors(sde, gaussian8, (16, 24), sampler="dpm_solver++", order=3)
    assert err16 < dpm16 and err24 < dpm24, (err16, dpm16, err24, dpm24)


@pytest.mark.parametrize("sde_cls", SDES)
def test_unip_without_corrector_is_dpm_solver(sde_cls, gaussian8):
    """UniP-1 is DDIM (DPM-Solver++ order 1); UniP-2 with B(h) = e^h - 1 and a = 1/2 is
    DPM-Solver++(2M) (Zhao et al. 2023, Sec. 3.2)."""
    sde = sde_cls()
    score = gaussian8[2].marginal(sde).score
    x_T = sde.prior_sampling((16, D), generator=torch.Generator().manual_seed(2))
    for order in (1, 2):
        a = solvers.sample(score, sde, x_init=x_T, sampler="unipc", steps=16, order=order,
                           variant="bh2", use_corrector=False).samples
        b = solvers.sample(score, sde, x_init=x_T, sampler="dpm_solver++", steps=16,
                           order=order).samples
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_unipc_coefficients():
    """The corrector's coefficients of UniC-1 are 1/2 (trapezoidal); for p = 2 with B(h) = h
    they solve R c = g, and the predictor's a is 1/2."""
    a, c, B = unipc_coefficients(0.5, [], "bh1")
    assert a == [] and c == [0.5] and B == -0.5
    a, c, B = unipc_coefficients(0.3, [-1.0], "bh1")
    assert a == [0.5]
    hh = -0.3
    g1 = (math.expm1(hh) / hh - 1) / hh
    g2 = ((math.expm1(hh) / hh - 1) / hh - 0.5) * 2 / hh
    # R = [[1, 1], [r, 1]] with r = -1
    c_expected = torch.linalg.solve(torch.tensor([[1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64),
                                    torch.tensor([g1, g2], dtype=torch.float64))
    assert c == pytest.approx(c_expected.tolist(), rel=1e-12)


@pytest.mark.parametrize("sde_cls", SDES)
def test_analytic_first_step_is_exact_for_isotropic_gaussian(sde_cls):
    """For data N(m, c I), the Gaussian denoiser is the exact D at every t, so the analytic
    first step gives the evaluated one's result with one evaluation less."""
    sde = sde_cls()
    m = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    dist = oracle.gaussian(m, 0.3)
    score = dist.marginal(sde).score
    x = sde.prior_sampling((32, 3), generator=torch.Generator().manual_seed(3),
                           dtype=torch.float64)
    t = torch.full((32,), 0.4, dtype=torch.float64)
    torch.testing.assert_close(gaussian_denoiser(sde, m, 0.3)(x, t),
                               solvers.denoise_tweedie(score, sde, x, t))
    plain = solvers.sample(score, sde, x_init=x, sampler="unipc", steps=8)
    afs = solvers.sample(score, sde, x_init=x, sampler="unipc", steps=8,
                         analytic_first=(m, 0.3))
    assert afs.nfe == plain.nfe - 1 == 8
    torch.testing.assert_close(afs.samples, plain.samples, rtol=1e-9, atol=1e-9)


def test_unipc_bad_options(gaussian8):
    sde = VPSDE()
    score = gaussian8[2].marginal(sde).score
    with pytest.raises(ValueError, match="order"):
        solvers.sample(score, sde, (4, D), sampler="unipc", order=4)
    with pytest.raises(ValueError, match="variant"):
        solvers.sample(score, sde, (4, D), sampler="unipc", variant="bh3")
    with pytest.raises(ValueError, match="analytic_first"):
        solvers.sample(score, sde, (4, D), sampler="unipc", analytic_first=1.0)
