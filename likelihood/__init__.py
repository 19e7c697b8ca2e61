"""Likelihoods of the probability-flow ODE (Song et al. 2021, Sec. 4.3 and App. D.2).

    from likelihood import log_likelihood, bits_per_dim
    res = log_likelihood(score_fn, sde, x, estimator='rademacher', n_probes=4, generator=g)
    res.logp, res.logp_stderr, res.nfe, res.z           # nats of x at t = eps, [B]
    bpd = bits_per_dim(score_fn, sde, images, data_range=(-1, 1), generator=g)   # [B]

Modules: `ode` (log_likelihood: the change-of-variables integral, per-sample error control),
`divergence` (Hutchinson-Skilling and exact divergence), `bpd` (dequantisation, the derived
discretisation offset, bits/dim), `evaluate` (``python -m likelihood.evaluate``: bits/dim of a
dataset split, resumable).
"""

from likelihood.bpd import (BitsPerDimResult, bits_per_dim, bits_per_dim_details, bpd_from_logp,
                            discretization_offset, uniform_dequantization)
from likelihood.divergence import draw_probes, exact_divergence, hutchinson_divergence
from likelihood.ode import LikelihoodResult, batch_rms_norm, log_likelihood, per_sample_norm

__all__ = ["BitsPerDimResult", "LikelihoodResult", "batch_rms_norm", "bits_per_dim",
           "bits_per_dim_details", "bpd_from_logp", "discretization_offset", "draw_probes",
           "exact_divergence", "hutchinson_divergence", "log_likelihood", "per_sample_norm",
           "uniform_dequantization"]
