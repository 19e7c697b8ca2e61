"""solvers/fast.py: EDM's churn (Karras et al. 2022, Algorithm 2) in the Heun sampler, on
Gaussian data with an exact score."""

import pytest
import torch

import solvers
from sde_lib import VESDE, VPSDE, subVPSDE

SDES = [VESDE, VPSDE, subVPSDE]
D = 8


@pytest.mark.parametrize("sde_cls", SDES)
def test_churn_is_reproducible_and_statistically_right(sde_cls, gaussian8):
    """EDM's churn (Algorithm 2) on Gaussian data: the same generator gives the same samples,
    another one others; with 96 steps the sample mean and covariance match N(mu, Sigma) to
    within the Monte-Carlo error of 4000 exact draws (measured: mean 0.008-0.017 and
    covariance 0.04-0.05 relative error at 128 steps, exact draws 0.017 and 0.044); a wrong
    noise level (S_noise = 1.5) is far off (covariance error about 1.4)."""
    mu, cov, dist = gaussian8
    sde = sde_cls()
    score = dist.marginal(sde).score
    churn = dict(sampler="heun", steps=96, S_churn=40.0, S_tmin=0.05, S_tmax=50.0)

    def run(seed, n=4000, **kw):
        return solvers.sample(score, sde, (n, D), generator=torch.Generator().manual_seed(seed),
                              **dict(churn, **kw)).samples.double()

    def errors(x):
        mean_err = float((x.mean(0) - mu).norm() / cov.trace().sqrt())
        cov_err = float(torch.linalg.norm(torch.cov(x.T) - cov) / torch.linalg.norm(cov))
        return mean_err, cov_err

    mean_err, cov_err = errors(run(0))
    assert mean_err < 0.05 and cov_err < 0.09, (mean_err, cov_err)
    x = run(0, n=200)
    torch.testing.assert_close(run(0, n=200), x, rtol=0, atol=0)
    assert not torch.allclose(run(1, n=200), x)
    _, cov_err_wrong = errors(run(0, n=1000, S_noise=1.5))
    assert cov_err_wrong > 0.5


def test_churn_changes_the_path_only_inside_its_window(gaussian8):
    """S_churn = 0, or a window [S_tmin, S_tmax] that no step's noise level falls in, gives
    the deterministic sampler exactly; inside it the samples differ."""
    sde = VESDE()
    score = gaussian8[2].marginal(sde).score
    x_T = sde.prior_sampling((16, D), generator=torch.Generator().manual_seed(6))

    def run(**kw):
        return solvers.sample(score, sde, x_init=x_T, sampler="heun", steps=10,
                              generator=torch.Generator().manual_seed(0), **kw).samples

    plain = run()
    torch.testing.assert_close(run(S_churn=0.0), plain, rtol=0, atol=0)
    torch.testing.assert_close(run(S_churn=5.0, S_tmin=100.0, S_tmax=200.0), plain,
                               rtol=0, atol=0)
    assert not torch.allclose(run(S_churn=5.0), plain)
    with pytest.raises(ValueError, match="S_churn"):
        run(S_churn=-1.0)
    with pytest.raises(ValueError, match="S_tmax"):
        run(S_churn=1.0, S_tmin=2.0, S_tmax=1.0)
