"""Training objectives: denoising score matching for any SDE, and the discrete SMLD and DDPM losses.

All three are plain functions of a model (or score) function, an SDE and a batch [B, ...]. The
random draws (times or noise labels, and the Gaussian noise z) are taken from `generator`, or
passed in explicitly (`t=`/`labels=`, `z=`) so that a data-parallel run can draw them once for the
global batch and give each process its slice (see `TrainingLoss.draw`).

`reduce_mean=True` averages the squared error over the data dimensions, `False` takes half its
sum (the original's two conventions); the result is then averaged over the batch unless
`batch_mean=False`, which returns the per-sample losses [B].
"""

import torch

from likelihood.importance import ImportanceTime
from networks import get_score_fn, network_fn
from networks.runtime import RuntimeOptions
from sde_lib import expand_to
from training.objectives import objective_from_config, register_objective


def _reduce(sq, reduce_mean):
    """Per-sample reduction of a squared error [B, ...]: mean, or half the sum, over dims."""
    sq = sq.reshape(sq.shape[0], -1)
    return sq.mean(1) if reduce_mean else 0.5 * sq.sum(1)


def _normal(batch, generator):
    return torch.randn(batch.shape, generator=generator, device=batch.device, dtype=batch.dtype)


def dsm_loss(score_fn, sde, batch, *, reduce_mean=False, likelihood_weighting=False, eps=None,
             t=None, z=None, generator=None, batch_mean=True, importance_sampling=False):
    """Denoising score matching (Eq. 7) with t ~ U[eps, T] and x(t) = mean + std z:

        lambda(t) || s(x(t), t) - grad log p_0t(x(t) | x(0)) ||^2,  grad log p_0t = -z / std,

    with lambda(t) = std(t)^2 (the paper's weighting), or g(t)^2 with `likelihood_weighting`
    (Song et al. 2021, "Maximum likelihood training of score-based diffusion models").
    `importance_sampling`: t has density proportional to g^2 / std^2 on [eps, T]
    (`likelihood.importance.ImportanceTime`; drawn here unless t is given) and each loss is
    multiplied by 1 / ((T - eps) density(t)), so the expectation is that of uniform t.
    eps defaults to the SDE's `training_eps` (1e-5)."""
    if eps is None:
        eps = sde.training_eps
    B = batch.shape[0]
    proposal = ImportanceTime(sde, eps) if importance_sampling else None
    if t is None and proposal is not None:
        t = proposal.sample(B, generator=generator, device=batch.device, dtype=batch.dtype)
    elif t is None:
        u = torch.rand(B, generator=generator, device=batch.device, dtype=batch.dtype)
        t = u * (sde.T - eps) + eps
    if z is None:
        z = _normal(batch, generator)
    mean, std = sde.marginal_prob(batch, t)
    std_x = expand_to(std, batch)
    score = score_fn(mean + std_x * z, t)
    if likelihood_weighting:
        g2 = sde.sde(torch.zeros_like(batch), t)[1] ** 2
        losses = _reduce((score + z / std_x) ** 2, reduce_mean) * g2
    else:
        losses = _reduce((score * std_x + z) ** 2, reduce_mean)
    if proposal is not None:
        losses = losses * proposal.weight(t)
    return losses.mean() if batch_mean else losses


def _discrete_draws(sde, model, batch, labels, z, generator):
    """The noise labels i ~ U{0..N-1} and z ~ N(0, I) of a discrete loss (given ones kept), after
    checking that `sde` has the discrete `model` ('smld' for SMLD, 'ddpm' for DDPM)."""
    if sde.discrete_model != model:
        raise TypeError(f"the {model.upper()} loss needs an SDE whose discrete model is "
                        f"{model!r} ({'VESDE' if model == 'smld' else 'VPSDE'}), got "
                        f"{type(sde).__name__}")
    if labels is None:
        labels = torch.randint(0, sde.N, (batch.shape[0],), generator=generator,
                               device=batch.device)
    return labels, _normal(batch, generator) if z is None else z


def smld_sigmas(vesde):
    """The SMLD (NCSN) noise levels in the models' label order: label 0 is the largest sigma."""
    return vesde.discrete_kernel(torch.arange(vesde.N))[1]


def smld_loss(model_fn, vesde, batch, *, reduce_mean=False, labels=None, z=None, generator=None,
              batch_mean=True):
    """NCSN's loss (Song & Ermon 2019): with label i ~ U{0..N-1}, sigma = smld_sigmas[i],

        sigma^2 || model_fn(x + sigma z, i) + z / sigma ||^2,

    the network taking the integer noise label (largest noise first)."""
    labels, z = _discrete_draws(vesde, "smld", batch, labels, z, generator)
    sigmas = smld_sigmas(vesde).to(batch.device, batch.dtype)[labels]
    sig = expand_to(sigmas, batch)
    score = model_fn(batch + sig * z, labels)
    losses = _reduce((score + z / sig) ** 2, reduce_mean) * sigmas ** 2
    return losses.mean() if batch_mean else losses


def ddpm_loss(model_fn, vpsde, batch, *, reduce_mean=True, labels=None, z=None, generator=None,
              batch_mean=True):
    """DDPM's simple loss (Ho et al. 2020, Eq. 14): with i ~ U{0..N-1},

        || model_fn(sqrt(abar_i) x + sqrt(1 - abar_i) z, i) - z ||^2,

    the network predicting the noise z (so the score is -output / sqrt(1 - abar_i))."""
    labels, z = _discrete_draws(vpsde, "ddpm", batch, labels, z, generator)
    a, s = (expand_to(v.to(batch.device, batch.dtype), batch)
            for v in vpsde.discrete_kernel(labels))
    losses = _reduce((model_fn(a * batch + s * z, labels) - z) ** 2, reduce_mean)
    return losses.mean() if batch_mean else losses


@register_objective("dsm")
def dsm_objective(score_fn, x, t_or_labels, *, sde=None, sigmas=None, reduce_mean=False,
                  weighting="sigma2", z=None, generator=None, batch_mean=True):
    """DSM in `training.objectives`' calling convention (registered there as 'dsm'): float
    times t -> `dsm_loss` (weighting 'sigma2' or 'likelihood'); integer labels of an SDE with
    SMLD levels (VE) -> `smld_loss` with `score_fn(x, labels)`."""
    if sigmas is not None:
        raise ValueError("the 'dsm' objective takes its noise levels from the sde, not sigmas=")
    if weighting not in ("sigma2", "likelihood"):
        raise ValueError(f"the 'dsm' objective supports weighting 'sigma2' or 'likelihood', "
                         f"got {weighting!r}")
    if torch.is_floating_point(t_or_labels):
        return dsm_loss(score_fn, sde, x, reduce_mean=reduce_mean,
                        likelihood_weighting=weighting == "likelihood", t=t_or_labels, z=z,
                        generator=generator, batch_mean=batch_mean)
    if weighting != "sigma2":
        raise ValueError("likelihood weighting needs float times t, not integer labels")
    return smld_loss(score_fn, sde, x, reduce_mean=reduce_mean, labels=t_or_labels, z=z,
                     generator=generator, batch_mean=batch_mean)


class TrainingLoss:
    """The loss a config asks for, as `loss(model, batch, noise)`; `draw` makes the noise.

    kind: 'dsm' (continuous), 'smld' (discrete VE) or 'ddpm' (discrete VP). `objective`: another
    score-matching objective of `training.objectives` (sliced / exact score matching) in place
    of DSM, applied at the same random times ('dsm') or noise labels ('smld'); its own random
    projections come from the generator passed to the call."""

    def __init__(self, sde, kind, reduce_mean=False, likelihood_weighting=False, eps=None,
                 objective=None, network_options=None, importance_sampling=False):
        if kind not in ("dsm", "smld", "ddpm"):
            raise ValueError(f"unknown loss kind {kind!r}")
        if kind != "dsm" and sde.discrete_model != kind:
            raise ValueError(f"discrete ({kind.upper()}) training needs the "
                             f"{'VE' if kind == 'smld' else 'VP'} SDE (an SDE whose discrete model "
                             f"is {kind!r}), got {type(sde).__name__}")
        if likelihood_weighting and kind != "dsm":
            raise ValueError("likelihood weighting needs continuous training "
                             "(config.training.continuous = True)")
        if importance_sampling and kind != "dsm":
            raise ValueError("importance sampling of t needs continuous training "
                             "(config.training.continuous = True)")
        if objective is not None and kind == "ddpm":
            raise ValueError("score-matching objectives other than DSM need continuous training "
                             "or the VE SDE's noise labels, not DDPM's noise prediction")
        self.sde, self.kind = sde, kind
        self.reduce_mean = bool(reduce_mean)
        self.likelihood_weighting = bool(likelihood_weighting)
        self.eps = sde.training_eps if eps is None else float(eps)
        self.importance = ImportanceTime(sde, self.eps) if importance_sampling else None
        self.objective = objective
        # How to call the network (networks.RuntimeOptions.score_options(): precision,
        # channels_last); the loss itself is always computed in the data's dtype.
        self.network_options = dict(network_options or {})

    def score_fn(self, model):
        return get_score_fn(self.sde, model, continuous=True, **self.network_options)

    def model_fn(self, model):
        return network_fn(model, **self.network_options) if self.network_options else model

    def draw(self, shape, generator=None, device=None, dtype=torch.float32):
        """The random inputs for a batch of `shape`: {'t' or 'labels': [B], 'z': shape}."""
        B = shape[0]
        if self.importance is not None:
            first = ("t", self.importance.sample(B, generator=generator, device=device,
                                                 dtype=dtype))
        elif self.kind == "dsm":
            first = ("t", torch.rand(B, generator=generator, device=device, dtype=dtype)
                     * (self.sde.T - self.eps) + self.eps)
        else:
            first = ("labels", torch.randint(0, self.sde.N, (B,), generator=generator,
                                             device=device))
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return dict([first, ("z", z)])

    def __call__(self, model, batch, noise=None, generator=None, batch_mean=True):
        noise = {} if noise is None else noise
        if self.objective is not None:
            if not noise:
                noise = self.draw(batch.shape, generator=generator, device=batch.device,
                                  dtype=batch.dtype)
            if self.kind == "dsm":
                fn, cond = self.score_fn(model), noise["t"]
            else:
                fn, cond = self.model_fn(model), noise["labels"]
            if self.importance is None:
                return self.objective(fn, batch, cond, sde=self.sde, z=noise["z"],
                                      generator=generator, batch_mean=batch_mean)
            losses = self.objective(fn, batch, cond, sde=self.sde, z=noise["z"],
                                    generator=generator, batch_mean=False)
            losses = losses * self.importance.weight(cond)
            return losses.mean() if batch_mean else losses
        if self.kind == "dsm":
            return dsm_loss(self.score_fn(model), self.sde, batch, reduce_mean=self.reduce_mean,
                            likelihood_weighting=self.likelihood_weighting, eps=self.eps,
                            generator=generator, batch_mean=batch_mean,
                            importance_sampling=self.importance is not None, **noise)
        fn = smld_loss if self.kind == "smld" else ddpm_loss
        return fn(self.model_fn(model), self.sde, batch, reduce_mean=self.reduce_mean,
                  generator=generator, batch_mean=batch_mean, **noise)


def get_loss_fn(config, sde):
    """The training loss of `config.training` (continuous, reduce_mean, likelihood_weighting,
    importance_sampling, objective): DSM when continuous, else the SDE's discrete model's loss
    (`discrete_model`: SMLD for VE, DDPM for VP; sub-VP, cosine VP and EDM have none);
    `training.objective` = 'ssm' / 'ssm_vr' / 'exact_sm' swaps DSM for another
    score-matching objective of `training.objectives`. The network runs as `config.runtime`
    says (precision, channels_last)."""
    tr = config.training
    continuous = bool(tr.get("continuous", True))
    kind = "dsm" if continuous else sde.discrete_model
    if kind is None:
        raise ValueError(f"discrete training (config.training.continuous = False) needs an SDE "
                         f"with a discrete model (VE: SMLD, VP: DDPM), not {type(sde).__name__}")
    objective = None
    if str(tr.get("objective", "dsm")).lower() != "dsm":
        objective = objective_from_config(config)
    options = RuntimeOptions.from_config(config).score_options()
    if options == {"precision": "fp32", "channels_last": False}:
        options = None
    return TrainingLoss(sde, kind, reduce_mean=tr.get("reduce_mean", False),
                        likelihood_weighting=tr.get("likelihood_weighting", False),
                        eps=tr.get("eps", None), objective=objective, network_options=options,
                        importance_sampling=bool(tr.get("importance_sampling", False)))

