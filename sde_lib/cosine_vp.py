"""The cosine-schedule VP SDE of Nichol & Dhariwal (2021, "Improved denoising diffusion
probabilistic models", Eq. 17) in continuous time."""

import math

import torch

from sde_lib.sdes import SDE, expand_to, register_sde, standard_normal_logp


@register_sde("cosine_vpsde")
class CosineVPSDE(SDE):
    """dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw with

        alpha_bar(t) = cos^2(theta(t)) / cos^2(theta(0)),  theta(t) = (t + s) / (1 + s) pi / 2,
        beta(t) = -d log alpha_bar / dt = pi / (1 + s) tan(theta(t)),  s = 0.008;

    kernel mean sqrt(alpha_bar(t)) x, std sqrt(1 - alpha_bar(t)), prior N(0, I); a VP-type SDE
    (networks take time labels and predict the noise).

    The end is kept finite by truncation: beta(t) -> inf as t -> 1, so the SDE runs on
    [0, T] with T = 0.995, where alpha_bar(T) = 6.1e-5 (the linear VP SDE's alpha_bar(1) is
    4.3e-5) and beta(T) = 400. beta is not clipped, so the closed-form kernel stays exact on
    the whole of [0, T]. No discrete model: continuous-time training and labels only."""

    s = 0.008
    T = 0.995

    def __init__(self, N=1000):
        super().__init__(N)

    def theta(self, t):
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    def beta(self, t):
        return math.pi / (1 + self.s) * torch.tan(self.theta(t))

    def alpha(self, t):
        """sqrt(alpha_bar(t)) = cos(theta(t)) / cos(theta(0))."""
        return torch.cos(self.theta(t)) / math.cos(self.theta(0.0))

    def sigma(self, t):
        """sqrt(1 - alpha_bar(t)), from cos^2 a - cos^2 b = sin(b - a) sin(b + a) (no cancellation
        at small t): sqrt(sin(theta(t) - theta(0)) sin(theta(t) + theta(0))) / cos(theta(0))."""
        theta0 = self.theta(0.0)
        return (torch.sqrt(torch.sin(t / (1 + self.s) * (math.pi / 2))
                           * torch.sin(self.theta(t) + theta0)) / math.cos(theta0))

    def t_of_log_snr(self, lam):
        """alpha_bar = sigmoid(2 lambda), so theta = arccos(sqrt(alpha_bar) cos theta(0))."""
        lam = torch.as_tensor(lam)
        theta = torch.arccos(torch.sqrt(torch.sigmoid(2 * lam)) * math.cos(self.theta(0.0)))
        return theta * (2 * (1 + self.s) / math.pi) - self.s

    def sde(self, x, t):
        self.check_time(x, t)
        beta = self.beta(t)
        return -0.5 * expand_to(beta, x) * x, torch.sqrt(beta)

    def prior_sampling(self, shape, generator=None, device=None, dtype=torch.float32):
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z):
        return standard_normal_logp(z)
