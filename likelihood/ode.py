"""Log-likelihoods by the instantaneous change of variables along the probability-flow ODE.

The probability-flow ODE dx/dt = f~(x, t) = f(x, t) - 1/2 g(t)^2 score(x, t) (Eq. 13; its drift
and the one integrator of every probability-flow solve are in solvers/flow.py) carries
p_eps to p_T, and along a solution log p_t(x(t)) changes at the rate -div f~(x(t), t)
(Chen et al. 2018; Eq. 39 of Song et al. 2021). Integrating the augmented state
[x, delta] with d delta / dt = div f~ from t = eps to T gives

    log p_eps(x(eps)) = log p_T(x(T)) + delta(T),

with p_T replaced by the prior (`sde.prior_logp`). The number is the density of x at time eps,
i.e. of the data perturbed by the kernel at eps (std sigma(eps): 0.01 for the default VE SDE,
about 1e-3 for VP, 1e-6 for sub-VP), not of x(0); the original reports the same quantity.
"""

import dataclasses
import math

import torch

from likelihood.divergence import ESTIMATORS, draw_probes, exact_divergence, hutchinson_divergence
from solvers.flow import check_method, check_tolerances, probability_flow_drift, solve


@dataclasses.dataclass
class LikelihoodResult:
    """logp: [B] log p_eps(x) in nats (mean over probes), in the ODE state's dtype;
    logp_stderr: [B] standard error of that mean over the probes (0 for 'exact', NaN for a single
    random probe); logp_probes: [K, B] one estimate per probe; prior_logp: [B] the prior's
    log-density at z (`sde.prior_logp`);
    z: the latent x(T), in x's dtype; nfe: evaluations of the ODE's right-hand side (each one
    forward and K backward passes, or D / chunk batched ones for 'exact')."""
    logp: torch.Tensor
    logp_stderr: torch.Tensor
    logp_probes: torch.Tensor
    prior_logp: torch.Tensor
    z: torch.Tensor
    nfe: int
    eps: float
    estimator: str

    @property
    def nats_per_dim(self):
        """Negative log-likelihood per dimension, -logp / D ([B], nats): for non-image data."""
        return -self.logp / self.z[0].numel()


def per_sample_norm(state):
    """Error norm with each sample's error controlled: the original's norm (RMS of the scaled
    error err / (atol + rtol |y|) over the state) taken over each sample's own [x, delta] (D + K
    entries), then the largest over the samples. A step passes only if it would pass for every
    sample solved alone, so no sample's error is diluted by its batch-mates'."""
    x, delta = state
    sq = x.flatten(1).pow(2).sum(1) + delta.pow(2).sum(0)
    return (sq / (x[0].numel() + delta.shape[0])).sqrt().amax()


def batch_rms_norm(state):
    """RMS over the whole flattened state, the original's (SciPy's) norm: one sample's error is
    diluted by the batch size and by the dimension."""
    n = sum(s.numel() for s in state)
    return torch.sqrt(sum(s.pow(2).sum() for s in state) / n)


ERROR_NORMS = {"per_sample": per_sample_norm, "batch": batch_rms_norm}


def _check_inputs(score_fn, sde, x, estimator, n_probes, rtol, atol, eps, method, error_norm):
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable as score_fn(x, t), got "
                        f"{type(score_fn).__name__}")
    if not torch.is_tensor(x) or not torch.is_floating_point(x):
        raise ValueError(f"x must be a float tensor [B, ...], got "
                         f"{type(x).__name__ if not torch.is_tensor(x) else x.dtype}")
    if x.dim() < 2 or x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"x must have shape [B, ...] with B >= 1 and at least one dimension per "
                         f"sample, got {tuple(x.shape)}")
    bad = ~torch.isfinite(x)
    if bad.any():
        raise ValueError(f"x has {int(bad.sum())} non-finite entries (NaN or inf), in samples "
                         f"{sorted(set(bad.flatten(1).any(1).nonzero().flatten().tolist()))[:8]}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if int(n_probes) != n_probes or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}")
    check_tolerances(rtol, atol)
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps}")
    check_method(method, adaptive=True)   # the error control is what makes the number trusted
    if error_norm not in ERROR_NORMS:
        raise ValueError(f"error_norm must be one of {sorted(ERROR_NORMS)}, got {error_norm!r}")


def _shape_checked(score_fn):
    def score(x, t):
        s = score_fn(x, t)
        if not torch.is_tensor(s) or s.shape != x.shape:
            got = tuple(s.shape) if torch.is_tensor(s) else type(s).__name__
            raise ValueError(f"score_fn(x, t) must return x's shape {tuple(x.shape)}, got {got}")
        return s
    return score


def log_likelihood(score_fn, sde, x, *, estimator="rademacher", n_probes=1, rtol=1e-5, atol=1e-5,
                   eps=None, generator=None, method="dopri5", error_norm="per_sample",
                   state_dtype=torch.float64, exact_chunk=None, options=None):
    """log p_eps(x) under the probability-flow ODE of `sde` with `score_fn`: a LikelihoodResult.

    x: [B, ...] data at time eps (for images: dequantized, in the model's range).
    estimator: 'rademacher' or 'gaussian' (Hutchinson-Skilling, `n_probes` probes, each fixed for
        the whole solve; all probes share one trajectory, so they cost one forward and K backward
        passes per step; `logp` is their mean and `logp_stderr` its standard error), or 'exact'
        (the trace by D vector-Jacobian products; for small D, cost ~D/`exact_chunk` forwards).
    rtol, atol: tolerances of the adaptive solver (torchdiffeq `method`, default dopri5 = RK45).
    error_norm: 'per_sample' (default; see `per_sample_norm`): every sample's step error passes
        the original's RMS test on its own [x, delta]; or 'batch': the original's single RMS
        over the whole flattened batch, where one sample's error is diluted by the others'.
    eps: start time of the ODE (default `sde.likelihood_eps`, 1e-5 for every SDE here).
    state_dtype: dtype of the ODE state and of the solver's arithmetic (default float64, as the
        original's SciPy solve); `score_fn` always sees x's dtype.
    generator: draws the probes (on its device, then moved to x's).
    options: extra torchdiffeq options (e.g. {'max_num_steps': ...}); `norm` is set from error_norm.
    """
    eps = sde.likelihood_eps if eps is None else float(eps)
    _check_inputs(score_fn, sde, x, estimator, n_probes, rtol, atol, eps, method, error_norm)
    if estimator == "exact" and n_probes != 1:
        raise ValueError("the exact estimator has no probes; leave n_probes at 1")
    B, dtype = x.shape[0], x.dtype
    drift = probability_flow_drift(_shape_checked(score_fn), sde)
    probes = None if estimator == "exact" else draw_probes(n_probes, x, estimator, generator)
    nfe = 0

    def rhs(t, state):
        nonlocal nfe
        nfe += 1
        xt = state[0].to(dtype)
        vec_t = t.to(dtype) * torch.ones(B, dtype=dtype, device=x.device)
        if probes is None:
            f, div = exact_divergence(drift, xt, vec_t, exact_chunk)
            div = div[None]
        else:
            f, div = hutchinson_divergence(drift, xt, vec_t, probes)
        if not (torch.isfinite(f).all() and torch.isfinite(div).all()):
            raise FloatingPointError(f"the probability-flow drift or its divergence is not finite "
                                     f"at t = {float(t):.6g}: check score_fn")
        return f.to(state_dtype), div.to(state_dtype)

    k = 1 if probes is None else n_probes
    y0 = (x.detach().to(state_dtype), torch.zeros(k, B, dtype=state_dtype, device=x.device))
    opts = dict(options or {}, norm=ERROR_NORMS[error_norm])
    with torch.no_grad():
        z, delta = solve(rhs, y0, eps, sde.T, rtol=rtol, atol=atol, method=method, options=opts)
        prior_logp = sde.prior_logp(z)
    logp_probes = prior_logp[None] + delta
    logp = logp_probes.mean(0)
    if estimator == "exact":
        stderr = torch.zeros_like(logp)
    elif k == 1:
        stderr = torch.full_like(logp, math.nan)
    else:
        stderr = logp_probes.std(0) / math.sqrt(k)
    return LikelihoodResult(logp=logp, logp_stderr=stderr, logp_probes=logp_probes,
                            prior_logp=prior_logp, z=z.to(dtype), nfe=nfe, eps=eps,
                            estimator=estimator)
