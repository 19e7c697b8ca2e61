"""The SDE of Karras et al. (2022, "Elucidating the design space of diffusion-based generative
models", EDM): sigma(t) = t, s(t) = 1."""

import torch

from sde_lib.sdes import SDE, register_sde, standard_normal_logp


@register_sde("edm_vesde")
class EDMVESDE(SDE):
    """dx = sqrt(2 t) dw on t in [0, T], T = 80 (EDM's sigma_max): kernel mean x, std t
    (sigma(t) = t, Table 1), prior N(0, 80^2 I); a VE-type SDE (networks take sigma(t) = t
    and output the score). Time is the noise level, so T = 80, not 1.

    Time limits: EDM's sigma_min = 0.002 is the default of all three (training draws
    t ~ U[0.002, 80], samplers stop at 0.002, the likelihood integrates from 0.002). No
    discrete model: continuous-time training and labels only."""

    T = 80.0
    noise_labels = "sigma"
    training_eps = 0.002
    sampling_eps = 0.002
    likelihood_eps = 0.002

    def __init__(self, N=1000):
        super().__init__(N)

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return t.clone()

    def t_of_log_snr(self, lam):
        """lambda = -log t."""
        return torch.exp(-torch.as_tensor(lam))

    def sde(self, x, t):
        self.check_time(x, t)
        return torch.zeros_like(x), torch.sqrt(2 * t)

    def prior_sampling(self, shape, generator=None, device=None, dtype=torch.float32):
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype) * self.T

    def prior_logp(self, z):
        return standard_normal_logp(z, self.T)
