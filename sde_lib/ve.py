"""The variance exploding SDE (Song et al. 2021, Eq. 30), the continuous limit of SMLD (NCSN),
and the geometric noise levels of NCSN."""

import math

import torch

from sde_lib.sdes import SDE, expand_to, register_sde, standard_normal_logp


def geometric_sigmas(sigma_min, sigma_max, num, dtype=torch.float64, descending=True):
    """NCSN's noise levels sigma_1 > ... > sigma_L (L = `num`): from sigma_max down to
    sigma_min, equally spaced in log sigma (Song & Ermon 2019, Sec. 4.2). A [num] tensor;
    `descending=False` gives them from sigma_min up (computed that way, not flipped, so that
    each order keeps its values to the last bit)."""
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, "
                         f"sigma_max={sigma_max}")
    if int(num) < 1:
        raise ValueError(f"the number of noise levels must be >= 1, got {num}")
    ends = (math.log(sigma_max), math.log(sigma_min))
    return torch.exp(torch.linspace(*(ends if descending else ends[::-1]), int(num), dtype=dtype,
                                    device="cpu"))


@register_sde("vesde")
class VESDE(SDE):
    """Variance exploding SDE (Eq. 30): dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw,
    sigma(t) = sigma_min (sigma_max / sigma_min)^t on [0, 1]; SMLD (NCSN) in the discrete limit.

    As in the original, x(0) is taken to carry noise sigma_min already, so the kernel's std is
    sigma(t), not sqrt(sigma(t)^2 - sigma_min^2). Prior N(0, sigma_max^2 I)."""

    config_fields = {"sigma_min": "model.sigma_min", "sigma_max": "model.sigma_max"}
    noise_labels = "sigma"
    discrete_model = "smld"
    original_denoising = True
    sampling_eps = 1e-5

    def __init__(self, sigma_min=0.01, sigma_max=50.0, N=1000):
        super().__init__(N)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                             f"sigma_max={sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        # SMLD's levels, ascending: sigma_i = sigma_min (sigma_max / sigma_min)^(i / (N-1)).
        self.discrete_sigmas = geometric_sigmas(self.sigma_min, self.sigma_max, self.N,
                                                torch.float32, descending=False)

    @property
    def T(self):
        return 1.0

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def t_of_log_snr(self, lam):
        """lambda = -log sigma(t), so t = (-lambda - log sigma_min) / log(sigma_max / sigma_min)."""
        return (-lam - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)

    def sde(self, x, t):
        self.check_time(x, t)
        diffusion = self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))
        return torch.zeros_like(x), diffusion

    def prior_sampling(self, shape, generator=None, device=None, dtype=torch.float32):
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype) * self.sigma_max

    def prior_logp(self, z):
        return standard_normal_logp(z, self.sigma_max)

    # SMLD: level i = timestep(t) has sigma_i = discrete_sigmas[i]; the level below 0 is the data.

    def discretize(self, x, t):
        """SMLD: x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z, with sigma_{-1} = 0."""
        self.check_time(x, t)
        i = self.timestep(t)
        sigmas = self.discrete_sigmas.to(t.device)
        sigma = sigmas[i]
        adjacent = torch.where(i == 0, torch.zeros_like(sigma), sigmas[(i - 1).clamp(min=0)])
        return torch.zeros_like(x), torch.sqrt(sigma ** 2 - adjacent ** 2).to(x.dtype)

    def level_coefficients(self, t):
        """(1, sigma_i, 1, sigma_{i-1}) with SMLD's levels (sigma_{-1} = 0)."""
        i = self.timestep(t)
        sigmas = self.discrete_sigmas.to(device=t.device, dtype=t.dtype)
        ones = torch.ones_like(t)
        prev = torch.where(i == 0, torch.zeros_like(t), sigmas[(i - 1).clamp(min=0)])
        return ones, sigmas[i], ones, prev

    def discrete_label(self, t):
        """NCSN's integer label round((T - t)(N - 1) / T): 0 at t = T (sigma_max), N - 1 at t = 0."""
        return torch.round((self.T - t) * ((self.N - 1) / self.T)).long()

    def discrete_kernel(self, labels):
        """(1, sigma) with sigma = the SMLD level of each label (label 0 = sigma_max)."""
        sigmas = self.discrete_sigmas.flip(0).to(labels.device)[labels]
        return torch.ones_like(sigmas), sigmas
