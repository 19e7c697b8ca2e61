"""The continuous-time variational bound on the negative log-likelihood of the reverse SDE
(Song, Durkan, Murray & Ermon 2021, ScoreFlow, Thm. 1 and 3; Huang, Lim & Courville 2021),
estimated by Monte Carlo over t and the noise: no ODE solve, one network evaluation per draw.

Which density. The reverse SDE with score s(x, t), started from the prior pi at T and run to eps,
has a density p_eps; a Gaussian decoder N(x; x_eps / alpha_eps, (sigma_eps / alpha_eps)^2 I)
carries it to time 0. The bound is on -log of that density at time 0,

    p(x) = integral p_eps(y) N(x; y / alpha_eps, (sigma_eps / alpha_eps)^2 I) dy,

a proper density of x, so the dequantization bounds of `likelihood.bpd` apply to it. With the
exact score and pi = p_T it is the data density smoothed by N(0, 2 sigma_eps^2 / alpha_eps^2 I)
(sigma_eps = 0.01 for the default VE SDE, whose kernel keeps sigma_min; about 1e-3 for VP at
eps = 1e-5). The ODE's `log_likelihood` is of p_eps at x itself; the two differ by that smoothing.

The bound. Let q be the forward process given x(0) = x on [eps, T], with kernel
N(alpha(t) x, sigma(t)^2 I) (`sde.marginal_prob`). Data processing of the path-space KL
divergence and Girsanov's theorem give

    -log p(x) <= KL(q_T(. | x) || pi)
                 + 1/2 int_eps^T g(t)^2 E_z || s(x_t, t) + z / sigma(t) ||^2 dt
                 + D/2 log(2 pi e sigma_eps^2 / alpha_eps^2),     x_t = alpha(t) x + sigma(t) z,

the last term being the decoder's E[-log p(x | x_eps)]. The integrand is finite at eps since
sigma(eps) > 0; the score-matching ELBO of ScoreFlow's Theorem 3 is the same expression with the
mean D g^2 / sigma^2 of ||z / sigma||^2 g^2 integrated exactly. The KL term is estimated from one
draw x_T as log q_T(x_T | x) - log pi(x_T) (the two logs share the draw, so their difference has
little variance), which needs only `sde.prior_logp`.

Estimator. With `importance_sampling`, t has density g^2 / (Z sigma^2) on [eps, T]
(`likelihood.importance`), else is uniform; each draw is divided by its density, so the estimate
is unbiased either way. The integrand is sampled as

    (g^2 / sigma^2) [ ||sigma s + z||^2 - c(t) (||z||^2 - D) ] / 2,

unbiased for any c(t) independent of z (E ||z||^2 = D). `control` picks c: 'none' (c = 0, the
likelihood-weighted DSM loss), 'full' (c = 1, Theorem 3's integrand), or 'snr' (default:
c = lambda^2, lambda = alpha^2 v / (alpha^2 v + sigma^2) with v the sample's own variance over
its dimensions: close to the variance-optimal c when the data is roughly Gaussian; it uses x only).
The K = n_samples times of an image are stratified (draw k has its uniform in [k/K, (k+1)/K)),
since most of the variance is over t; the standard error collapses adjacent strata in pairs
(conservative). Uniform t leaves the 1/t growth of g^2/sigma^2 near eps (VP, sub-VP) in the
integrand: unbiased, but heavy-tailed, so a few draws typically come out low; use importance
sampling for VP-type SDEs (for VE the two coincide).

Cost: n_samples network evaluations per image on batches the size of x, no gradients.
"""

import dataclasses
import math

import torch

from likelihood.draws import draw
from likelihood.importance import ImportanceTime, g2_over_sigma2, noise_to_signal
from sde_lib.sdes import expand_to

CONTROLS = ("snr", "full", "none")


@dataclasses.dataclass
class BoundResult:
    """nll: [B] the bound on -log p(x) in nats (mean over draws); nll_stderr: [B] its standard
    error over the draws; nll_samples: [K, B] one estimate per draw; prior: [B] the KL term's
    mean; decoder: the decoder term (a constant); nfe: network evaluations per image (K);
    eps, importance_sampling, control: the settings used; dim: dimensions per sample."""
    nll: torch.Tensor
    nll_stderr: torch.Tensor
    nll_samples: torch.Tensor
    prior: torch.Tensor
    decoder: float
    nfe: int
    eps: float
    importance_sampling: bool
    control: str
    dim: int

    @property
    def nats_per_dim(self):
        return self.nll / self.dim


def _normal(shape, generator, like):
    def sample(shape, g, device):
        return torch.randn(shape, generator=g, device=device, dtype=like.dtype)
    return draw(sample, shape, generator, like.device)


def _check(score_fn, sde, x, n_samples, eps, control):
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable as score_fn(x, t), got "
                        f"{type(score_fn).__name__}")
    if not torch.is_tensor(x) or not torch.is_floating_point(x) or x.dim() < 2 or not len(x):
        raise ValueError(f"x must be a float tensor [B, ...] with B >= 1, got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    if not torch.isfinite(x).all():
        raise ValueError(f"x has {int((~torch.isfinite(x)).sum())} non-finite entries")
    if int(n_samples) != n_samples or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps}")
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")


def stratified_stderr(samples):
    """Standard error of the mean of K stratified draws [K, B] (one per stratum, in stratum
    order), by collapsing adjacent strata in pairs: sum_j (y_2j - y_2j+1)^2 / K^2, which
    overestimates the variance by the squared differences of the strata's means (conservative).
    NaN for K = 1."""
    K = samples.shape[0]
    if K < 2:
        return torch.full(samples.shape[1:], math.nan, dtype=samples.dtype, device=samples.device)
    pairs = K // 2
    d = samples[1:2 * pairs:2] - samples[0:2 * pairs:2]
    return (d.pow(2).sum(0) * (K / (2 * pairs))).sqrt() / K


def control_coefficient(control, sde, x, t):
    """c(t) of the control variate (module docstring): [B] float64 or a float."""
    if control == "none":
        return 0.0
    if control == "full":
        return 1.0
    mean, std = sde.marginal_prob(torch.ones_like(t)[:, None], t)
    a2 = mean[:, 0].double() ** 2
    v = x.double().flatten(1).var(1, unbiased=False)
    lam = a2 * v / (a2 * v + std.double() ** 2)
    return lam ** 2


def prior_kl(sde, x, generator=None):
    """One-draw estimate of KL(q_T(. | x) || pi), [B] float64: log q_T(x_T | x) - log pi(x_T)."""
    T = torch.full((x.shape[0],), float(sde.T), device=x.device, dtype=x.dtype)
    mean, std = sde.marginal_prob(x, T)
    z = _normal(x.shape, generator, x)
    xT = mean + expand_to(std, x) * z
    D = x[0].numel()
    log_q = (-0.5 * D * torch.log(2 * math.pi * std.double() ** 2)
             - 0.5 * z.double().flatten(1).pow(2).sum(1))
    return log_q - sde.prior_logp(xT).double()


def decoder_nll(sde, eps, dim):
    """E[-log N(x; x_eps / alpha_eps, (sigma_eps / alpha_eps)^2 I)] = D/2 log(2 pi e s^2),
    s = sigma(eps) / alpha(eps)."""
    s = noise_to_signal(sde, eps)
    return 0.5 * dim * math.log(2 * math.pi * math.e * s * s)


def bound(score_fn, sde, x, *, n_samples=32, importance_sampling=True, eps=None, control="snr",
          generator=None):
    """Upper bound on -log p(x) of the reverse SDE's model (module docstring), per sample.

    x: [B, ...] data (for images: dequantized, in the model's range); eps defaults to the SDE's
    `likelihood_eps`. Draws come from `generator` (all K x B uniforms of t first, then per draw
    z and the prior's draw). Returns a BoundResult (nats)."""
    eps = sde.likelihood_eps if eps is None else float(eps)
    _check(score_fn, sde, x, n_samples, eps, control)
    B, D = x.shape[0], x[0].numel()
    proposal = ImportanceTime(sde, eps) if importance_sampling else None
    decoder = decoder_nll(sde, eps, D)
    # Stratified times: draw k of image b has u in [k / K, (k + 1) / K), so the K draws cover
    # [eps, T] evenly (most of the variance is over t); one uniform per (k, b) from `generator`.
    K = int(n_samples)
    def uniform(shape, g, device):
        return torch.rand(shape, generator=g, device=device, dtype=torch.float64)
    u = (torch.arange(K, dtype=torch.float64, device=x.device)[:, None]
         + draw(uniform, (K, B), generator, x.device, batch_dim=1)) / K
    if proposal is not None:
        times = proposal.quantile(u.flatten()).reshape(K, B)
    else:
        times = eps + u * (sde.T - eps)
    times = times.to(x.dtype)
    draws, priors = [], []
    with torch.no_grad():
        for k in range(K):
            t = times[k]
            z = _normal(x.shape, generator, x)
            mean, std = sde.marginal_prob(x, t)
            s = score_fn(mean + expand_to(std, x) * z, t).double().flatten(1)
            zf, sd = z.double().flatten(1), std.double()[:, None]
            # 1/2 (g^2 / sigma^2) / density(t) for the draw: Z / 2 under importance sampling.
            if proposal is not None:
                half_w = torch.full((B,), 0.5 * proposal.Z, dtype=torch.float64, device=x.device)
            else:
                half_w = 0.5 * (sde.T - eps) * g2_over_sigma2(sde, t).to(x.device)
            # ||sigma s + z||^2 - c (||z||^2 - D): unbiased for any c(t) not depending on z.
            c = control_coefficient(control, sde, x, t)
            zz = zf.pow(2).sum(1)
            integral = half_w * ((sd * s + zf).pow(2).sum(1) - c * (zz - D))
            prior = prior_kl(sde, x, generator)
            priors.append(prior)
            draws.append(prior + integral + decoder)
    samples = torch.stack(draws)
    stderr = stratified_stderr(samples)
    return BoundResult(nll=samples.mean(0), nll_stderr=stderr, nll_samples=samples,
                       prior=torch.stack(priors).mean(0), decoder=decoder, nfe=int(n_samples),
                       eps=eps, importance_sampling=bool(importance_sampling), control=control, dim=D)
