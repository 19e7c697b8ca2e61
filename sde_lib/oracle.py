"""Exact-score oracle: Gaussian and Gaussian-mixture data under any linear SDE here.

If p_0 = sum_k w_k N(mu_k, Sigma_k) and the perturbation kernel is N(alpha(t) x(0), sigma(t)^2 I)
(`SDE.marginal_prob`), the marginal is again a mixture,

    p_t(x) = sum_k w_k N(x; alpha(t) mu_k, alpha(t)^2 Sigma_k + sigma(t)^2 I),

so `log p_t` and the score `grad_x log p_t` are exact for every t. Covariances are kept in their
eigenbases, Sigma_k = U_k diag(lambda_k) U_k^T, which makes each evaluation a pair of products
with U_k. Validate samplers, likelihoods and conditional samplers against these, as the tests do.

    dist = gaussian_mixture(means, covs, weights, event_shape=(1, 8, 8))
    p_t = dist.marginal(sde)
    p_t.score(x, t); p_t.log_prob(x, t); p_t.sample(t, generator=g)
"""

import math

import torch


class GaussianMixture:
    """A mixture of K Gaussians in D = prod(event_shape) dimensions, stored in float64.

    means: [K, D]; covs: [K, D, D] full, [K, D] diagonal, or [K] isotropic (or None: identity);
    weights: [K] (normalised here; None: uniform).
    """

    def __init__(self, means, covs=None, weights=None, event_shape=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() != 2:
            raise ValueError(f"means must have shape [K, D], got {tuple(means.shape)}")
        K, D = means.shape
        self.means = means
        if event_shape is None:
            event_shape = (D,)
        self.event_shape = tuple(int(s) for s in event_shape)
        if math.prod(self.event_shape) != D:
            raise ValueError(f"event_shape {self.event_shape} has {math.prod(self.event_shape)} "
                             f"elements but the means have D={D}")
        if weights is None:
            weights = torch.full((K,), 1.0 / K, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (K,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be {K} non-negative numbers with a positive sum, "
                             f"got {weights.tolist()}")
        self.weights = weights / weights.sum()
        if covs is None:
            covs = torch.ones(K, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.shape == (K,):
            self.eigvals, self.eigvecs = covs[:, None].expand(K, D).clone(), None
        elif covs.shape == (K, D):
            self.eigvals, self.eigvecs = covs.clone(), None
        elif covs.shape == (K, D, D):
            if not torch.allclose(covs, covs.transpose(1, 2), atol=1e-10):
                raise ValueError("covariance matrices must be symmetric")
            self.eigvals, self.eigvecs = torch.linalg.eigh(covs)
            self.eigvals = self.eigvals.clamp(min=0.0)
        else:
            raise ValueError(f"covs must have shape [K]={[K]}, [K, D]={[K, D]} or "
                             f"[K, D, D]={[K, D, D]}, got {list(covs.shape)}")
        if (self.eigvals < -1e-10).any():
            raise ValueError("covariances must be positive semi-definite")

    @property
    def dim(self):
        return self.means.shape[1]

    @property
    def num_components(self):
        return self.means.shape[0]

    def covariance(self, k):
        """The full [D, D] covariance of component k."""
        if self.eigvecs is None:
            return torch.diag(self.eigvals[k])
        U = self.eigvecs[k]
        return U @ torch.diag(self.eigvals[k]) @ U.T

    def mean(self):
        """Mean of the whole mixture, [D]."""
        return self.weights @ self.means

    def covariance_total(self):
        """Covariance of the whole mixture, [D, D]."""
        m = self.mean()
        out = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        for k in range(self.num_components):
            d = self.means[k] - m
            out += self.weights[k] * (self.covariance(k) + torch.outer(d, d))
        return out

    def _to_rotated(self, v, k):
        return v if self.eigvecs is None else v @ self.eigvecs[k].to(v.device)

    def _from_rotated(self, v, k):
        return v if self.eigvecs is None else v @ self.eigvecs[k].to(v.device).T

    def _flatten(self, x):
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x must have shape [B, *{list(self.event_shape)}], "
                             f"got {list(x.shape)}")
        return x.reshape(x.shape[0], -1).to(torch.float64)

    def sample(self, n, generator=None, return_labels=False, device=None, dtype=torch.float32):
        """n exact draws from p_0, shape [n, *event_shape] (and the component labels)."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = torch.empty(n, self.dim, dtype=torch.float64)
        for k in range(self.num_components):
            sel = labels == k
            zk = z[sel] * self.eigvals[k].sqrt()
            x[sel] = self.means[k] + self._from_rotated(zk, k)
        x = x.reshape(n, *self.event_shape).to(device=device, dtype=dtype)
        return (x, labels) if return_labels else x

    def component_log_probs(self, x, alpha=None, sigma=None):
        """log w_k + log N(x; alpha mu_k, alpha^2 Sigma_k + sigma^2 I) for each k: [B, K].

        alpha, sigma: [B] (default: 1 and 0, the data distribution itself)."""
        xf = self._flatten(x)
        B = xf.shape[0]
        alpha = torch.ones(B, dtype=torch.float64) if alpha is None else alpha.to(torch.float64)
        sigma = torch.zeros(B, dtype=torch.float64) if sigma is None else sigma.to(torch.float64)
        out = []
        for k in range(self.num_components):
            var = alpha[:, None] ** 2 * self.eigvals[k].to(xf.device) + sigma[:, None] ** 2
            y = self._to_rotated(xf - alpha[:, None] * self.means[k].to(xf.device), k)
            logn = -0.5 * ((y ** 2 / var).sum(1) + torch.log(2 * math.pi * var).sum(1))
            out.append(torch.log(self.weights[k]) + logn)
        return torch.stack(out, dim=1)

    def log_prob(self, x):
        """log p_0(x), [B] (nats)."""
        return torch.logsumexp(self.component_log_probs(x), dim=1).to(x.dtype)

    def marginal(self, sde):
        """The exact marginal p_t of this data distribution under `sde`."""
        return Marginal(self, sde)


class Marginal:
    """p_t of a GaussianMixture under a linear SDE: exact `log_prob(x, t)`, `score(x, t)`, `sample`."""

    def __init__(self, dist, sde):
        self.dist = dist
        self.sde = sde

    def coefficients(self, t):
        """alpha(t), sigma(t) ([B], float64) of the kernel N(alpha(t) x0, sigma(t)^2 I)."""
        alpha, sigma = self.sde.coefficients(t)
        return alpha.to(torch.float64), sigma.to(torch.float64)

    def log_prob(self, x, t):
        """log p_t(x), [B] (nats)."""
        self.sde.check_time(x, t)
        alpha, sigma = self.coefficients(t)
        return torch.logsumexp(self.dist.component_log_probs(x, alpha, sigma), 1).to(x.dtype)

    def score(self, x, t):
        """grad_x log p_t(x) = sum_k r_k(x) (-(alpha^2 Sigma_k + sigma^2 I)^{-1} (x - alpha mu_k)),
        r_k the posterior responsibilities."""
        self.sde.check_time(x, t)
        d = self.dist
        alpha, sigma = self.coefficients(t)
        xf = d._flatten(x)
        resp = torch.softmax(d.component_log_probs(x, alpha, sigma), dim=1)
        score = torch.zeros_like(xf)
        for k in range(d.num_components):
            var = alpha[:, None] ** 2 * d.eigvals[k].to(xf.device) + sigma[:, None] ** 2
            y = d._to_rotated(xf - alpha[:, None] * d.means[k].to(xf.device), k)
            score += resp[:, k:k + 1] * d._from_rotated(-y / var, k)
        return score.reshape(x.shape).to(x.dtype)

    __call__ = score

    def sample(self, t, generator=None, device=None, dtype=torch.float32):
        """Exact draws x(t) ~ p_t, one per entry of t: [B, *event_shape]."""
        x0 = self.dist.sample(t.shape[0], generator=generator, dtype=torch.float64)
        z = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        alpha, sigma = self.coefficients(t.cpu())
        shape = (-1,) + (1,) * len(self.dist.event_shape)
        xt = alpha.reshape(shape) * x0 + sigma.reshape(shape) * z
        return xt.to(device=device, dtype=dtype)


def gaussian(mean, cov=None, event_shape=None):
    """A single Gaussian N(mean, cov); cov [D, D], [D], a scalar, or None (identity)."""
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
    if cov is not None:
        cov = torch.as_tensor(cov, dtype=torch.float64)
        cov = cov.reshape(1) if cov.dim() == 0 else cov[None]
    return GaussianMixture(mean, cov, None, event_shape)


def gaussian_mixture(means, covs=None, weights=None, event_shape=None):
    """A mixture sum_k w_k N(mu_k, Sigma_k); see GaussianMixture for the accepted shapes."""
    return GaussianMixture(means, covs, weights, event_shape)


def ring_mixture(num_modes=8, radius=4.0, std=0.3, dim=2):
    """`num_modes` equal-weight isotropic modes on a circle of `radius` in the first two
    coordinates (the rest zero), each with std `std`: the usual well-separated test mixture."""
    if dim < 2:
        raise ValueError(f"dim must be at least 2, got {dim}")
    angles = 2 * math.pi * torch.arange(num_modes, dtype=torch.float64) / num_modes
    means = torch.zeros(num_modes, dim, dtype=torch.float64)
    means[:, 0], means[:, 1] = radius * torch.cos(angles), radius * torch.sin(angles)
    return GaussianMixture(means, torch.full((num_modes,), std ** 2, dtype=torch.float64))


def smooth_image_covariance(C, H, W, ell=1.5, amp=0.5, nugget=0.05, channel_corr=0.6):
    """An image-like covariance [CHW, CHW] (float64): squared-exponential over the pixel grid,
    amp exp(-|p - q|^2 / (2 ell^2)), times a channel correlation, plus `nugget` I.

    `channel_corr` is the correlation of every pair of channels, or None for three channels with
    unequal correlations [[1, .8, .3], [.8, 1, .5], [.3, .5, 1]] (grey and colour differences
    then correlate, as in natural images)."""
    ii, jj = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    pos = torch.stack([ii.flatten(), jj.flatten()], 1).double()
    K = amp * torch.exp(-((pos[:, None] - pos[None]) ** 2).sum(-1) / (2 * ell ** 2))
    if channel_corr is None:
        if C != 3:
            raise ValueError(f"channel_corr=None is the three-channel correlation; got C = {C}")
        Cc = torch.tensor([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]], dtype=torch.float64)
    else:
        Cc = (channel_corr * torch.ones(C, C, dtype=torch.float64)
              + (1 - channel_corr) * torch.eye(C, dtype=torch.float64))
    return torch.kron(Cc, K) + nugget * torch.eye(C * H * W, dtype=torch.float64)


def random_covariance(dim, generator=None, min_eig=0.05, max_eig=1.0):
    """A random SPD matrix with eigenvalues spread log-uniformly in [min_eig, max_eig]."""
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    u = torch.rand(dim, generator=generator, dtype=torch.float64)
    eig = min_eig * (max_eig / min_eig) ** u
    return q @ torch.diag(eig) @ q.T
