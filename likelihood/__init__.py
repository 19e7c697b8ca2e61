"""Likelihoods of score-based models: the probability-flow ODE (Song et al. 2021, Sec. 4.3 and
App. D.2) and the variational bound of the reverse SDE (Song, Durkan, Murray & Ermon 2021).

    from likelihood import log_likelihood, bits_per_dim, bound
    res = log_likelihood(score_fn, sde, x, estimator='rademacher', n_probes=4, generator=g)
    res.logp, res.logp_stderr, res.nfe, res.z           # nats of x at t = eps, [B]
    b = bound(score_fn, sde, x, n_samples=32, generator=g)
    b.nll, b.nll_stderr                                 # nats, an upper bound on -log p(x), [B]
    bpd = bits_per_dim(score_fn, sde, images, data_range=(-1, 1), generator=g)   # [B]
    bpd = bits_per_dim(..., method='bound', dequantize='truncated_normal')

Modules: `ode` (log_likelihood: the change-of-variables integral, per-sample error control),
`divergence` (Hutchinson-Skilling and exact divergence), `bound` (the variational bound, Monte
Carlo over t and the noise), `importance` (t with density g^2 / sigma^2, for the bound and for
training), `bpd` (uniform and truncated-normal dequantization, their derived offsets, bits/dim),
`draws` (one generator, or one per image), `evaluate` (``python -m likelihood.evaluate``: bits/dim
of a dataset split, resumable).
"""

from likelihood.bound import BoundResult, bound
from likelihood.bpd import (DEQUANTIZERS, METHODS, BitsPerDimResult, bits_per_dim,
                            bits_per_dim_details, bpd_from_logp, dequantize_images,
                            discretization_offset, truncated_normal_dequantization,
                            truncated_normal_offset, uniform_dequantization)
from likelihood.divergence import draw_probes, exact_divergence, hutchinson_divergence
from likelihood.importance import ImportanceTime
from likelihood.ode import LikelihoodResult, batch_rms_norm, log_likelihood, per_sample_norm

__all__ = ["BitsPerDimResult", "BoundResult", "DEQUANTIZERS", "ImportanceTime",
           "LikelihoodResult", "METHODS", "batch_rms_norm", "bits_per_dim",
           "bits_per_dim_details", "bound", "bpd_from_logp", "dequantize_images",
           "discretization_offset", "draw_probes", "exact_divergence", "hutchinson_divergence",
           "log_likelihood", "per_sample_norm", "truncated_normal_dequantization",
           "truncated_normal_offset", "uniform_dequantization"]
