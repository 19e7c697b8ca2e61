"""Regenerate tests/data/sampler_outputs.json: samples of every sampler and log-likelihoods of
the probability-flow ODE for fixed seeds on an exact-score mixture, for
tests/test_sampler_outputs.py, which checks that a change of the code's shape leaves every
output as it was.

Not part of the toolkit and not run by the tests. Usage, from the repository root:

    PYTHONPATH=$PWD python tests/data/make_sampler_outputs.py [out.json]

Each case is stored with its keyword arguments, so the test runs exactly what was run here.
Numbers are written with full precision (float32 values converted to float64 exactly).
"""

import json
import os
import sys

import torch

import solvers
from likelihood import log_likelihood
from sde_lib import VESDE, VPSDE, oracle, subVPSDE
from sde_base.fileio import write_text

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "sampler_outputs.json")

SDES = {"ve": VESDE, "vp": VPSDE, "subvp": subVPSDE}
SEED = 5
SHAPE = (3, 2)

SAMPLE_CASES = {
    "pc": dict(sampler="pc", steps=30),
    "pc_em_none": dict(sampler="pc", steps=25, predictor="euler_maruyama", corrector="none"),
    "pc_ancestral_ald": dict(sampler="pc", steps=25, predictor="ancestral_sampling",
                             corrector="ald", snr=0.2, n_corrector_steps=2),
    "pc_flow_sample_norm": dict(sampler="pc", steps=25, probability_flow=True,
                                corrector_options={"norm": "sample"}),
    "pc_predictor_first": dict(sampler="pc", steps=25, corrector_first=False, denoise=False),
    "ode": dict(sampler="ode"),
    "ode_loose": dict(sampler="ode", rtol=1e-3, atol=1e-3, method="bosh3"),
    "heun": dict(sampler="heun", steps=4),
    "heun_euler": dict(sampler="heun", steps=4, second_order=False),
    "heun_churn": dict(sampler="heun", steps=8, S_churn=4.0, S_tmin=0.05, S_tmax=50.0),
    "dpm_solver++": dict(sampler="dpm_solver++", steps=5),
    "dpm_solver++3_karras": dict(sampler="dpm_solver++", steps=16, order=3, grid="karras"),
    "unipc": dict(sampler="unipc", steps=6),
    "unipc_bh1_2": dict(sampler="unipc", steps=6, order=2, variant="bh1", grid="karras_t"),
    "adaptive": dict(sampler="adaptive"),
    "adaptive_batch": dict(sampler="adaptive", error_norm="batch", rtol=0.05),
}

LIKELIHOOD_CASES = {
    "exact": dict(estimator="exact"),
    "rademacher": dict(estimator="rademacher", n_probes=2, seed=3),
    "gaussian_batch_norm": dict(estimator="gaussian", seed=4, error_norm="batch", rtol=1e-4,
                                atol=1e-4),
}


def mixture():
    """The data: a 2-component Gaussian mixture in 2-D."""
    return oracle.gaussian_mixture(torch.tensor([[2.0, 0.0], [-1.0, 1.5]]),
                                   torch.tensor([0.2, 0.1]), torch.tensor([1.0, 2.0]))


def data_points():
    """Three points (float64) whose log-likelihood is taken."""
    return torch.tensor([[1.8, 0.1], [-1.2, 1.4], [0.5, 0.7]], dtype=torch.float64)


def run_sample(sde_name, kwargs):
    sde = SDES[sde_name]()
    score = mixture().marginal(sde).score
    return solvers.sample(score, sde, SHAPE, generator=torch.Generator().manual_seed(SEED),
                          **kwargs)


def run_likelihood(sde_name, kwargs):
    sde = SDES[sde_name]()
    score = mixture().marginal(sde).score
    kwargs = dict(kwargs)
    seed = kwargs.pop("seed", None)
    g = None if seed is None else torch.Generator().manual_seed(seed)
    return log_likelihood(score, sde, data_points(), generator=g, **kwargs)


def main(out=DEFAULT_OUT):
    record = {"seed": SEED, "shape": list(SHAPE), "samples": {}, "likelihood": {}}
    for sde_name in SDES:
        for label, kwargs in SAMPLE_CASES.items():
            res = run_sample(sde_name, kwargs)
            record["samples"][f"{sde_name}/{label}"] = {
                "kwargs": kwargs, "samples": res.samples.double().flatten().tolist(),
                "nfe": int(res.nfe)}
        for label, kwargs in LIKELIHOOD_CASES.items():
            res = run_likelihood(sde_name, kwargs)
            ln2 = torch.log(torch.tensor(2.0, dtype=res.logp.dtype))
            record["likelihood"][f"{sde_name}/{label}"] = {
                "kwargs": kwargs, "logp": res.logp.double().tolist(),
                "bits_per_dim": (-res.logp / (SHAPE[1] * ln2)).double().tolist(),
                "nfe": int(res.nfe)}
    write_text(out, json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
