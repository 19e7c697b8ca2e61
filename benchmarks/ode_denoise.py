"""The ODE sampler's final noise-free step at eps against the exact posterior mean E[x(0) | x(eps)]
on Gaussian data (8-D, random covariance, the oracle's exact score), for every registered SDE:
max over 256 draws x ~ p_eps of |step(x) - E[x(0) | x]| / |E[x(0) | x] - x| (the step's error in
units of the correction it should make), with the step the sampler takes and with the original's
reverse-diffusion step of length T/N for every SDE (what it took for all of them before).

    OMP_NUM_THREADS=1 python -m benchmarks.ode_denoise
"""

import torch

from sde_lib import SDES, oracle, sde_names
from solvers.ode import denoise_step


def relative_errors(n=256, dim=8, original_step=False):
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(dim, generator=g, dtype=torch.float64)
    cov = oracle.random_covariance(dim, generator=g, min_eig=0.05, max_eig=1.0)
    dist = oracle.gaussian(mu, cov)
    out = {}
    for name in sde_names():
        sde = SDES.get(name)()
        if original_step:
            sde.original_denoising = True
        eps = sde.sampling_eps
        marginal = dist.marginal(sde)
        t = torch.full((n,), eps, dtype=torch.float64)
        x = marginal.sample(t, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        alpha, sigma = (float(v[0]) for v in sde.coefficients(t[:1]))
        gain = alpha * cov @ torch.linalg.inv(alpha ** 2 * cov
                                              + sigma ** 2 * torch.eye(dim).double())
        post = mu + (x - alpha * mu) @ gain.T
        err = (denoise_step(marginal.score, sde, x, eps) - post).norm(dim=1)
        out[name] = (eps, sde.T / sde.N, float((err / (post - x).norm(dim=1)).max()))
    return out


if __name__ == "__main__":
    now, original = relative_errors(), relative_errors(original_step=True)
    print("| SDE | eps | T/N | max relative error: the sampler's step | the original's T/N step |")
    print("|---|---|---|---|---|")
    for name, (eps, dt, r) in now.items():
        print(f"| {name} | {eps:g} | {dt:g} | {r:.3g} | {original[name][2]:.3g} |")
