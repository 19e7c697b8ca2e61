"""The sub-VP SDE (Song et al. 2021, Eq. 16): its variance stays below the VP SDE's."""

import torch

from sde_lib.sdes import expand_to, register_sde
from sde_lib.vp import BetaSchedule


@register_sde("subvpsde")
class subVPSDE(BetaSchedule):
    """dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw; kernel mean
    alpha(t) x, std 1 - alpha(t)^2 (Eq. 29). No discrete model (its networks always use the
    continuous convention); its DDPM betas/alphas (those of VP) serve the Langevin corrector's
    step size."""

    original_denoising = True

    def sde(self, x, t):
        self.check_time(x, t)
        beta = self.beta(t)
        discount = -torch.expm1(-2 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t ** 2)
        return -0.5 * expand_to(beta, x) * x, torch.sqrt(beta * discount)

    def sigma(self, t):
        return -torch.expm1(2 * self.log_mean_coeff(t))

    def t_of_log_snr(self, lam):
        """lambda = log a - log(1 - a^2) gives a = 2 e^lambda / (1 + sqrt(1 + 4 e^(2 lambda)))
        (the root in (0, 1)), then the quadratic of log_mean_coeff."""
        lam = torch.as_tensor(lam)
        log_a = (lam + torch.log(torch.tensor(2.0, dtype=lam.dtype))
                 - torch.log1p(torch.sqrt(1 + 4 * torch.exp(2 * lam))))
        return self.t_of_log_mean_coeff(log_a)
