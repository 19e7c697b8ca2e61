"""Linear inverse problems (solvers.inverse, solvers.conditional.inpaint/colorize) against the
exact conditional of a correlated Gaussian prior (sde_lib.oracle gives its exact score):

    x ~ N(mu, S), y = A x + s_y n  =>  x | y ~ N(mu + K (y - A mu), S - K A S),
    K = S A^T (A S A^T + s_y^2 I)^+,

which for a mask is the Schur complement of the observed pixels. Sample means and covariances
are compared with bounds of a few Monte-Carlo standard errors, E||m_hat - m||^2 = tr(C)/n and
E||C_hat - C||_F^2 ~= (tr(C)^2 + ||C||_F^2)/n, so a wrong conditional (or the unconditional prior)
fails them by far.
"""

import math

import pytest
import torch

from sde_lib import VESDE, VPSDE, oracle, subVPSDE
from solvers.conditional import colorize, inpaint
from solvers.inverse import linear_inverse
from solvers.operators import (COLOR_BASIS, Blur, Colorization, FunctionOperator, LinearOperator,
                               Mask, MatrixOperator, SuperResolution, couple, decouple)

from cases import pc_cases

SDES = {"ve": lambda: VESDE(sigma_min=0.01, sigma_max=10.0), "vp": VPSDE, "subvp": subVPSDE}


smooth_cov = oracle.smooth_image_covariance


def operator_matrix(op, event_shape):
    D = math.prod(event_shape)
    E = torch.eye(D, dtype=torch.float64).reshape(D, *event_shape)
    return op.forward(E).reshape(D, -1).T


def exact_posterior(mean, cov, A, y, noise_var):
    G = A @ cov @ A.T + noise_var * torch.eye(A.shape[0], dtype=torch.float64)
    K = cov @ A.T @ torch.linalg.pinv(G, hermitian=True, rtol=1e-10)
    return mean + K @ (y - A @ mean), cov - K @ A @ cov


def errors(samples, mean, cov):
    x = samples.flatten(1).double()
    n = x.shape[0]
    mean_err = (x.mean(0) - mean).norm().item()
    cov_err = (torch.cov(x.T) - cov).norm().item()
    mean_se = math.sqrt(cov.trace().item() / n)
    cov_se = math.sqrt((cov.trace().item() ** 2 + cov.norm().item() ** 2) / n)
    return mean_err, cov_err, mean_se, cov_se


def problem(op, event_shape, mean, cov, noise_std=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    dist = oracle.gaussian(mean, cov, event_shape)
    x0 = dist.sample(1, generator=g, dtype=torch.float64)
    y = op.forward(x0)
    if noise_std:
        y = y + noise_std * torch.randn(y.shape, generator=g, dtype=torch.float64)
    post_mean, post_cov = exact_posterior(mean, cov, operator_matrix(op, event_shape),
                                          y.flatten(), noise_std ** 2)
    return dist, y.float(), post_mean, post_cov


def check_exact(res, y, op, post_mean, post_cov, prior_mean, k=4.0, noiseless=True):
    mean_err, cov_err, mean_se, cov_se = errors(res.samples, post_mean, post_cov)
    gap = (prior_mean - post_mean).norm().item()
    assert gap > 3 * (k * mean_se + 0.02), "test problem too weak: prior and posterior means too close"
    assert mean_err < k * mean_se + 0.02, (mean_err, mean_se)
    assert cov_err < k * cov_se + 0.02 * post_cov.norm().item(), (cov_err, cov_se)
    if noiseless:
        assert (op.forward(res.samples) - y).abs().max() < 1e-5


# ----------------------------------------------------------------------------- operators

OPERATORS = {
    "mask": (lambda g: Mask((torch.rand(2, 1, 4, 4, generator=g) > 0.5).float()), (1, 4, 4)),
    "colorization": (lambda g: Colorization(), (3, 4, 4)),
    "super_resolution": (lambda g: SuperResolution(2), (3, 4, 4)),
    "blur": (lambda g: Blur(torch.tensor([[1., 2, 1], [2, 4, 2], [1, 2, 1]]) / 16), (2, 6, 6)),
    "matrix": (lambda g: MatrixOperator(torch.randn(5, 12, generator=g), (3, 2, 2)), (3, 2, 2)),
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_operator_adjoint_pinv_and_gram(name):
    g = torch.Generator().manual_seed(1)
    make, event = OPERATORS[name]
    op = make(g)
    x = torch.randn((2, *event), generator=g, dtype=torch.float64)
    y = op.forward(x)
    w = torch.randn(y.shape, generator=g, dtype=torch.float64)
    assert torch.allclose((y * w).sum(), (x * op.transpose(w)).sum(), atol=1e-12)   # <Ax,w>=<x,A^T w>
    px = op.project(x)
    assert torch.allclose(op.project(px), px, atol=1e-12)                           # A^+A idempotent
    assert torch.allclose(op.forward(op.pinv(y)), y, atol=1e-10)                    # A A^+ y = y
    assert torch.allclose(((x - px) * px).sum(), torch.zeros((), dtype=torch.float64), atol=1e-10)
    c, s = torch.tensor([0.7, 0.3], dtype=torch.float64), torch.tensor([0.2, 0.5], dtype=torch.float64)
    u = op.gram_solve(y, c, s)
    back = c.reshape(-1, *[1] * (y.dim() - 1)) * op.forward(op.transpose(u)) + \
        s.reshape(-1, *[1] * (y.dim() - 1)) * u
    assert torch.allclose(back, y, atol=1e-10)
    assert torch.allclose(LinearOperator.gram_solve(op, y, c, s), u, atol=1e-8)    # CG fallback


def test_color_basis_is_the_orthonormal_grey_decomposition():
    M = COLOR_BASIS
    assert torch.allclose(M.T @ M, torch.eye(3, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(M[:, 0], torch.full((3,), 3 ** -0.5, dtype=torch.float64))
    # the original colorizer's matrix (float32), column for column
    original = torch.tensor([[5.7735014e-01, -8.1649649e-01, 4.7008697e-08],
                             [5.7735026e-01, 4.0824834e-01, 7.0710671e-01],
                             [5.7735026e-01, 4.0824822e-01, -7.0710683e-01]], dtype=torch.float64)
    assert torch.allclose(M, original, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    c = decouple(x)
    assert torch.allclose(couple(c), x, atol=1e-12)
    assert torch.allclose(c[:, :1] / math.sqrt(3), x.mean(1, keepdim=True), atol=1e-12)
    keep_grey = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    assert torch.allclose(Colorization().project(x), couple(c * keep_grey), atol=1e-12)


# ----------------------------------------------------------------------------- exact conditionals

H = W = 4
PRIOR_MEAN = torch.linspace(-0.3, 0.3, H * W, dtype=torch.float64)
PRIOR_COV = smooth_cov(1, H, W)
CENTER = torch.ones(1, 1, H, W)
CENTER[..., 1:3, 1:3] = 0


@pytest.mark.parametrize("sde_name,options", pc_cases(100) + [
    ("ve", dict(sampler="dpm_solver++", steps=20)),
    ("vp", dict(sampler="heun", steps=15)),
    ("subvp", dict(sampler="ode", rtol=1e-4, atol=1e-4)),
])
def test_tmpd_inpainting_matches_the_exact_conditional(sde_name, options):
    sde = SDES[sde_name]()
    op = Mask(CENTER)
    dist, y, post_mean, post_cov = problem(op, (1, H, W), PRIOR_MEAN, PRIOR_COV)
    g = torch.Generator().manual_seed(2)
    n = 600
    res = inpaint(dist.marginal(sde), sde, y.expand(n, 1, H, W).contiguous(), CENTER,
                  method="tmpd", generator=g, **options)
    check_exact(res, y, op, post_mean, post_cov, PRIOR_MEAN)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_tmpd_colorization_matches_the_exact_conditional(sde_name):
    sde = SDES[sde_name]()
    op = Colorization()
    mean = torch.linspace(-0.2, 0.2, 12, dtype=torch.float64)
    cov = smooth_cov(3, 2, 2, ell=1.0, channel_corr=None)
    dist, y, post_mean, post_cov = problem(op, (3, 2, 2), mean, cov, seed=3)
    g = torch.Generator().manual_seed(4)
    res = colorize(dist.marginal(sde), sde, y.expand(800, 1, 2, 2).contiguous(), method="tmpd",
                   generator=g, steps=100)
    check_exact(res, y, op, post_mean, post_cov, mean)
    # a three-channel grey input (the original's form) is the same problem
    res3 = colorize(dist.marginal(sde), sde, y.expand(4, 3, 2, 2).contiguous(), method="tmpd",
                    generator=torch.Generator().manual_seed(4), steps=5, sampler="dpm_solver++")
    assert (res3.samples.mean(1, keepdim=True) - y).abs().max() < 1e-5


@pytest.mark.parametrize("make,noise_std", [
    (lambda: SuperResolution(2), 0.0),
    (lambda: Blur(torch.tensor([[1., 2, 1], [2, 4, 2], [1, 2, 1]]) / 16), 0.1),
    (lambda: MatrixOperator(torch.randn(6, 16, generator=torch.Generator().manual_seed(5)),
                            (1, 4, 4)), 0.2),
])
def test_tmpd_super_resolution_blur_and_matrix(make, noise_std):
    sde = VPSDE()
    op = make()
    dist, y, post_mean, post_cov = problem(op, (1, H, W), PRIOR_MEAN, PRIOR_COV,
                                           noise_std=noise_std, seed=6)
    n = 600
    res = linear_inverse(dist.marginal(sde), sde, y.expand(n, *y.shape[1:]).contiguous(), op,
                         noise_std=noise_std, method="tmpd", predictor="ancestral_sampling",
                         corrector="none", steps=60, generator=torch.Generator().manual_seed(7))
    check_exact(res, y, op, post_mean, post_cov, PRIOR_MEAN, noiseless=noise_std == 0)


# ----------------------------------------------------------------------------- the paper's projection

@pytest.mark.parametrize("sde_name,predictor,corrector", [
    (sde, p, c) for sde in sorted(SDES) for p, c in [("reverse_diffusion", "langevin"),
                                                     ("ancestral_sampling", "none"),
                                                     ("euler_maruyama", "ald")]
] + [("ve", "none", "langevin")])   # corrector only: NCSN's annealed Langevin, a VE sampler
def test_projection_inpainting_exact_when_unknown_part_is_independent(sde_name, predictor,
                                                                      corrector):
    """With a prior under which the unknown pixels are independent of the known ones, the
    replacement method samples the exact conditional (= the unknown part's marginal) with every
    predictor and corrector, and reproduces the known pixels exactly."""
    sde = SDES[sde_name]()
    u = ~CENTER.flatten().bool()
    cov = PRIOR_COV.clone()
    cov[u[:, None] & ~u[None, :]] = 0
    cov[~u[:, None] & u[None, :]] = 0
    op = Mask(CENTER)
    dist, y, post_mean, post_cov = problem(op, (1, H, W), PRIOR_MEAN + 1.0 * u, cov, seed=8)
    n = 800
    steps = 400 if predictor == "none" else 100
    res = inpaint(dist.marginal(sde), sde, y.expand(n, 1, H, W).contiguous(), CENTER,
                  predictor=predictor, corrector=corrector, steps=steps,
                  generator=torch.Generator().manual_seed(9))
    assert res.info["method"] == "projection" and res.info["init"] == "marginal"
    check_exact(res, y, op, post_mean, post_cov, torch.zeros(H * W, dtype=torch.float64))


def test_projection_inpainting_correlated_prior_approaches_the_conditional_with_steps():
    """For a correlated prior the replacement method is approximate; with the Langevin corrector
    its error falls as the steps grow (benchmarks/RESULTS.md has the table)."""
    sde = VESDE(sigma_min=0.01, sigma_max=10.0)
    op = Mask(CENTER)
    dist, y, post_mean, post_cov = problem(op, (1, H, W), PRIOR_MEAN, PRIOR_COV)
    errs = []
    for steps in (30, 400):
        res = inpaint(dist.marginal(sde), sde, y.expand(1500, 1, H, W).contiguous(), CENTER,
                      steps=steps, generator=torch.Generator().manual_seed(10))
        assert (res.samples * CENTER - y).abs().max() == 0
        errs.append(errors(res.samples, post_mean, post_cov)[:2])
    gap = (PRIOR_MEAN - post_mean).norm().item()
    assert errs[1][0] < 0.1 * gap and errs[1][0] < errs[0][0]
    assert errs[1][1] < 0.5 * errs[0][1]


def test_projection_colorization_and_inits():
    sde = subVPSDE()
    mean = torch.linspace(-0.2, 0.2, 12, dtype=torch.float64)
    cov = smooth_cov(3, 2, 2, ell=1.0, channel_corr=None)
    dist, y, post_mean, post_cov = problem(Colorization(), (3, 2, 2), mean, cov, seed=11)
    for init in ("marginal", "original"):
        res = colorize(dist.marginal(sde), sde, y.expand(500, 1, 2, 2).contiguous(), init=init,
                       steps=150, generator=torch.Generator().manual_seed(12))
        assert (res.samples.mean(1, keepdim=True) - y).abs().max() < 1e-6
        mean_err = errors(res.samples, post_mean, post_cov)[0]
        assert mean_err < 0.2 * (mean - post_mean).norm().item()


def test_initial_state_noises_the_known_part_to_the_marginal_at_T():
    from solvers.inverse import initial_state
    sde = VPSDE()
    y = torch.full((4000, 1, 2, 2), 2.0) * CENTER[..., :2, :2]
    op = Mask(CENTER[..., :2, :2].expand(4000, 1, 2, 2))
    g = torch.Generator().manual_seed(0)
    x = initial_state(sde, y, op, y.shape, init="marginal", generator=g)
    alpha, sigma = sde.marginal_prob(torch.ones(1), torch.ones(1))
    known = x[:, 0, 0, 0]
    assert abs(known.mean() - 2.0 * alpha.item()) < 0.05 and abs(known.std() - sigma.item()) < 0.05
    x = initial_state(sde, y, op, y.shape, init="original", generator=g)
    assert (x[:, 0, 0, 0] == 2.0).all()


# ----------------------------------------------------------------------------- noisy observations

def test_noisy_inpainting_dps_pigdm_move_towards_the_posterior_and_tmpd_is_exact():
    sde = VPSDE()
    noise_std = 0.3
    op = Mask(CENTER)
    dist, y, post_mean, post_cov = problem(op, (1, H, W), PRIOR_MEAN, PRIOR_COV,
                                           noise_std=noise_std, seed=13)
    ys = y.expand(600, 1, H, W).contiguous()
    gap = (PRIOR_MEAN - post_mean).norm().item()
    for method in ("dps", "pigdm"):
        res = inpaint(dist.marginal(sde), sde, ys, CENTER, noise_std=noise_std, method=method,
                      steps=200, corrector="none", generator=torch.Generator().manual_seed(14))
        assert torch.isfinite(res.samples).all()
        assert errors(res.samples, post_mean, post_cov)[0] < 0.35 * gap, method
    res = inpaint(dist.marginal(sde), sde, ys, CENTER, noise_std=noise_std, method="tmpd",
                  steps=100, corrector="none", generator=torch.Generator().manual_seed(14))
    check_exact(res, y, op, post_mean, post_cov, PRIOR_MEAN, noiseless=False)


# ----------------------------------------------------------------------------- bad input, seeds

def test_bad_masks_labels_and_options_fail_clearly():
    sde = VESDE()
    dist = oracle.gaussian(PRIOR_MEAN, PRIOR_COV, (1, H, W))
    data = torch.zeros(3, 1, H, W)
    with pytest.raises(ValueError, match=r"mask of shape \(1, 1, 3, 4\) does not broadcast"):
        inpaint(dist.marginal(sde), sde, data, torch.ones(1, 1, 3, 4))
    with pytest.raises(ValueError, match="mask must hold only 0 .* and 1"):
        inpaint(dist.marginal(sde), sde, data, torch.full((1, 1, H, W), 0.5))
    with pytest.raises(ValueError, match="'projection' is for noiseless"):
        inpaint(dist.marginal(sde), sde, data, CENTER, noise_std=0.1, method="projection")
    with pytest.raises(ValueError, match="not of sampler 'ode'"):
        inpaint(dist.marginal(sde), sde, data, CENTER, sampler="ode")
    with pytest.raises(ValueError, match="'dps' needs noisy observations"):
        inpaint(dist.marginal(sde), sde, data, CENTER, method="dps", steps=2)
    with pytest.raises(ValueError, match="method must be one of"):
        inpaint(dist.marginal(sde), sde, data, CENTER, method="magic")
    with pytest.raises(ValueError, match="equal channels"):
        colorize(dist.marginal(sde), sde, torch.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match="score function returns"):
        inpaint(lambda x, t: x[:, :, :2], sde, data, CENTER, steps=2)
    with pytest.raises(TypeError, match="must be a LinearOperator"):
        linear_inverse(dist.marginal(sde), sde, data, lambda x: x)
    no_pinv = FunctionOperator(lambda x: x[:, :, :2], lambda y: torch.cat([y, 0 * y], 2))
    with pytest.raises(ValueError, match="needs the operator's pseudo-inverse"):
        linear_inverse(dist.marginal(sde), sde, torch.zeros(2, 1, 2, 4), no_pinv, steps=2)


def test_same_generator_same_result_and_batch_chunks():
    sde = VPSDE()
    dist = oracle.gaussian(PRIOR_MEAN, PRIOR_COV, (1, H, W))
    mask = (torch.rand(6, 1, H, W, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    data = dist.sample(6, generator=torch.Generator().manual_seed(1))

    def run(**kw):
        return inpaint(dist.marginal(sde), sde, data, mask, steps=30,
                       generator=torch.Generator().manual_seed(3), **kw)
    a, b = run(), run()
    assert torch.equal(a.samples, b.samples)
    c = run(batch_size=4)                     # per-sample masks follow their chunk
    assert c.info["batches"] == 2 and torch.equal(c.samples * mask, data * mask)


# ----------------------------------------------------------------------------- per-sample operators

def _rows(res, sl):
    class Part:
        samples = res.samples[sl]
    return Part


@pytest.mark.parametrize("sde_name,options", [
    ("vp", dict(predictor="ancestral_sampling", corrector="none", steps=60)),
    ("ve", dict(sampler="dpm_solver++", steps=15)),
])
def test_tmpd_per_sample_masks_match_each_exact_conditional(sde_name, options):
    """A [B, ...] mask (two different masks, half the batch each, one observation each): tmpd
    builds its Jacobian basis one batch at a time, so each half samples its own exact
    conditional."""
    sde = SDES[sde_name]()
    left = torch.zeros(1, 1, H, W)
    left[..., :, :2] = 1
    masks = (CENTER, left)
    n = 400
    probs = [problem(Mask(m), (1, H, W), PRIOR_MEAN, PRIOR_COV, seed=20) for m in masks]
    data = torch.cat([p[1].expand(n // 2, 1, H, W) for p in probs])
    mask = torch.cat([m.expand(n // 2, 1, H, W) for m in masks])
    res = inpaint(probs[0][0].marginal(sde), sde, data, mask, method="tmpd",
                  generator=torch.Generator().manual_seed(21), **options)
    for k, (m, (_, y, post_mean, post_cov)) in enumerate(zip(masks, probs)):
        sl = slice(k * n // 2, (k + 1) * n // 2)
        check_exact(_rows(res, sl), y, Mask(m), post_mean, post_cov, PRIOR_MEAN)


def test_tmpd_colorization_with_per_sample_grey_images():
    """Colorization of two different grey images in one batch: each half samples the exact
    conditional of its own image."""
    sde = VPSDE()
    op = Colorization()
    mean = torch.linspace(-0.2, 0.2, 12, dtype=torch.float64)
    cov = smooth_cov(3, 2, 2, ell=1.0, channel_corr=None)
    probs = [problem(op, (3, 2, 2), mean, cov, seed=s) for s in (11, 12)]
    assert (probs[0][1] - probs[1][1]).abs().max() > 0.3
    n = 600
    gray = torch.cat([p[1].expand(n // 2, 1, 2, 2) for p in probs])
    res = colorize(probs[0][0].marginal(sde), sde, gray, method="tmpd", steps=60,
                   predictor="ancestral_sampling", corrector="none",
                   generator=torch.Generator().manual_seed(24))
    for k, (_, y, post_mean, post_cov) in enumerate(probs):
        sl = slice(k * n // 2, (k + 1) * n // 2)
        check_exact(_rows(res, sl), y, op, post_mean, post_cov, mean)


# ----------------------------------------------------------------------------- non-finite input

def test_nan_in_unknown_pixels_is_never_read():
    """A NaN/inf in an unknown pixel of the data (mask 0) does not reach any sample: the mask
    selects (torch.where), it does not multiply (NaN * 0 = NaN)."""
    sde = VESDE(sigma_min=0.01, sigma_max=10.0)
    dist = oracle.gaussian(PRIOR_MEAN, PRIOR_COV, (1, H, W))
    data = dist.sample(4, generator=torch.Generator().manual_seed(0)).float()
    holes = data.clone()
    holes[0, 0, 1, 1] = math.nan
    holes[2, 0, 2, 1] = math.inf
    for method, kw in (("projection", {}), ("tmpd", {"sampler": "heun", "steps": 5}),
                       ("pigdm", {"sampler": "heun", "steps": 5})):
        a = inpaint(dist.marginal(sde), sde, holes, CENTER, method=method,
                    generator=torch.Generator().manual_seed(1), **dict({"steps": 20}, **kw))
        b = inpaint(dist.marginal(sde), sde, data, CENTER, method=method,
                    generator=torch.Generator().manual_seed(1), **dict({"steps": 20}, **kw))
        assert torch.isfinite(a.samples).all(), method
        assert torch.equal(a.samples, b.samples), method
    assert torch.isfinite(Mask(CENTER).forward(holes)).all()


def test_nonfinite_data_and_masks_where_used_fail_clearly():
    sde = VESDE()
    dist = oracle.gaussian(PRIOR_MEAN, PRIOR_COV, (1, H, W))
    data = torch.zeros(3, 1, H, W)
    data[1, 0, 0, 0] = math.nan                       # a known pixel (CENTER is 1 there)
    with pytest.raises(ValueError, match=r"inpainting data holds 1 NaN/inf values where it is "
                                         r"used \(in samples \[1\]\)"):
        inpaint(dist.marginal(sde), sde, data, CENTER, steps=2)
    mask = CENTER.clone()
    mask[..., 0, 0] = math.nan
    with pytest.raises(ValueError, match="mask must hold only 0 .* and 1 .*NaN/inf"):
        inpaint(dist.marginal(sde), sde, torch.zeros(3, 1, H, W), mask, steps=2)
    gray = torch.zeros(2, 1, 2, 2)
    gray[1, 0, 1, 1] = math.inf
    with pytest.raises(ValueError, match=r"the gray image holds 1 NaN/inf values"):
        colorize(dist.marginal(sde), sde, gray, steps=2)
    with pytest.raises(ValueError, match=r"the observations y holds 1 NaN/inf values"):
        linear_inverse(dist.marginal(sde), sde, data.flatten(1)[:, :5],
                       MatrixOperator(torch.randn(5, 16), (1, H, W)), steps=2)


def test_score_of_batch_one_is_caught_before_any_work():
    sde = VESDE()
    dist = oracle.gaussian(PRIOR_MEAN, PRIOR_COV, (1, H, W))

    def broadcast(x, t):
        return dist.marginal(sde)(x[:1], t[:1])

    with pytest.raises(ValueError, match=r"returns \[1, 1, 4, 4\] for input of shape "
                                         r"\[2, 1, 4, 4\]"):
        inpaint(broadcast, sde, torch.zeros(3, 1, H, W), CENTER, steps=2)
