"""Time-dependent (noise-conditional) classifiers p_t(c | x(t)) for class-conditional sampling
(Song et al. 2021, Sec. 5 and App. I.1), and their checkpoint files.

The classifier sees data perturbed as the score model's training does, x(t) = alpha(t) x(0) +
sigma(t) z, scaled by 1 / sqrt(alpha^2 + sigma^2) so that its input stays of order one for every
SDE (the VE SDE's x(T) has std sigma_max): `classifier_logits(model, sde, x, t)`.

    model = NoiseConditionalClassifier((2,), num_classes=2)
    save_classifier("clf.pt", model, sde)                # atomic
    model, sde, extra = load_classifier("clf.pt")        # tensors and plain data only

Training: `training.classifier.train_classifier`. Guidance gradient:
`solvers.conditional.classifier_grad_fn`.
"""

import math
import os
import pickle

import torch
import torch.nn as nn

from sde_lib import expand_to, sde_from_description as _rebuild
from sde_base.fileio import save_torch

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
    """The classifier's logits for x(t): model(x / sqrt(alpha(t)^2 + sigma(t)^2), t), with
    alpha, sigma the perturbation kernel's coefficients (`sde.coefficients`)."""
    alpha, sigma = sde.coefficients(t)
    return model(x / expand_to(torch.sqrt(alpha ** 2 + sigma ** 2), x), t)


# ----------------------------------------------------------------------------- checkpoints

def sde_description(sde):
    """A plain dict that rebuilds `sde` (`SDE.describe`; `sde_from_description`)."""
    return sde.describe()


def sde_from_description(d):
    try:
        return _rebuild(d)
    except ValueError as e:
        raise ValueError(f"{e} (the SDE of the classifier checkpoint)") from None


def save_classifier(path, model, sde, extra=None):
    """Write the classifier (config, weights, SDE, `extra` plain data) to `path` atomically."""
    path = os.fspath(path)
    ckpt = {"format": FORMAT, "config": dict(model.config), "sde": sde_description(sde),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "extra": {} if extra is None else extra}
    save_torch(ckpt, path)
    return path


def _read(path, map_location):
    """The file's dict, read as tensors and plain containers only (weights_only=True). Any
    failure, an object that would need unpickling included, is reported as "not a classifier
    checkpoint" (never PyTorch's advice to load it with weights_only=False)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, IndexError,
            TypeError, AttributeError, UnicodeDecodeError, OSError) as e:
        kind = ("it holds objects other than tensors and plain data, which are never unpickled"
                if "weights only" in str(e).lower() else
                "it is truncated, corrupt or not a PyTorch file")
        raise ValueError(f"{path} is not a noise-conditional classifier checkpoint: it cannot be "
                         f"read ({kind}; {type(e).__name__})") from None


def load_classifier(path, map_location="cpu"):
    """(model, sde, extra) from a file written by `save_classifier` (weights_only loading;
    missing or mismatched weights are an error)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"classifier checkpoint {path!r} does not exist")
    ckpt = _read(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a noise-conditional classifier checkpoint (format "
                         f"{found!r}, expected {FORMAT!r})")
    try:
        cfg = ckpt["config"]
        model = NoiseConditionalClassifier(cfg["event_shape"], cfg["num_classes"],
                                           width=cfg["width"], n_freq=cfg["n_freq"])
        sde = sde_from_description(ckpt["sde"])
        state = ckpt["state_dict"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: classifier checkpoint lacks {e} (format {FORMAT})") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{path}: classifier weights do not fit its config: {e}") from None
    if missing or unexpected:
        raise ValueError(f"{path}: classifier weights do not fit its config: missing "
                         f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
    return model.eval(), sde, ckpt.get("extra", {})
