"""Controllable generation with an unconditional score model (Song et al. 2021, Sec. 5, App. I):
inpainting, colorization and class-conditional sampling.

    res = inpaint(score_fn, sde, data, mask, steps=500, generator=g)       # res.samples
    res = colorize(score_fn, sde, gray, predictor="ancestral_sampling")
    grad_fn = classifier_grad_fn(model, sde)    # a networks.classifier.NoiseConditionalClassifier
    res = class_conditional(score_fn, sde, (64, 1, 8, 8), grad_fn, labels=3, scale=2.0)

Inpainting and colorization are the linear inverse problems of `solvers.inverse` with the
operators `Mask` and `Colorization`; every keyword of `linear_inverse` (method, noise_std, init,
sampler, predictor, corrector, steps, ...) passes through. Class-conditional sampling adds the
gradient of a time-dependent classifier to the score (Eq. 14 / App. I.1):

    grad_x log p_t(x | c) = score(x, t) + scale * grad_x log p_t(c | x),

which is a score like any other, so it works with every sampler. `classifier_grad_fn` gives
that gradient for a trained noise-conditional classifier (`networks.classifier`, trained by
`training.classifier`); `mixture_classifier_grad_fn(dist, sde)` is the exact one of a Gaussian
mixture whose components are the classes: log p_t(k | x) = log w_k N_k,t(x) - log sum_j
w_j N_j,t(x) (`sde_lib.oracle`).
"""

import torch
import torch.nn.functional as F

from networks.classifier import classifier_logits
from solvers.evaluations import check_finite
from solvers.inverse import linear_inverse, run_chunks
from solvers.operators import Colorization, Mask, check_mask
from solvers.shapes import probe_score, shape_or_type


def inpaint(score_fn, sde, data, mask, **kwargs):
    """Fill in the pixels of `data` [B, ...] where `mask` (0/1, broadcastable to data; 1 =
    known) is 0, given the known ones. Default: the paper's PC inpainter (method='projection':
    known pixels replaced by the data diffused to the current time after every predictor and
    corrector update), starting with the known pixels at their marginal at T (init='marginal';
    init='original' leaves them clean, as the original code did). The known pixels of the result
    equal `data` exactly (noiseless case). Returns SampleResult."""
    if not torch.is_tensor(data) or data.dim() < 2:
        raise ValueError(f"data must be a tensor [B, ...], got "
                         f"{shape_or_type(data)}")
    mask = check_mask(mask, data.shape).to(device=data.device, dtype=data.dtype)
    mask = mask.expand(data.shape) if mask.dim() == data.dim() and mask.shape[0] > 1 else mask
    check_finite("inpainting data", data, where=mask != 0)
    op = Mask(mask)
    return linear_inverse(score_fn, sde, op.forward(data), op, **kwargs)


def colorize(score_fn, sde, gray, **kwargs):
    """RGB images [B, 3, H, W] whose grey level (R + G + B)/3 is `gray` ([B, 1, H, W], or
    [B, 3, H, W] with three equal channels as the original takes it). Default: the paper's
    colorizer (method='projection' with the `Colorization` operator: the grey coordinate of the
    orthonormal colour basis `solvers.inverse.COLOR_BASIS` is replaced after every update, the
    two colour-difference coordinates come from the prior). Returns SampleResult."""
    if not torch.is_tensor(gray) or gray.dim() != 4 or gray.shape[1] not in (1, 3):
        raise ValueError(f"gray must be [B, 1, H, W] (or [B, 3, H, W] with equal channels), got "
                         f"{shape_or_type(gray)}")
    check_finite("the gray image", gray)
    if gray.shape[1] == 3:
        spread = (gray - gray.mean(1, keepdim=True)).abs().max()
        if spread > 1e-5 * (1 + gray.abs().max()):
            raise ValueError(f"a 3-channel gray image must have equal channels; they differ by "
                             f"up to {float(spread):.3g}")
        gray = gray.mean(1, keepdim=True)
    return linear_inverse(score_fn, sde, gray, Colorization(), **kwargs)


def check_labels(labels, batch, num_classes=None):
    """`labels` (an int, or [batch] integers) as a long tensor [batch], each in
    [0, num_classes) (or >= 0 when num_classes is unknown)."""
    t = torch.as_tensor(labels)
    if t.dtype == torch.bool or torch.is_floating_point(t) or torch.is_complex(t):
        raise ValueError(f"labels must be integers, got dtype {t.dtype}")
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"labels must be one integer or {batch} of them (one per sample), got "
                         f"shape {tuple(t.shape)}")
    hi = num_classes if num_classes is not None else None
    bad = (t < 0) | ((t >= hi) if hi is not None else torch.zeros_like(t, dtype=torch.bool))
    if bad.any():
        rng = f"[0, {hi - 1}]" if hi is not None else ">= 0"
        raise ValueError(f"labels must lie in {rng}, got {sorted(set(t[bad].tolist()))[:5]}")
    return t.long()


class _GradFn:
    """grad_x log p_t(labels | x) ([B, ...]) of log-probabilities log_probs(x, t) [B, K]."""

    def __init__(self, log_probs, num_classes):
        self.log_probs = log_probs
        self.num_classes = int(num_classes)

    def __call__(self, x, t, labels):
        labels = torch.as_tensor(labels)
        labels = check_labels(labels.reshape(()) if labels.numel() == 1 else labels,
                              x.shape[0], self.num_classes).to(x.device)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logp = self.log_probs(xg, t)
            chosen = logp.gather(1, labels[:, None]).sum()
            grad, = torch.autograd.grad(chosen, xg)
        return grad.to(x.dtype)


def classifier_grad_fn(model, sde):
    """grad_fn(x, t, labels) = grad_x log p_t(labels | x) of a trained noise-conditional
    classifier (`networks.classifier`; autograd through `classifier_logits`);
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


def class_conditional(score_fn, sde, shape, classifier_grad_fn, labels, scale=1.0, *,
                      num_classes=None, batch_size=None, generator=None, device=None,
                      dtype=torch.float32, check_shape=True, **sample_kwargs):
    """Samples of p(x | c) with score(x, t) + scale * classifier_grad_fn(x, t, labels) as the
    score, where classifier_grad_fn(x, t, labels) = grad_x log p_t(labels | x) ([B] labels) of
    a time-dependent classifier (`classifier_grad_fn(model, sde)`). scale = 1 is the exact
    conditional score; larger values sharpen towards the class. `labels`: one int or [B];
    checked against `num_classes` (default: classifier_grad_fn.num_classes when it has one,
    else its model's `num_classes`). check_shape: probe the score and the classifier gradient
    once on two samples before any work, each must return the samples' shape. Every other
    keyword goes to `solvers.sample` (any sampler, predictor, corrector). Returns
    SampleResult."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape must be (batch, *sample_shape) of positive integers, got {shape}")
    if not callable(classifier_grad_fn):
        raise TypeError(f"classifier_grad_fn must be a callable (x, t, labels) -> gradient, got "
                        f"{type(classifier_grad_fn).__name__}")
    if num_classes is None:
        num_classes = _num_classes(classifier_grad_fn)
    device = torch.device("cpu") if device is None else torch.device(device)
    labels = check_labels(labels, shape[0], num_classes).to(device)
    scale = float(scale)
    if not torch.isfinite(torch.tensor(scale)):
        raise ValueError(f"scale must be finite, got {scale!r}")
    if check_shape:
        probe_score(score_fn, sde, shape[1:], device, dtype)
        probe_score(classifier_grad_fn, sde, shape[1:], device, dtype,
                    name="classifier_grad_fn (grad_x log p_t(labels | x))",
                    extra=(labels[[0, -1]],))

    def build(sl):
        lab = labels[sl]

        def score(x, t):
            return score_fn(x, t) + scale * classifier_grad_fn(x, t, lab)

        where = generator.device if generator is not None else device
        n = lab.shape[0]
        x_init = sde.prior_sampling((n,) + shape[1:], generator=generator, device=where,
                                    dtype=dtype).to(device)
        return score, x_init, {}, None

    res = run_chunks(build, sde, shape[0], batch_size=batch_size, generator=generator,
                     **sample_kwargs)
    res.info.update({"scale": scale, "num_classes": num_classes})
    return res


def _num_classes(classifier_grad_fn):
    """The class count a classifier gradient declares (`num_classes`, or that of a `model` /
    a bound method's object it carries), else None."""
    for obj in (classifier_grad_fn, getattr(classifier_grad_fn, "model", None),
                getattr(classifier_grad_fn, "__self__", None)):
        n = getattr(obj, "num_classes", None)
        if n is not None:
            return int(n)
    return None
