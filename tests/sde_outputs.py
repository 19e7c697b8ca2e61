"""Outputs for fixed seeds that a change to the SDE classes must leave as they are: samples of
every sampler family, log-likelihoods, training losses, network labels and scores, annealed
Langevin, the classifier's SDE description, on the oracle mixture and on a tiny network, for
VE, VP and sub-VP (continuous and discrete).

`compute()` gives them as {name: list of floats}; `python tests/sde_outputs.py` writes them to
tests/data/sde_outputs.json (run once, on the code before a refactor);
tests/test_sde_outputs.py compares the current code against that file.
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
FILE = Path(__file__).resolve().parent / "data" / "sde_outputs.json"


class TinyNet(nn.Module):
    """A deterministic little network net(x, label) for [B, 1, 2, 2] inputs: labels enter as
    log(1 + |label|) (so float times, sigmas and integer labels all work), and it records the
    last labels it saw."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(123)
        self.w = nn.Parameter(torch.randn(4, 4, generator=g) * 0.3)
        self.b = nn.Parameter(torch.randn(4, generator=g) * 0.1)
        self.c = nn.Parameter(torch.randn(4, generator=g) * 0.1)
        self.seen = None

    def forward(self, x, labels):
        self.seen = labels
        f = torch.log1p(labels.to(x.dtype).abs())[:, None]
        h = torch.tanh(x.flatten(1) @ self.w + self.b + f * self.c)
        return h.reshape(x.shape)


def _sdes():
    from sde_lib import VESDE, VPSDE, subVPSDE
    return {"ve": VESDE(sigma_min=0.01, sigma_max=10.0, N=100), "vp": VPSDE(N=100),
            "subvp": subVPSDE(N=100)}


def _flat(v):
    return [float(a) for a in torch.as_tensor(v, dtype=torch.float64).flatten().tolist()]


def compute():
    from likelihood import bits_per_dim, log_likelihood
    from networks import get_score_fn
    from networks.classifier import sde_description
    from sde_lib import oracle
    from solvers import annealed_langevin, coefficients, sample, with_steps
    from training import losses
    from training.objectives import perturbation_kernel

    out = {}
    dist = oracle.ring_mixture(num_modes=4, radius=2.0, std=0.3)
    g = torch.Generator().manual_seed(0)
    x_data = dist.sample(6, generator=g, dtype=torch.float32)
    images = torch.randint(0, 256, (3, 1, 2, 2), generator=g).float() / 255
    batch = torch.rand(5, 1, 2, 2, generator=g) * 2 - 1
    t_probe = torch.tensor([0.001, 0.1, 0.37, 0.5, 0.999], dtype=torch.float32)
    for name, sde in _sdes().items():
        p_t = dist.marginal(sde)
        runs = {"pc": dict(sampler="pc", steps=30),
                "pc_ancestral": dict(sampler="pc", steps=30, predictor="ancestral_sampling",
                                     corrector="none"),
                "pc_em_ald": dict(sampler="pc", steps=30, predictor="euler_maruyama",
                                  corrector="ald"),
                "pc_flow": dict(sampler="pc", steps=30, probability_flow=True),
                "ode": dict(sampler="ode"), "heun": dict(sampler="heun", steps=8),
                "dpm": dict(sampler="dpm_solver++", steps=8),
                "unipc": dict(sampler="unipc", steps=8)}
        for run, kw in runs.items():
            res = sample(p_t.score, sde, (4, 2), generator=torch.Generator().manual_seed(1), **kw)
            out[f"{name}/oracle/{run}"] = _flat(res.samples) + [res.nfe]
        ll = log_likelihood(p_t.score, sde, x_data, generator=torch.Generator().manual_seed(2))
        out[f"{name}/oracle/logp"] = _flat(ll.logp) + [ll.nfe]
        alpha, sigma = coefficients(sde, t_probe)
        out[f"{name}/coefficients"] = _flat(alpha) + _flat(sigma)
        out[f"{name}/with_steps"] = _flat(with_steps(sde, 7).discretize(
            batch, torch.full((5,), 0.4))[1])
        out[f"{name}/description"] = sorted(sde_description(sde).items())
        for continuous in (True, False):
            net = TinyNet()
            score_fn = get_score_fn(sde, net, continuous=continuous)
            key = f"{name}/net/{'cont' if continuous else 'disc'}"
            with torch.no_grad():
                s = score_fn(batch, t_probe)
            out[f"{key}/labels"] = _flat(net.seen)
            out[f"{key}/score"] = _flat(s)
            res = sample(score_fn, sde, (3, 1, 2, 2), sampler="pc", steps=40,
                         generator=torch.Generator().manual_seed(3))
            out[f"{key}/pc"] = _flat(res.samples)
            res = sample(score_fn, sde, (3, 1, 2, 2), sampler="unipc", steps=6,
                         generator=torch.Generator().manual_seed(3))
            out[f"{key}/unipc"] = _flat(res.samples)
        net = TinyNet()
        score_fn = get_score_fn(sde, net, continuous=True)
        bpd = bits_per_dim(score_fn, sde, images, data_range=(0.0, 1.0),
                           generator=torch.Generator().manual_seed(4))
        out[f"{name}/net/bpd"] = _flat(bpd)
        gl = torch.Generator().manual_seed(5)
        out[f"{name}/loss/dsm"] = _flat(losses.dsm_loss(score_fn, sde, batch, generator=gl,
                                                        batch_mean=False))
        out[f"{name}/loss/dsm_likelihood"] = _flat(losses.dsm_loss(
            score_fn, sde, batch, likelihood_weighting=True, generator=gl, batch_mean=False))
        for continuous in (True, False):
            if not continuous and name == "subvp":
                continue
            cfg = _loss_config(name, continuous)
            fn = losses.get_loss_fn(cfg, sde)
            with torch.no_grad():
                val = fn(TinyNet(), batch, generator=torch.Generator().manual_seed(6),
                         batch_mean=False)
            out[f"{name}/loss/config_{'cont' if continuous else 'disc'}"] = _flat(val)
        if name != "subvp":
            labels = torch.tensor([0, 3, 50, 99, 7])
            mean, std = perturbation_kernel(batch, labels, sde=sde)
            out[f"{name}/kernel_labels"] = _flat(mean) + _flat(std)
    ve = _sdes()["ve"]
    res = annealed_langevin(dist.marginal(ve).score, ve, (4, 2), n_steps_each=2,
                            generator=torch.Generator().manual_seed(7))
    out["ve/oracle/annealed"] = _flat(res.samples)
    return out


def _loss_config(name, continuous):
    import ml_collections
    c = ml_collections.ConfigDict()
    c.training = ml_collections.ConfigDict({"continuous": continuous, "reduce_mean": name != "ve",
                                            "likelihood_weighting": False, "sde": name})
    return c


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(1)
    FILE.write_text(json.dumps(compute(), indent=0) + "\n")
    print(f"wrote {FILE}")
