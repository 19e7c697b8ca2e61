"""Seeded, sharded sampling (`sample --seeds`): images per second on 1 and 2 processes for the
built-in digits model, one thread each, and the NFE-based projection of FID-50k GPU-hours.

    OMP_NUM_THREADS=1 python -m benchmarks.sample_shards [--seeds 256] [--steps 20] [--output F]

(run as a module from the repository root; about 2 minutes on an idle 2-core machine.)

The model is the built-in VE digits network (its default config) after one training step (the
weights do not change the speed). Each run is `python -m sde_lib.run sample --seeds 0-<N-1>`
with the PC sampler (reverse diffusion + Langevin, `--steps` steps: 2 evaluations per step),
`--sample-batch 64`, shards of 64, as one process and as two gloo processes (the environment
torchrun sets); images/s counts the sampling only (from the first rank's start line to the last
rank's end, as the ranks print them), not the start-up.

The projection: FID-50k costs 50,000 x NFE network evaluations of one image; with tau the time of
one such evaluation on a GPU at a full batch, GPU-hours = 50,000 x NFE x tau / 3600, NFE as
`solvers.sample` counts it. No GPU was available here, so tau is left as a parameter: the table
gives hours per millisecond of tau.
"""

import argparse
import datetime
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time

# The samplers of the projection, with their step counts (the paper's PC-1000 and the fast
# samplers at their usual settings); their NFE per image is measured by `solvers.sample`'s count
# (which includes the final denoising evaluation) on an exact Gaussian score under the VE SDE,
# where a fixed-step sampler's count does not depend on the network.
SAMPLERS = [("pc", 1000), ("heun", 18), ("dpm_solver++", 20), ("unipc", 10)]


def measured_nfe():
    import torch
    import solvers
    from sde_lib import VESDE, oracle
    sde = VESDE(N=1000)
    marginal = oracle.gaussian(torch.zeros(4, dtype=torch.float64),
                               torch.eye(4, dtype=torch.float64)).marginal(sde)

    def score(x, t):
        return marginal.score(x.double(), t.double()).float()

    return [(name, steps, solvers.sample(score, sde, (2, 4), sampler=name, steps=steps).nfe)
            for name, steps in SAMPLERS]


def run_sample(checkpoint, folder, seeds, steps, world):
    port = None
    if world > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
    argv = [sys.executable, "-m", "sde_lib.run", "sample", "--checkpoint", checkpoint,
            "--seeds", f"0-{seeds - 1}", "--shard-size", "64", "--sample-batch", "64",
            "--steps", str(steps), "--no-progress", "--out", folder]
    procs = []
    t0 = time.time()
    for rank in range(world):
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        if world > 1:
            env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    seconds = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(err[-2000:])
        m = re.search(r"rank \d+: (\d+) images .* ([\d.]+)s", out)
        seconds.append(float(m.group(2)))
    return seeds / max(seconds), time.time() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--output", help="also write the report to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = os.path.join(tmp, "run")
        subprocess.run([sys.executable, "-m", "sde_lib.run", "train", "--sde", "ve", "--workdir",
                        workdir, "--config.training.n_iters=1", "--config.training.eval_freq=0",
                        "--config.training.snapshot_sampling=False", "--no-progress"],
                       check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        ckpt = os.path.join(workdir, "checkpoints-meta", "checkpoint.pth")
        rows = []
        for world in (1, 2):
            rate, wall = run_sample(ckpt, os.path.join(tmp, f"w{world}"), args.seeds, args.steps,
                                    world)
            rows.append(f"| {world} | 1 | {rate:.1f} | {wall:.1f} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} logical CPUs, load average {load:.1f} "
        f"at the end; date {datetime.date.today()}; command: OMP_NUM_THREADS=1 python -m "
        f"benchmarks.sample_shards --seeds {args.seeds} --steps {args.steps}",
        "",
        f"Built-in VE digits model (8x8), PC {args.steps} steps ({2 * args.steps} NFE), batch 64:",
        "",
        "| processes | threads each | images/s (sampling) | wall s (with start-up) |",
        "|---|---|---|---|", *rows, "",
        "FID-50k on CIFAR-10 NCSN++ (deep): GPU-hours = 50,000 x NFE x tau / 3600, tau = seconds "
        "of one network evaluation of one image at a full batch (not measured here: no GPU):",
        "",
        "| sampler | steps | NFE per image (measured) | GPU-hours per 1 ms of tau |",
        "|---|---|---|---|",
        *[f"| {name} | {steps} | {nfe} | {50000 * nfe * 1e-3 / 3600:.1f} |"
          for name, steps, nfe in measured_nfe()],
        "",
        "The ode sampler's NFE is adaptive (its count is in each `sample` JSON): multiply the same "
        "way.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.output:
        from sde_base.fileio import write_text
        write_text(args.output, text + "\n")


if __name__ == "__main__":
    main()
