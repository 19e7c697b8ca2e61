"""Training of the noise-conditional classifiers p_t(c | x(t)) used for class-conditional
sampling (Song et al. 2021, Sec. 5 and App. I.1).

The classifier sees data perturbed exactly as the score model's training does: x(t) = alpha(t)
x(0) + sigma(t) z with t ~ U[eps, T] (`sde.marginal_prob`), and is trained with cross-entropy on
the labels of x(0).

    model, history = train_classifier(sde, images, labels, steps=2000, generator=g)
    classifier_accuracy(model, sde, images, labels, t=0.05)
    networks.classifier.save_classifier("clf.pt", model, sde)
    grad_fn = solvers.conditional.classifier_grad_fn(model, sde)   # grad_x log p_t(c | x)
"""

import torch
import torch.nn.functional as F

from networks.classifier import NoiseConditionalClassifier, classifier_logits
from sde_lib import expand_to
from solvers.progress import progress_bar


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
    if not torch.isfinite(images).all():
        raise ValueError(f"images hold {int((~torch.isfinite(images)).sum())} NaN/inf values")
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
