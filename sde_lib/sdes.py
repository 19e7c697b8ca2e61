"""The SDE interface of Song et al. (ICLR 2021), the reverse-time SDE, and the registry of SDEs.

Each SDE dx = f(x, t) dt + g(t) dw (Eq. 5) here is linear in x, so its perturbation kernel
p_0t(x(t) | x(0)) is N(alpha(t) x(0), sigma(t)^2 I): an SDE class gives `alpha(t)`, `sigma(t)`,
`sde`, `prior_sampling`, `prior_logp` and `T`, and everything else the toolkit asks of an SDE is
built here from those: `marginal_prob`, the log-SNR and its inverse, the Euler-Maruyama
`discretize`, the reverse-time SDE (Eq. 6) and probability-flow ODE (Eq. 13) of `reverse`, a
description for saving and rebuilding, and the same SDE with another N (`with_steps`).

An SDE is one file (sde_lib/ve.py, vp.py, subvp.py, cosine_vp.py, edm.py): a subclass registered
by name with `@register_sde("name")`, which `get_sde(config)` and the command line's `--sde` read.
What a subclass declares beside its maths:

    config_fields   {constructor parameter: config field} (each also an attribute of that
                    name): what `get_sde` reads, `describe` records and `with_steps` rebuilds
    noise_labels    'sigma' (VE-type: a network takes sigma(t) and outputs the score) or 'time'
                    (VP-type: it takes the time label and predicts the noise); networks.score
    discrete_model  None, 'smld' (NCSN's noise levels) or 'ddpm': the discrete model the SDE
                    is the limit of, which gives the discrete loss, the discrete network labels
                    and the discrete reverse-diffusion / ancestral steps; with it come
                    `discrete_label`, `discrete_kernel` and `level_coefficients`
    original_denoising   True for the original's SDEs (VE, VP, sub-VP): the ODE sampler's
                    final noise-free step is the original's reverse-diffusion step of length
                    T/N, kept for equal numbers; False (the default): Tweedie's posterior mean
                    E[x(0) | x(eps)], which that step approximates only when T/N is about eps
    training_eps, sampling_eps, likelihood_eps   default time limits: training draws
                    t ~ U[training_eps, T], samplers stop at sampling_eps (1e-5 for VE, 1e-3
                    for VP and sub-VP, the original's), the likelihood integrates from
                    likelihood_eps (1e-5)
"""

import abc
import math

import torch

from sde_base.registry import Registry


def expand_to(v, x):
    """Reshape a per-sample tensor `v` of shape [B] to broadcast against `x` of shape [B, ...]."""
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim()))


def standard_normal_logp(z, scale=1.0):
    """log N(z; 0, scale^2 I) summed over all but the batch dimension: [B]."""
    d = z[0].numel()
    return (-0.5 * d * math.log(2 * math.pi * scale ** 2)
            - z.flatten(1).pow(2).sum(1) / (2 * scale ** 2))


class SDE(abc.ABC):
    """A forward SDE on [0, T] with N discretisation steps (see the module docstring)."""

    name = None
    config_fields = {}
    noise_labels = "time"
    discrete_model = None
    original_denoising = False
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
    def alpha(self, t):
        """alpha(t) ([B]): the mean of the perturbation kernel is alpha(t) x(0)."""

    @abc.abstractmethod
    def sigma(self, t):
        """sigma(t) ([B]): the std of the perturbation kernel."""

    @abc.abstractmethod
    def prior_sampling(self, shape, generator=None, device=None, dtype=torch.float32):
        """A draw from the prior p_T, approximately the marginal at t = T."""

    @abc.abstractmethod
    def prior_logp(self, z):
        """log p_T(z) in nats, summed over all but the batch dimension: [B]."""

    # ------------------------------------------------------------------ the kernel

    def coefficients(self, t):
        """(alpha(t), sigma(t)), [B] each: the kernel N(alpha(t) x(0), sigma(t)^2 I). A linear
        SDE's probability-flow ODE, Tweedie's denoiser and every fast sampler need only these."""
        return self.alpha(t), self.sigma(t)

    def marginal_prob(self, x, t):
        """Mean alpha(t) x and std sigma(t) ([B]) of the perturbation kernel p_0t(x(t) | x(0) = x)."""
        self.check_time(x, t)
        alpha, sigma = self.coefficients(t)
        return expand_to(alpha, x) * x, sigma

    def log_snr(self, t):
        """lambda(t) = log(alpha(t) / sigma(t)), half the log signal-to-noise ratio (DPM-Solver's
        lambda; Lu et al. 2022, Sec. 3.1), decreasing in t."""
        alpha, sigma = self.coefficients(t)
        return torch.log(alpha) - torch.log(sigma)

    def t_of_log_snr(self, lam):
        """The time t in [0, T] with log_snr(t) = lam (the inverse of `log_snr`). Here by
        bisection in float64; an SDE with a closed form overrides it."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        a = torch.zeros_like(lam)
        b = torch.full_like(lam, float(self.T))
        for _ in range(100):
            mid = 0.5 * (a + b)
            above = self.log_snr(mid) > lam
            a = torch.where(above, mid, a)
            b = torch.where(above, b, mid)
        return 0.5 * (a + b)

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

    # ------------------------------------------------------------------ discretisation

    def discretize(self, x, t):
        """Euler-Maruyama discretisation x_{i+1} = x_i + f_i + G_i z_i with dt = T / N."""
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def timestep(self, t):
        """Index i in {0, ..., N-1} of the discrete noise level at time t (the original's rounding)."""
        return (t * ((self.N - 1) / self.T)).long()

    def level_coefficients(self, t):
        """(alpha_t, sigma_t, alpha_s, sigma_s), [B] each: the kernel at the discrete level of t
        and at the next lower one (the ancestral predictor's step). Here the continuous kernel
        at t and at max(t - T/N, 0); a discrete model overrides it with its own levels."""
        s = (t - self.T / self.N).clamp(min=0)
        return (*self.coefficients(t), *self.coefficients(s))

    def discrete_label(self, t):
        """The label a network trained on the discrete model sees at time t (`discrete_model`)."""
        raise ValueError(f"{type(self).__name__} has no discrete model (no noise labels); use "
                         f"continuous time")

    def discrete_kernel(self, labels):
        """(alpha_i, sigma_i) of the discrete model's kernel at integer labels [B]."""
        raise ValueError(f"{type(self).__name__} has no discrete model (no noise labels); use "
                         f"continuous time")

    def with_steps(self, N):
        """This SDE with N discretisation steps (itself if N already matches): its discrete
        tables (noise levels, betas) are rebuilt for N, so that each step of a discretised
        predictor spans one level."""
        N = int(N)
        if N == self.N:
            return self
        return type(self)(**self.params(), N=N)

    # ------------------------------------------------------------------ name and description

    def params(self):
        """The constructor's parameters besides N (`config_fields`), as plain numbers."""
        return {p: getattr(self, p) for p in self.config_fields}

    def describe(self):
        """A plain dict that rebuilds this SDE (`sde_from_description`): name, params, N."""
        if self.name is None:
            raise ValueError(f"cannot describe {type(self).__name__}: it is not registered "
                             f"(sde_lib.register_sde); known: {', '.join(SDES.names())}")
        return {"name": self.name, **self.params(), "N": self.N}

    @classmethod
    def from_config(cls, config):
        """The SDE with the parameters `config_fields` names and N = config.model.num_scales."""
        kwargs = {p: config_field(config, f) for p, f in cls.config_fields.items()}
        return cls(**kwargs, N=config_field(config, "model.num_scales"))

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

    def _no_kernel(self, *args):
        raise NotImplementedError("a reverse-time SDE has no perturbation kernel; use the forward SDE's")

    alpha = sigma = marginal_prob = _no_kernel

    def prior_sampling(self, shape, generator=None, device=None, dtype=torch.float32):
        return self.forward.prior_sampling(shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z):
        return self.forward.prior_logp(z)


# ----------------------------------------------------------------------------- the registry

SDES = Registry("SDE")


def register_sde(name, cls=None, *, replace=False):
    """Register an SDE subclass under `name` (usable as a class decorator) and set its `name`:
    `get_sde`, `sde_from_description` and the command line's `--sde` then know it."""

    def add(cls):
        if not (isinstance(cls, type) and issubclass(cls, SDE)):
            raise TypeError(f"register_sde takes an SDE subclass, got {cls!r}")
        SDES.register(name, cls, replace=replace)
        cls.name = name
        return cls

    return add if cls is None else add(cls)


def sde_names():
    return SDES.names()


def config_field(config, path):
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
    """The SDE named by `config.training.sde` (any registered name, case-insensitive), built by
    its `from_config` from the fields it declares (`config.model.sigma_min`/`sigma_max` for VE,
    `beta_min`/`beta_max` for VP and sub-VP) and N = `config.model.num_scales`."""
    try:
        sde = config_field(config, "training.sde")
    except ValueError as e:
        raise ValueError(f"{e}: it names the SDE, one of {', '.join(sde_names())}") from None
    name = str(sde).lower()
    if name not in SDES:
        raise ValueError(f"unknown SDE {sde!r} in config.training.sde; known: "
                         f"{', '.join(sde_names())}")
    return SDES.get(name).from_config(config)


def sde_from_description(description):
    """The SDE a `SDE.describe()` dict describes."""
    d = dict(description)
    name = d.pop("name", None)
    if not isinstance(name, str) or name not in SDES:
        raise ValueError(f"unknown SDE {name!r}; known: {', '.join(sde_names())}")
    return SDES.get(name)(**d)

