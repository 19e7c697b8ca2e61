"""The variance preserving SDE (Song et al. 2021, Eq. 32), the continuous limit of DDPM, and the
linear beta schedule it shares with the sub-VP SDE."""

import torch

from sde_lib.sdes import SDE, expand_to, register_sde, standard_normal_logp


class BetaSchedule(SDE):
    """Linear beta(t) = beta_0 + t (beta_1 - beta_0) on [0, 1], alpha(t) = exp(-1/2 int_0^t beta),
    prior N(0, I), and the DDPM discrete betas beta_i = beta(i/(N-1))/N with their cumulative
    products (which the Langevin corrector's step size reads). The common base of VPSDE and
    subVPSDE."""

    config_fields = {"beta_min": "model.beta_min", "beta_max": "model.beta_max"}

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

    beta_min = property(lambda self: self.beta_0)
    beta_max = property(lambda self: self.beta_1)

    @property
    def T(self):
        return 1.0

    def beta(self, t):
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def log_mean_coeff(self, t):
        """log alpha(t) = -1/4 t^2 (beta_1 - beta_0) - 1/2 t beta_0 = -1/2 int_0^t beta(s) ds."""
        return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def alpha(self, t):
        return torch.exp(self.log_mean_coeff(t))

    def t_of_log_mean_coeff(self, lmc):
        """The t in [0, 1] with log_mean_coeff(t) = lmc <= 0 (the positive root of the quadratic)."""
        d = self.beta_1 - self.beta_0
        return -4 * lmc / (self.beta_0 + torch.sqrt(self.beta_0 ** 2 - 4 * d * lmc))

    def prior_sampling(self, shape, generator=None, device=None, dtype=torch.float32):
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z):
        return standard_normal_logp(z)


@register_sde("vpsde")
class VPSDE(BetaSchedule):
    """Variance preserving SDE (Eq. 32): dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw; kernel
    mean alpha(t) x, std sqrt(1 - alpha(t)^2) (Eq. 33); DDPM in the discrete limit."""

    discrete_model = "ddpm"
    original_denoising = True

    def sde(self, x, t):
        self.check_time(x, t)
        beta = self.beta(t)
        return -0.5 * expand_to(beta, x) * x, torch.sqrt(beta)

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self.log_mean_coeff(t)))

    def t_of_log_snr(self, lam):
        """alpha^2 = sigmoid(2 lambda), so log alpha = -1/2 softplus(-2 lambda) (Lu et al. 2022,
        App. D), then the quadratic of log_mean_coeff."""
        lam = torch.as_tensor(lam)
        return self.t_of_log_mean_coeff(-0.5 * torch.nn.functional.softplus(-2 * lam))

    # DDPM: level i = timestep(t) has beta_i; the level below 0 is the data (abar = 1).

    def discretize(self, x, t):
        """DDPM: x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z."""
        self.check_time(x, t)
        i = self.timestep(t)
        beta = self.discrete_betas.to(x.device)[i]
        alpha = self.alphas.to(x.device)[i]
        f = expand_to(torch.sqrt(alpha), x) * x - x
        return f, torch.sqrt(beta).to(x.dtype)

    def level_coefficients(self, t):
        """(sqrt(abar_i), sqrt(1 - abar_i), sqrt(abar_{i-1}), sqrt(1 - abar_{i-1})), DDPM's
        cumulative alphas at levels i and i - 1 (abar_{-1} = 1, the data)."""
        i = self.timestep(t)
        abar = self.alphas_cumprod.to(device=t.device, dtype=t.dtype)
        abar_s = torch.where(i == 0, torch.ones_like(t), abar[(i - 1).clamp(min=0)])
        return abar[i].sqrt(), (1 - abar[i]).sqrt(), abar_s.sqrt(), (1 - abar_s).sqrt()

    def discrete_label(self, t):
        """DDPM's time label (N - 1) t / T (a float; its level is floor of it)."""
        return t * ((self.N - 1) / self.T)

    def discrete_kernel(self, labels):
        """(sqrt(abar_i), sqrt(1 - abar_i)) at integer labels i."""
        return (self.sqrt_alphas_cumprod.to(labels.device)[labels],
                self.sqrt_1m_alphas_cumprod.to(labels.device)[labels])
