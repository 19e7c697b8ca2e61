"""Time per sampler step of the inpainting posterior samplers on the built-in digits network
(NCSN++ of `builtin/digits_ve`, 8x8 grey; untrained weights: the cost does not depend on them),
16 images, the PC sampler (reverse diffusion + Langevin), centre mask. Prints a Markdown table
for benchmarks/RESULTS.md.

    OMP_NUM_THREADS=1 python -m benchmarks.inverse_cost [--steps 20] [--repeats 3]
"""

import argparse
import os
import platform
import time

import torch

import configs
import networks
import sde_lib
from solvers import inpaint

METHODS = ("projection", "pigdm", "tmpd")  # dps needs noisy observations


def seconds_per_step(method, score_fn, sde, data, mask, steps, repeats):
    """Best of `repeats` wall-clock times of one inpainting solve, divided by its steps."""
    best = float("inf")
    for r in range(repeats):
        g = torch.Generator().manual_seed(r)
        t0 = time.perf_counter()
        inpaint(score_fn, sde, data, mask, method=method, steps=steps, generator=g)
        best = min(best, time.perf_counter() - t0)
    return best / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    config = configs.get_config("builtin/digits_ve")
    torch.manual_seed(0)
    model = networks.create_model(config).eval().requires_grad_(False)
    sde = sde_lib.get_sde(config)
    score_fn = networks.get_score_fn(sde, model, continuous=True)
    data = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 0
    times = {m: seconds_per_step(m, score_fn, sde, data, mask, args.steps, args.repeats)
             for m in METHODS}
    print(f"machine: {platform.machine()}, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}; {args.steps} PC steps, "
          f"best of {args.repeats}")
    print("| method | ms per step | relative to projection |\n|---|---|---|")
    for m in METHODS:
        print(f"| {m} | {1e3 * times[m]:.1f} | {times[m] / times['projection']:.1f} |")


if __name__ == "__main__":
    main()
