"""Time-dependent (noise-conditional) classifiers p_t(c | x(t)) for class-conditional sampling
(Song et al. 2021, Sec. 5 and App. I.1).

The classifier sees data perturbed exactly as the score model's training does: x(t) = alpha(t)
x(0) + sigma(t) z with t ~ U[eps, T] (`sde.marginal_prob`), and is trained with cross-entropy on
the labels of x(0). Its input is scaled by 1 / sqrt(alpha^2 + sigma^2) so that it stays of order
one for every SDE (the VE SDE's x(T) has std sigma_max).

    model, history = train_classifier(sde, images, labels, steps=2000, generator=g)
    save_classifier("clf.pt", model, sde)                # atomic; loads with weights_only=True
    model, sde, extra = load_classifier("clf.pt")
    grad_fn = classifier_grad_fn(model, sde)              # grad_x log p_t(labels | x)
    solvers.class_conditional(score_fn, sde, shape, grad_fn, labels=3, scale=1.0)

`mixture_classifier_grad_fn(dist, sde)` is the exact classifier of a Gaussian mixture (classes =
components): log p_t(k | x) = log w_k N_k,t(x) - log sum_j w_j N_j,t(x) from `sde_lib.oracle`.
"""

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from sde_lib import SDES, VESDE, expand_to
from sde_lib.sdes import _BetaSchedule
from solvers.common import coefficients, progress_bar

FORMAT = "noise_conditional_classifier/1"


class NoiseConditionalClassifier(nn.Module):
    """Logits c(x, t) [B, num_classes] for x [B, *event_shape] and t [B]: an MLP for vectors
    (event_shape of length 1), a small conv net with global pooling for images [C, H, W]. Time
    enters through fixed Fourier features of t added after the first layer."""

    def __init__(self, event_shape, num_classes, width=64, n_freq=8):
        super().__init__()
        event_shape = tuple(int(s) for s in event_shape)
        if len(event_shape) not in (1, 3) or min(event_shape) < 1:
            raise ValueError(f"event_shape must be (D,) or (C, H, W), got {event_shape}")
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.config = {"event_shape": list(event_shape), "num_classes": int(num_classes),
                       "width": int(width), "n_freq": int(n_freq)}
        self.event_shape, self.num_classes = event_shape, int(num_classes)
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freq, dtype=torch.float32),
                             persistent=False)
        self.time = nn.Sequential(nn.Linear(2 * n_freq, width), nn.SiLU(), nn.Linear(width, width))
        if len(event_shape) == 1:
            self.inp = nn.Linear(event_shape[0], width)
            self.body = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                      nn.Linear(width, width), nn.SiLU())
        else:
            self.inp = nn.Conv2d(event_shape[0], width, 3, padding=1)
            self.body = nn.Sequential(
                nn.SiLU(), nn.Conv2d(width, width, 3, padding=1, stride=2), nn.SiLU(),
                nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out = nn.Linear(width, num_classes)

    def forward(self, x, t):
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"classifier input must have shape [B, *{list(self.event_shape)}], "
                             f"got {list(x.shape)}")
        angles = t.to(x.dtype)[:, None] * self.freqs.to(x.dtype)
        temb = self.time(torch.cat([angles.sin(), angles.cos()], 1))
        h = self.inp(x)
        h = h + (temb if h.dim() == 2 else temb[:, :, None, None])
        return self.out(self.body(h))


def classifier_logits(model, sde, x, t):
    """The classifier's logits for x(t): model(x / sqrt(alpha(t)^2 + sigma(t)^2), t)."""
    alpha, sigma = coefficients(sde, t)
    return model(x / expand_to(torch.sqrt(alpha ** 2 + sigma ** 2), x), t)


def perturb(sde, x0, generator=None, eps=None):
    """(x(t), t) with t ~ U[eps, T] and x(t) = alpha x0 + sigma z: the score model's noising."""
    eps = sde.training_eps if eps is None else float(eps)
    t = eps + (sde.T - eps) * torch.rand(x0.shape[0], generator=generator,
                                         device=x0.device if generator is None else
                                         generator.device).to(x0)
    z = torch.randn(x0.shape, generator=generator,
                    device=x0.device if generator is None else generator.device).to(x0)
    mean, std = sde.marginal_prob(x0, t)
    return mean + expand_to(std, x0) * z, t


def train_classifier(sde, images, labels, *, num_classes=None, model=None, steps=2000,
                     batch_size=128, lr=2e-3, width=64, eps=None, generator=None, device=None,
                     progress=False):
    """Train a NoiseConditionalClassifier on (images [N, ...], labels [N]) perturbed by `sde`
    (t ~ U[eps, T], eps default sde.training_eps) with Adam and cross-entropy. `images` must be
    in the score model's data range. Returns (model, history) with history['loss'] per step.
    The same generator seed gives the same model (initialisation included)."""
    images = torch.as_tensor(images)
    labels = torch.as_tensor(labels)
    if images.dim() < 2 or labels.shape != (images.shape[0],):
        raise ValueError(f"need images [N, ...] and labels [N]; got {tuple(images.shape)} and "
                         f"{tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    n_cls = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.min() < 0 or labels.max() >= n_cls:
        raise ValueError(f"labels must lie in [0, {n_cls - 1}], got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    device = torch.device("cpu") if device is None else torch.device(device)
    images = images.to(device=device, dtype=torch.float32)
    labels = labels.to(device=device, dtype=torch.long)
    if model is None:
        seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = NoiseConditionalClassifier(images.shape[1:], n_cls, width=width)
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = {"loss": []}
    bar = progress_bar(steps, progress, desc="classifier")
    for _ in range(int(steps)):
        idx = torch.randint(images.shape[0], (min(batch_size, images.shape[0]),),
                            generator=generator).to(device)
        xt, t = perturb(sde, images[idx], generator=generator, eps=eps)
        loss = F.cross_entropy(classifier_logits(model, sde, xt, t), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history["loss"].append(float(loss.detach()))
        bar.update()
    bar.close()
    return model.eval(), history


@torch.no_grad()
def classifier_accuracy(model, sde, images, labels, t, generator=None):
    """Accuracy of the classifier on images perturbed to the time(s) t (a float or [N])."""
    images = torch.as_tensor(images, dtype=torch.float32)
    t = torch.as_tensor(t, dtype=images.dtype).expand(images.shape[0]).clone()
    z = torch.randn(images.shape, generator=generator).to(images)
    mean, std = sde.marginal_prob(images, t)
    xt = mean + expand_to(std, images) * z
    pred = classifier_logits(model, sde, xt, t).argmax(1)
    return float((pred == torch.as_tensor(labels)).float().mean())


class _GradFn:
    """grad_x log p_t(labels | x) ([B, ...]) of log-probabilities log_probs(x, t) [B, K]."""

    def __init__(self, log_probs, num_classes):
        self.log_probs = log_probs
        self.num_classes = int(num_classes)

    def __call__(self, x, t, labels):
        labels = torch.as_tensor(labels, device=x.device).long().expand(x.shape[0])
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logp = self.log_probs(xg, t)
            chosen = logp.gather(1, labels[:, None]).sum()
            grad, = torch.autograd.grad(chosen, xg)
        return grad.to(x.dtype)


def classifier_grad_fn(model, sde):
    """grad_fn(x, t, labels) = grad_x log p_t(labels | x) of a trained classifier (autograd);
    grad_fn.num_classes is its class count."""
    model.eval()
    return _GradFn(lambda x, t: F.log_softmax(classifier_logits(model, sde, x, t), 1),
                   model.num_classes)


def mixture_classifier_grad_fn(dist, sde):
    """The exact grad_x log p_t(k | x) of a `sde_lib.oracle.GaussianMixture` whose components
    are the classes: the responsibilities of the perturbed mixture at time t."""
    marginal = dist.marginal(sde)

    def log_probs(x, t):
        alpha, sigma = marginal.coefficients(t)
        return torch.log_softmax(dist.component_log_probs(x, alpha, sigma), 1)

    return _GradFn(log_probs, dist.num_components)


# ----------------------------------------------------------------------------- checkpoints

def sde_description(sde):
    """A plain dict that rebuilds `sde` (`sde_from_description`)."""
    if isinstance(sde, VESDE):
        return {"name": "vesde", "sigma_min": sde.sigma_min, "sigma_max": sde.sigma_max,
                "N": sde.N}
    if isinstance(sde, _BetaSchedule):
        name = {v: k for k, v in SDES.items()}.get(type(sde))
        if name is not None:
            return {"name": name, "beta_min": sde.beta_0, "beta_max": sde.beta_1, "N": sde.N}
    raise ValueError(f"cannot describe SDE {type(sde).__name__}; known: {sorted(SDES)}")


def sde_from_description(d):
    d = dict(d)
    name = d.pop("name", None)
    if name not in SDES:
        raise ValueError(f"unknown SDE {name!r} in the classifier checkpoint; known: {sorted(SDES)}")
    return SDES[name](**d)


def save_classifier(path, model, sde, extra=None):
    """Write the classifier (config, weights, SDE, `extra` plain data) to `path` atomically."""
    path = os.fspath(path)
    ckpt = {"format": FORMAT, "config": dict(model.config), "sde": sde_description(sde),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "extra": {} if extra is None else extra}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


def load_classifier(path, map_location="cpu"):
    """(model, sde, extra) from a file written by `save_classifier` (weights_only loading;
    missing or mismatched weights are an error)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"classifier checkpoint {path!r} does not exist")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a noise-conditional classifier checkpoint (format "
                         f"{ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r}"
                         f", expected {FORMAT!r})")
    cfg = ckpt["config"]
    model = NoiseConditionalClassifier(cfg["event_shape"], cfg["num_classes"],
                                       width=cfg["width"], n_freq=cfg["n_freq"])
    try:
        missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{path}: classifier weights do not fit its config: {e}") from None
    if missing or unexpected:
        raise ValueError(f"{path}: classifier weights do not fit its config: missing "
                         f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
    return model.eval(), sde_from_description(ckpt["sde"]), ckpt.get("extra", {})
