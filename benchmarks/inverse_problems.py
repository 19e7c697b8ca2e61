"""Accuracy of the conditional samplers against exact Gaussian conditionals (solvers.inverse,
solvers.conditional), printed as Markdown tables for benchmarks/RESULTS.md.

Prior: a correlated Gaussian over 1x4x4 images (squared-exponential kernel, length 1.5 px,
variance 0.5, nugget 0.05) with the exact score of sde_lib.oracle; for colorization the same
kernel over 2x2 pixels with channel correlations 0.8 (R, G), 0.3 (R, B), 0.5 (G, B) (3x2x2),
so the colour differences correlate with the grey level. The exact conditional is
N(mu + K (y - A mu), S - K A S), K = S A^T (A S A^T + s_y^2 I)^+.

Errors: ||mean_hat - mean|| and ||C_hat - C||_F / ||C||_F over the unknown part (inpainting: the
4 hidden pixels; colorization and noisy problems: the whole image), from n samples of one fixed
observation. "MC floor": the RMS of the same errors for n exact draws,
sqrt(tr C / n) and sqrt((tr(C)^2 + ||C||_F^2) / n) / ||C||_F.

    OMP_NUM_THREADS=1 python -m benchmarks.inverse_problems [--n 2000] [--quick]
"""

import argparse
import math
import platform
import time

import torch

from sde_lib import VESDE, VPSDE, oracle, subVPSDE
from solvers.conditional import (class_conditional, classifier_grad_fn, colorize, inpaint,
                                 mixture_classifier_grad_fn)
from solvers.operators import Colorization, Mask
from training.classifier import train_classifier

SDES = {"VE (sigma_max 10)": lambda: VESDE(sigma_min=0.01, sigma_max=10.0), "VP": VPSDE,
        "sub-VP": subVPSDE}


smooth_cov = oracle.smooth_image_covariance


def exact_posterior(mean, cov, A, y, noise_var):
    G = A @ cov @ A.T + noise_var * torch.eye(A.shape[0], dtype=torch.float64)
    K = cov @ A.T @ torch.linalg.pinv(G, hermitian=True, rtol=1e-10)
    return mean + K @ (y - A @ mean), cov - K @ A @ cov


def operator_matrix(op, shape):
    D = math.prod(shape)
    return op.forward(torch.eye(D, dtype=torch.float64).reshape(D, *shape)).reshape(D, -1).T


def errs(x, mean, cov):
    x = x.double()
    return (x.mean(0) - mean).norm().item(), ((torch.cov(x.T) - cov).norm() / cov.norm()).item()


def floor(cov, n):
    tr, fro = cov.trace().item(), cov.norm().item()
    return math.sqrt(tr / n), math.sqrt((tr ** 2 + fro ** 2) / n) / fro


def fmt(e):
    return f"{e[0]:.3f} / {e[1]:.3f}"


def inpainting_problem():
    """A 4x4 one-channel Gaussian prior (smooth covariance) and a mask hiding its 2x2 centre:
    (mean, cov, mask, operator, distribution)."""
    H = W = 4
    mean = torch.linspace(-0.3, 0.3, H * W, dtype=torch.float64)
    cov = smooth_cov(1, H, W)
    mask = torch.ones(1, 1, H, W)
    mask[..., 1:3, 1:3] = 0
    return mean, cov, mask, Mask(mask), oracle.gaussian(mean, cov, (1, H, W))


def noisy_observation(mean, cov, op, x0, noise_std, n, g):
    """y = A x0 + noise_std A z (z from `g`), its exact posterior (mean, cov) and y repeated n
    times as float32."""
    y = op.forward(x0) + noise_std * op.forward(torch.randn(x0.shape, generator=g,
                                                              dtype=torch.float64))
    pm, pc = exact_posterior(mean, cov, operator_matrix(op, x0.shape[1:]), y.flatten(),
                             noise_std ** 2)
    return y.float().expand(n, *x0.shape[1:]).contiguous(), pm, pc


def inpainting_table(n, steps_pc, steps_fast):
    mean, cov, mask, op, dist = inpainting_problem()
    H = W = 4
    x0 = dist.sample(1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = op.forward(x0).float()
    pm, pc = exact_posterior(mean, cov, operator_matrix(op, (1, H, W)), y.flatten().double(), 0)
    u = ~mask.flatten().bool()
    pm, pc = pm[u], pc[u][:, u]
    ys = y.expand(n, 1, H, W).contiguous()
    rows = [("projection (paper)", "PC reverse_diffusion + langevin",
             dict(method="projection"), steps_pc),
            ("projection (paper)", "reverse_diffusion, no corrector",
             dict(method="projection", corrector="none"), steps_pc),
            ("tmpd", "PC reverse_diffusion + langevin", dict(method="tmpd"), steps_pc[:-1]),
            ("tmpd", "reverse_diffusion, no corrector", dict(method="tmpd", corrector="none"),
             steps_pc[:-1]),
            ("tmpd", "dpm_solver++", dict(method="tmpd", sampler="dpm_solver++"), steps_fast),
            ("pigdm", "reverse_diffusion, no corrector", dict(method="pigdm", corrector="none"),
             steps_pc[1:2])]
    out = []
    for sde_name, make in SDES.items():
        sde = make()
        for method, sampler, opts, steps_list in rows:
            cells = []
            for steps in steps_list:
                res = inpaint(dist.marginal(sde), sde, ys, mask, steps=steps,
                              generator=torch.Generator().manual_seed(1), **opts)
                assert (res.samples * mask - y).abs().max() == 0
                cells.append(f"{steps}: {fmt(errs(res.samples.flatten(1)[:, u], pm, pc))}")
            out.append(f"| {sde_name} | {method} | {sampler} | " + "; ".join(cells) + " |")
            print(out[-1], flush=True)
    prior = (mean[u] - pm).norm().item(), ((cov[u][:, u] - pc).norm() / pc.norm()).item()
    return out, floor(pc, n), prior


def colorization_table(n, steps_list):
    mean = torch.linspace(-0.2, 0.2, 12, dtype=torch.float64)
    cov = smooth_cov(3, 2, 2, ell=1.0, channel_corr=None)
    op = Colorization()
    dist = oracle.gaussian(mean, cov, (3, 2, 2))
    x0 = dist.sample(1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = op.forward(x0).float()
    pm, pc = exact_posterior(mean, cov, operator_matrix(op, (3, 2, 2)), y.flatten().double(), 0)
    ys = y.expand(n, 1, 2, 2).contiguous()
    out = []
    for sde_name, make in SDES.items():
        sde = make()
        for method, opts in (("projection (paper)", {}), ("projection (paper), no corrector",
                                                          {"corrector": "none"}),
                             ("tmpd", {"method": "tmpd"})):
            opts = {"method": "projection", **opts}
            cells = []
            for steps in steps_list:
                res = colorize(dist.marginal(sde), sde, ys, steps=steps,
                               generator=torch.Generator().manual_seed(4), **opts)
                cells.append(f"{steps}: {fmt(errs(res.samples.flatten(1), pm, pc))}")
            out.append(f"| {sde_name} | {method} | " + "; ".join(cells) + " |")
            print(out[-1], flush=True)
    return out, floor(pc, n), ((mean - pm).norm().item(), ((cov - pc).norm() / pc.norm()).item())


def noisy_table(n, steps):
    mean, cov, mask, op, dist = inpainting_problem()
    g = torch.Generator().manual_seed(13)
    x0 = dist.sample(1, generator=g, dtype=torch.float64)
    out = []
    for noise_std in (0.1, 0.3):
        ys, pm, pc = noisy_observation(mean, cov, op, x0, noise_std, n, g)
        sde = VPSDE()
        cells = []
        for method in ("dps", "pigdm", "tmpd"):
            res = inpaint(dist.marginal(sde), sde, ys, mask, noise_std=noise_std, method=method,
                          steps=steps, corrector="none",
                          generator=torch.Generator().manual_seed(14))
            cells.append(fmt(errs(res.samples.flatten(1), pm, pc)))
        gap = (mean - pm).norm().item()
        out.append(f"| {noise_std} | {gap:.3f} | " + " | ".join(cells) + " | "
                   f"{fmt(floor(pc, n))} |")
        print(out[-1], flush=True)
    return out


def dps_steps(n, steps_list, noise_std=0.1):
    """DPS on the noisy inpainting problem as the steps grow (its stiffness for small noise)."""
    mean, cov, mask, op, dist = inpainting_problem()
    g = torch.Generator().manual_seed(13)
    x0 = dist.sample(1, generator=g, dtype=torch.float64)
    ys, pm, pc = noisy_observation(mean, cov, op, x0, noise_std, n, g)
    for name in ("VP", "VE (sigma_max 10)"):
        sde = SDES[name]()
        cells = []
        for steps in steps_list:
            res = inpaint(dist.marginal(sde), sde, ys, mask, noise_std=noise_std, method="dps",
                          steps=steps, corrector="none",
                          generator=torch.Generator().manual_seed(14))
            cells.append(f"{steps}: {fmt(errs(res.samples.flatten(1), pm, pc))}")
        print(f"DPS, noise_std {noise_std}, {name}: " + "; ".join(cells), flush=True)


def guidance_table(n):
    mix = oracle.gaussian_mixture([[-1.5, 0.0], [1.5, 0.0]], [0.25, 0.25], [0.7, 0.3])
    out = []
    for sde_name, make in SDES.items():
        sde = make()
        g = torch.Generator().manual_seed(0)
        x, lab = mix.sample(4000, generator=g, return_labels=True)
        t0 = time.time()
        model, _ = train_classifier(sde, x, lab, steps=400, batch_size=256, width=32, generator=g)
        secs = time.time() - t0
        cells = []
        for name, grad in (("exact", mixture_classifier_grad_fn(mix, sde)),
                           ("trained", classifier_grad_fn(model, sde))):
            for opts in ({"steps": 200}, {"sampler": "dpm_solver++", "steps": 20}):
                hits = []
                for label in (0, 1):
                    res = class_conditional(mix.marginal(sde), sde, (n, 2), grad, labels=label,
                                            generator=torch.Generator().manual_seed(label),
                                            **opts)
                    hits.append((mix.component_log_probs(res.samples).argmax(1) == label)
                                .float().mean().item())
                cells.append(f"{hits[0]:.3f} / {hits[1]:.3f}")
        out.append(f"| {sde_name} | {secs:.1f} | " + " | ".join(cells) + " |")
        print(out[-1], flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="samples per cell")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    steps_pc = [30, 100] if a.quick else [30, 100, 300, 1000]
    steps_fast = [5, 20] if a.quick else [5, 10, 20, 50]
    t0 = time.time()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} thread(s), n = {a.n}")
    print("\n## inpainting: mean error / relative covariance error of the hidden pixels")
    rows, fl, prior = inpainting_table(a.n, steps_pc, steps_fast)
    print(f"MC floor {fmt(fl)}; the prior itself (no conditioning) {fmt(prior)}")
    print("\n## colorization")
    rows, fl, prior = colorization_table(a.n, steps_pc)
    print(f"MC floor {fmt(fl)}; the prior itself {fmt(prior)}")
    print("\n## noisy inpainting (VP, reverse diffusion without corrector)")
    noisy_table(a.n, 100 if a.quick else 200)
    dps_steps(a.n, [200] if a.quick else [200, 500, 1000])
    print("\n## classifier guidance: fraction in the asked class (label 0 / label 1)")
    guidance_table(a.n)
    print(f"\ntotal {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
