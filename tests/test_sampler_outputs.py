"""Every sampler and the likelihood give the same numbers for the same seed as the code before
the samplers were declared and the probability-flow ODE had one integrator.

tests/data/sampler_outputs.json was written by tests/data/make_sampler_outputs.py on that code
(full precision, with each case's keyword arguments); tests/data/sampler_outputs_before_unipc.json
holds older values (6 decimals) from before UniPC, explicit grids and churn were added.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

import solvers
from sde_lib import VESDE, VPSDE, subVPSDE

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
import make_sampler_outputs as made  # noqa: E402

RECORD = json.loads((DATA / "sampler_outputs.json").read_text())


@pytest.mark.parametrize("key", sorted(RECORD["samples"]))
def test_samples_are_unchanged(key):
    entry = RECORD["samples"][key]
    res = made.run_sample(key.split("/")[0], entry["kwargs"])
    expected = torch.tensor(entry["samples"], dtype=torch.float64).reshape(made.SHAPE)
    torch.testing.assert_close(res.samples.double(), expected, rtol=0, atol=0, msg=key)
    assert res.nfe == entry["nfe"]


@pytest.mark.parametrize("key", sorted(RECORD["likelihood"]))
def test_log_likelihoods_are_unchanged(key):
    entry = RECORD["likelihood"][key]
    res = made.run_likelihood(key.split("/")[0], entry["kwargs"])
    torch.testing.assert_close(res.logp, torch.tensor(entry["logp"], dtype=torch.float64),
                               rtol=1e-13, atol=1e-13, msg=key)
    assert res.nfe == entry["nfe"]


# Outputs (6 decimals) of the samplers before UniPC, explicit grids and churn were added, for the
# same mixture, 3 samples, seed 5, default eps and denoising.
BEFORE_UNIPC = {tuple(k.split("/")): v for k, v in json.loads(
    (DATA / "sampler_outputs_before_unipc.json").read_text()).items()}
OLD_CASES = {"pc": dict(sampler="pc", steps=30),
             "heun": dict(sampler="heun", steps=4),
             "euler": dict(sampler="heun", steps=4, second_order=False),
             "dpm1": dict(sampler="dpm_solver++", steps=5, order=1),
             "dpm2": dict(sampler="dpm_solver++", steps=5),
             "dpm3": dict(sampler="dpm_solver++", steps=5, order=3),
             "dpm3_16": dict(sampler="dpm_solver++", steps=16, order=3, grid="karras")}


@pytest.mark.parametrize("sde_name,sde_cls", [("ve", VESDE), ("vp", VPSDE), ("subvp", subVPSDE)])
def test_samplers_keep_their_outputs_from_before_unipc(sde_name, sde_cls):
    sde = sde_cls()
    score = made.mixture().marginal(sde).score
    for label, kwargs in OLD_CASES.items():
        x = solvers.sample(score, sde, (3, 2), generator=torch.Generator().manual_seed(5),
                           **kwargs).samples
        expected = torch.tensor(BEFORE_UNIPC[(sde_name, label)]).reshape(3, 2)
        torch.testing.assert_close(x, expected, rtol=0, atol=2e-6, msg=f"{sde_name} {label}")


def test_the_data_cover_every_sampler():
    """A sampler added later gets a case here (run make_sampler_outputs.py on the code before a
    change of shape)."""
    used = {e["kwargs"]["sampler"] for e in RECORD["samples"].values()}
    assert used == set(solvers.list_samplers())
