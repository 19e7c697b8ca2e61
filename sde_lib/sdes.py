"""Forward SDEs of Song et al. (ICLR 2021), their discretisations and reverse-time SDEs.

Each SDE dx = f(x, t) dt + g(t) dw (Eq. 5) is linear in x, so its perturbation kernel
p_0t(x(t) | x(0)) is Gaussian with mean `alpha(t) x(0)` and std `sigma(t)` (`marginal_prob`).
The reverse-time SDE (Eq. 6) and the probability-flow ODE (Eq. 13) are built once in
`SDE.reverse` from `sde`, `discretize` and a score function, so every sampler and the
likelihood work for any subclass.

Default time limits (the original's, kept per SDE): training draws t ~ U[`training_eps`, T],
samplers stop at `sampling_eps` (1e-5 for VE, 1e-3 for VP and sub-VP), the likelihood
integrates from `likelihood_eps` (1e-5).
"""

import abc
import math

import numpy as np
import torch


def expand_to(v, x):
    """Reshape a per-sample tensor `v` of shape [B] to broadcast against `x` of shape [B, ...]."""
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim()))


class SDE(abc.ABC):
    """A forward SDE on [0, T] with N discretisation steps."""

    training_eps = 1e-5
    sampling_eps = 1e-3
    likelihood_eps = 1e-5

    def __init__(self, N):
        if int(N) != N or N < 1:
            raise ValueError(f"N must be a positive integer, got {N!r}")
        self.N = int(N)

    @property
    @abc.abstractmethod
    def T(self):
        """End time of the forward SDE."""

    @abc.abstractmethod
    def sde(self, x, t):
        """Drift f(x, t) and diffusion g(t) ([B]) of Eq. (5)."""

    @abc.abstractmethod
    def marginal_prob(self, x, t):
        """Mean and std ([B]) of the perturbation kernel p_0t(x(t) | x(0) = x)."""

    @abc.abstractmethod
    def prior_sampling(self, shape, generator=None, device=None, dtype=torch.float32):
        """A draw from the prior p_T, approximately the marginal at t = T."""

    @abc.abstractmethod
    def prior_logp(self, z):
        """log p_T(z) in nats, summed over all but the batch dimension: [B]."""

    def check_time(self, x, t):
        """Raise a ValueError unless `t` is a [B] float tensor in [0, T] for `x` of shape [B, ...]."""
        if not torch.is_tensor(t) or not torch.is_floating_point(t):
            raise ValueError(f"t must be a float tensor of shape [B], got {type(t).__name__}"
                             f"{'' if not torch.is_tensor(t) else ' of dtype ' + str(t.dtype)}")
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape [B] = [{x.shape[0]}] for x of shape "
                             f"{tuple(x.shape)}, got {tuple(t.shape)}")
        if t.device.type == "cpu" and not torch.jit.is_tracing():
            bad = (t < 0) | (t > self.T * (1 + 1e-6)) | torch.isnan(t)
            if bad.any():
                raise ValueError(f"t must lie in [0, T] = [0, {self.T}], got "
                                 f"{t[bad][:4].tolist()} (of {int(bad.sum())} bad values)")

    def discretize(self, x, t):
        """Euler-Maruyama discretisation x_{i+1} = x_i + f_i + G_i z_i with dt = T / N."""
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def timestep(self, t):
        """Index i in {0, ..., N-1} of the discrete noise level at time t (the original's rounding)."""
        return (t * (self.N - 1) / self.T).long()

    def reverse(self, score_fn, probability_flow=False):
        """The reverse-time SDE of Eq. (6), or the probability-flow ODE of Eq. (13) if asked."""
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE(SDE):
    """dx = [f - c g^2 score] dt + g_rev dw_bar, with c = 1/2 and g_rev = 0 for the ODE."""

    def __init__(self, forward, score_fn, probability_flow=False):
        super().__init__(forward.N)
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)
        self._c = 0.5 if self.probability_flow else 1.0

    @property
    def T(self):
        return self.forward.T

    def sde(self, x, t):
        drift, diffusion = self.forward.sde(x, t)
        score = self.score_fn(x, t)
        drift = drift - expand_to(diffusion ** 2, x) * score * self._c
        return drift, torch.zeros_like(diffusion) if self.probability_flow else diffusion

    def discretize(self, x, t):
        """Reverse of the forward discretisation: f_rev = f - c G^2 score, G_rev = G (0 for the ODE)."""
        f, G = self.forward.discretize(x, t)
        f = f - expand_to(G ** 2, x) * self.score_fn(x, t) * self._c
        return f, torch.zeros_like(G) if self.probability_flow else G

    def marginal_prob(self, x, t):
        raise NotImplementedError("a reverse-time SDE has no perturbation kernel; use the forward SDE's")

    def prior_sampling(self, shape, generator=None, device=None, dtype=torch.float32):
        return self.forward.prior_sampling(shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z):
        return self.forward.prior_logp(z)


def _standard_normal_logp(z, scale=1.0):
    """log N(z; 0, scale^2 I) summed over all but the batch dimension."""
    d = z[0].numel()
    return (-0.5 * d * math.log(2 * math.pi * scale ** 2)
            - z.flatten(1).pow(2).sum(1) / (2 * scale ** 2))


class VESDE(SDE):
    """Variance exploding SDE (Eq. 30): dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw,
    sigma(t) = sigma_min (sigma_max / sigma_min)^t; SMLD (NCSN) in the discrete limit."""

    sampling_eps = 1e-5

    def __init__(self, sigma_min=0.01, sigma_max=50.0, N=1000):
        super().__init__(N)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                             f"sigma_max={sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        # Noise levels of SMLD, ascending: sigma_i = sigma_min (sigma_max / sigma_min)^(i / (N-1)).
        self.discrete_sigmas = torch.exp(torch.linspace(np.log(self.sigma_min),
                                                        np.log(self.sigma_max), self.N))

    @property
    def T(self):
        return 1.0

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x, t):
        self.check_time(x, t)
        diffusion = self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))
        return torch.zeros_like(x), diffusion

    def marginal_prob(self, x, t):
        """Mean x and std sigma(t). As in the original, x(0) is taken to carry noise sigma_min
        already, so the std is sigma(t), not sqrt(sigma(t)^2 - sigma_min^2)."""
        self.check_time(x, t)
        return x, self.sigma(t)

    def prior_sampling(self, shape, generator=None, device=None, dtype=torch.float32):
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype) * self.sigma_max

    def prior_logp(self, z):
        return _standard_normal_logp(z, self.sigma_max)

    def discretize(self, x, t):
        """SMLD: x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z, with sigma_{-1} = 0."""
        self.check_time(x, t)
        i = self.timestep(t)
        sigmas = self.discrete_sigmas.to(t.device)
        sigma = sigmas[i]
        adjacent = torch.where(i == 0, torch.zeros_like(sigma), sigmas[(i - 1).clamp(min=0)])
        return torch.zeros_like(x), torch.sqrt(sigma ** 2 - adjacent ** 2).to(x.dtype)


class BetaSchedule(SDE):
    """Linear beta(t) = beta_0 + t (beta_1 - beta_0) and the DDPM discrete betas beta_i = beta(i/(N-1))/N.

    The common base of VPSDE and subVPSDE: `isinstance(sde, BetaSchedule)` asks for a beta(t)."""

    def __init__(self, beta_min=0.1, beta_max=20.0, N=1000):
        super().__init__(N)
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got beta_min={beta_min}, "
                             f"beta_max={beta_max}")
        self.beta_0 = float(beta_min)
        self.beta_1 = float(beta_max)
        self.discrete_betas = torch.linspace(beta_min / N, beta_max / N, N)
        self.alphas = 1.0 - self.discrete_betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.sqrt_alphas_cumprod = torch.sqrt(self.alphas_cumprod)
        self.sqrt_1m_alphas_cumprod = torch.sqrt(1.0 - self.alphas_cumprod)

    @property
    def T(self):
        return 1.0

    def beta(self, t):
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def log_mean_coeff(self, t):
        """log alpha(t) = -1/4 t^2 (beta_1 - beta_0) - 1/2 t beta_0 = -1/2 int_0^t beta(s) ds."""
        return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def prior_sampling(self, shape, generator=None, device=None, dtype=torch.float32):
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z):
        return _standard_normal_logp(z)


class VPSDE(BetaSchedule):
    """Variance preserving SDE (Eq. 32): dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw; DDPM in the
    discrete limit."""

    def sde(self, x, t):
        self.check_time(x, t)
        beta = self.beta(t)
        return -0.5 * expand_to(beta, x) * x, torch.sqrt(beta)

    def marginal_prob(self, x, t):
        """Eq. (33): mean alpha(t) x, std sqrt(1 - alpha(t)^2)."""
        self.check_time(x, t)
        lmc = self.log_mean_coeff(t)
        return expand_to(torch.exp(lmc), x) * x, torch.sqrt(-torch.expm1(2 * lmc))

    def discretize(self, x, t):
        """DDPM: x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z."""
        self.check_time(x, t)
        i = self.timestep(t)
        beta = self.discrete_betas.to(x.device)[i]
        alpha = self.alphas.to(x.device)[i]
        f = expand_to(torch.sqrt(alpha), x) * x - x
        return f, torch.sqrt(beta).to(x.dtype)


class subVPSDE(BetaSchedule):
    """sub-VP SDE (Eq. 16): dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw.
    Its discrete betas/alphas (those of VP) serve the Langevin corrector's step size."""

    def sde(self, x, t):
        self.check_time(x, t)
        beta = self.beta(t)
        discount = -torch.expm1(-2 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t ** 2)
        return -0.5 * expand_to(beta, x) * x, torch.sqrt(beta * discount)

    def marginal_prob(self, x, t):
        """Eq. (29): mean alpha(t) x, std 1 - alpha(t)^2."""
        self.check_time(x, t)
        lmc = self.log_mean_coeff(t)
        return expand_to(torch.exp(lmc), x) * x, -torch.expm1(2 * lmc)


SDES = {"vesde": VESDE, "vpsde": VPSDE, "subvpsde": subVPSDE}


def _config_field(config, path):
    """`config.<path>` for a dotted `path` ('training.sde'); a missing field is a ValueError that
    names it."""
    value = config
    for i, key in enumerate(path.split(".")):
        try:
            value = value[key] if isinstance(value, dict) else getattr(value, key)
        except (AttributeError, KeyError):
            missing = ".".join(path.split(".")[:i + 1])
            where = "" if missing == path else f" (the config has no {missing})"
            raise ValueError(f"config.{path} is missing{where}") from None
    return value


def get_sde(config):
    """The SDE named by `config.training.sde` (one of `SDES`), with the noise settings of
    `config.model` (sigma_min/sigma_max for VE, beta_min/beta_max for VP and sub-VP, num_scales)."""
    try:
        sde = _config_field(config, "training.sde")
    except ValueError as e:
        raise ValueError(f"{e}: it names the SDE, one of {', '.join(sorted(SDES))}") from None
    name = str(sde).lower()
    if name not in SDES:
        raise ValueError(f"unknown SDE {sde!r} in config.training.sde; known: "
                         f"{', '.join(sorted(SDES))}")
    params = ("sigma_min", "sigma_max") if name == "vesde" else ("beta_min", "beta_max")
    kwargs = {p: _config_field(config, f"model.{p}") for p in params}
    return SDES[name](**kwargs, N=_config_field(config, "model.num_scales"))
