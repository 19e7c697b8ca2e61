"""Fixtures shared by several test files."""

import json
import os
from pathlib import Path

import pytest
import torch

import configs
from sde_lib import get_sde, oracle

# One thread in every command a test runs, in process or as a child: results compared bitwise
# across runs (1 against 2 processes, killed against whole runs) must not depend on the thread
# count the command's free-core rule picks from the machine's load at that moment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
SCORE_SDE_FIXTURE = Path(__file__).resolve().parent / "data" / "score_sde_pytorch"


@pytest.fixture(scope="module")
def score_sde_ncsnpp():
    """A small NCSN++ checkpoint saved by the original score_sde_pytorch code (VE, 16x16, nf 16,
    Fourier embedding) with inputs and the original code's outputs (index.json says how they were
    made): dict(path, config, io, sde, continuous); config.device is 'cpu'."""
    name = "ve_ncsnpp_cifar"
    entry = json.loads((SCORE_SDE_FIXTURE / "index.json").read_text())[name]
    config = configs.load_config(entry["config_module"], entry["overrides"])
    config.device = "cpu"
    io = torch.load(SCORE_SDE_FIXTURE / f"{name}.io.pt", weights_only=True)
    return dict(path=str(SCORE_SDE_FIXTURE / f"{name}.pth"), config=config, io=io,
                sde=get_sde(config), continuous=entry["continuous"])


@pytest.fixture(scope="module")
def dist():
    """A two-component Gaussian mixture in 4-D (float64), exact score under every SDE."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(2, 4, generator=g, dtype=torch.float64) * 2
    return oracle.gaussian_mixture(means, torch.tensor([0.3, 0.5], dtype=torch.float64))


@pytest.fixture(scope="module")
def gaussian8():
    """(mu, cov, dist): an 8-D Gaussian with a random covariance (eigenvalues in [0.05, 1]),
    whose probability-flow ODE has a closed-form solution (`cases.exact_flow`)."""
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(8, generator=g, dtype=torch.float64)
    cov = oracle.random_covariance(8, generator=g, min_eig=0.05, max_eig=1.0)
    return mu, cov, oracle.gaussian(mu, cov)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A toolkit checkpoint of the built-in VE digits model shrunk to nf = 8, trained 2 steps
    by the command line (checkpoints/checkpoint_1.pth holds step 1, checkpoints-meta step 2)."""
    import os
    import subprocess
    import sys
    workdir = tmp_path_factory.mktemp("tiny") / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "sde_lib.run", "train", "--sde", "ve",
                           "--workdir", str(workdir), "--config.model.nf=8",
                           "--config.model.num_scales=50", "--config.training.n_iters=2",
                           "--config.training.batch_size=8", "--config.training.eval_freq=0",
                           "--config.training.snapshot_freq=1",
                           "--config.training.snapshot_sampling=False", "--no-progress"],
                          cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir / "checkpoints-meta" / "checkpoint.pth"
