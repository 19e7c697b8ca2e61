"""An offline feature extractor for the built-in digits, and FID/KID/IS analogues in its features.

The Inception network of FID needs a download and sees 8x8 digits as a few blurry pixels. For the
built-in dataset (scikit-learn's 8x8 digits, `training.data` DIGITS) a small CNN classifier is
trained here on the training part (the first 1497 images; the last 300 are held out), on CPU in
seconds, deterministically from a seed, and cached. Its penultimate layer (64 ReLU units) plays the
role of Inception's pool3 features:

    digits_fid(samples)              Frechet distance to the digits training set in these features
    digits_kid(samples)              the unbiased polynomial-kernel MMD^2 (KID) in these features
    digits_classifier_stats(samples) predicted-class histogram, mean max-probability, and the
                                     Inception-Score formula on the classifier ("do these look like
                                     digits, and of all ten kinds?")
    digits_metrics(samples)          all of the above with how they were computed

Values are comparable only between runs with the same classifier: the result dicts carry its seed,
held-out accuracy and a fingerprint of its weights. Images: [N, 8, 8], [N, 1, H, W] or
[N, 3, H, W] (grey taken as the channel mean), float in [0, 1] or uint8, or an image folder /
.npz file; sizes other than 8x8 (e.g. the 16x16 of the digits configs) are area-resized to 8x8.

Cache: $SCORE_SDE_CACHE, else $XDG_CACHE_HOME/score_sde_toolkit, else ~/.cache/score_sde_toolkit.
`python benchmarks/digits_features.py` trains (or loads) the classifier and prints reference figures.
"""

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from evaluation.metrics import (as_nchw, check_float_range, classifier_score, fid_from_features,
                              kernel_distance, load_images)
from sde_base.fileio import save_torch

CACHE_ENV = "SCORE_SDE_CACHE"
NUM_TRAIN = 1497  # training.data's DIGITS split: the first 1497 images train, the last 300 test
FORMAT_VERSION = 1
DEFAULT_EPOCHS = 30


class DigitsClassifier(nn.Module):
    """8x8 grey digit -> 10 logits; `features` gives the 64-d penultimate layer (after ReLU),
    times `feature_scale`, set after training so that the features' mean square on the training
    images is 1 (the scale KID's kernel (x.y / d + 1)^3 assumes)."""

    def __init__(self, width=32, feature_dim=64, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * 16, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.register_buffer("feature_scale", torch.ones(()))
        self.info = {}

    def penultimate(self, x):
        """x: [B, 1, 8, 8] in [0, 1] -> the unscaled penultimate activations [B, feature_dim]."""
        h = F.relu(self.conv1(x * 2.0 - 1.0))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # 8x8 -> 4x4
        h = F.relu(self.conv3(h))
        return F.relu(self.fc(h.flatten(1)))

    def features(self, x):
        """The features of the metrics: `penultimate(x) * feature_scale`."""
        return self.penultimate(x) * self.feature_scale

    def forward(self, x):
        return self.head(self.penultimate(x))


# ----------------------------------------------------------------------------- data

def digits_images(split="train"):
    """The built-in digits as float [N, 1, 8, 8] in [0, 1] (17 grey levels 0..16 / 16) and labels."""
    from sklearn.datasets import load_digits
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    y = torch.from_numpy(d.target.astype(np.int64))
    sel = {"train": slice(0, NUM_TRAIN), "test": slice(NUM_TRAIN, None), "all": slice(None)}[split]
    return x[sel], y[sel]


def prepare_digits(images, name="images"):
    """Any image source -> float32 [N, 1, 8, 8] in [0, 1], the classifier's input.

    Tensors/arrays: [N, H, W], [N, C, H, W] or [N, H, W, C] with C in {1, 3}; uint8 (/255) or float
    in [0, 1] (clipped). Folders and .npz files go through `evaluation.metrics.load_images`.
    Colour -> grey by the channel mean; other sizes -> 8x8 by area averaging.
    """
    if not torch.is_tensor(images) and not isinstance(images, np.ndarray):
        images = load_images(images, name=name)
    x = as_nchw(images, name)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.is_floating_point():
        check_float_range(x, name)
        x = x.float().clamp(0.0, 1.0)
    else:
        raise ValueError(f"{name}: images must be uint8 or float in [0, 1], got {x.dtype}")
    x = x.mean(1, keepdim=True)
    if tuple(x.shape[-2:]) != (8, 8):
        x = F.interpolate(x, size=(8, 8), mode="area")
    return x.contiguous()


# ----------------------------------------------------------------------------- training

def _random_shift(x, generator, max_shift=1):
    """Translate each image by up to `max_shift` pixels in x and y, zero-filled."""
    n = x.shape[0]
    p = max_shift
    padded = F.pad(x, (p, p, p, p))
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(8)[None])  # [n, 8]
    cols = (dx[:, None] + torch.arange(8)[None])
    idx = torch.arange(n)[:, None, None]
    return padded[:, 0][idx, rows[:, :, None], cols[:, None, :]][:, None]


@torch.no_grad()
def accuracy(model, images, labels):
    """Fraction of `images` whose arg-max class is `labels`."""
    model.eval()
    return float((model(prepare_digits(images)).argmax(1) == labels).double().mean())


def train_digits_classifier(seed=0, *, epochs=DEFAULT_EPOCHS, batch_size=64, lr=2e-3, width=32,
                            feature_dim=64):
    """Train `DigitsClassifier` on the digits training part (Adam, cosine-decayed learning rate,
    random 1-pixel shifts). Runs on one CPU thread (restored afterwards), so that the weights
    depend only on `seed` and the torch build, not on the thread count (a few seconds).
    Returns the model in eval mode with `.info` (seed, epochs, train/test accuracy, fingerprint).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(seed, epochs, batch_size, lr, width, feature_dim)
    finally:
        torch.set_num_threads(threads)


def _train(seed, epochs, batch_size, lr, width, feature_dim):
    x, y = digits_images("train")
    x_test, y_test = digits_images("test")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the layers' default init draws from the global RNG
        torch.manual_seed(seed)
        model = DigitsClassifier(width=width, feature_dim=feature_dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(_random_shift(x[idx], g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        model.feature_scale.fill_(float(model.penultimate(x).square().mean().rsqrt()))
    model.info = dict(seed=seed, epochs=epochs, batch_size=batch_size, lr=lr, width=width,
                      feature_dim=feature_dim, train_accuracy=accuracy(model, x, y),
                      test_accuracy=accuracy(model, x_test, y_test), num_test=len(x_test),
                      fingerprint=fingerprint(model))
    return model


def fingerprint(model):
    """First 12 hex digits of the SHA-256 of the weights: tells two classifiers apart."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


# ----------------------------------------------------------------------------- cache

def cache_dir():
    """$SCORE_SDE_CACHE, else $XDG_CACHE_HOME/score_sde_toolkit, else ~/.cache/score_sde_toolkit."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "score_sde_toolkit"


def _cache_file(directory, seed, epochs):
    return Path(directory) / f"digits_classifier_v{FORMAT_VERSION}_seed{seed}_epochs{epochs}.pt"


def _save_atomic(obj, path):
    save_torch(obj, path)


def _load_cached(path):
    from networks.checkpoint import torch_load_detail
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- one line, never the advice to load unsafely
        raise ValueError(f"{path}: not readable with weights_only=True "
                         f"({torch_load_detail(e)})") from None
    if not isinstance(blob, dict) or blob.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a digits classifier cache of format {FORMAT_VERSION}")
    info = dict(blob["info"])
    model = DigitsClassifier(width=info["width"], feature_dim=info["feature_dim"])
    model.load_state_dict(blob["state_dict"])  # strict: a mismatch is an error
    model.eval()
    if fingerprint(model) != info["fingerprint"]:
        raise ValueError(f"{path}: weights do not match their recorded fingerprint")
    model.info = info
    return model


def load_digits_classifier(seed=0, *, cache=None, epochs=DEFAULT_EPOCHS, retrain=False):
    """The digits classifier for `seed`: loaded from the cache folder (`cache`, default
    `cache_dir()`), or trained and cached (atomic write) when absent, unreadable or `retrain`.
    Loading uses weights_only=True.
    """
    path = _cache_file(cache if cache is not None else cache_dir(), seed, epochs)
    if path.is_file() and not retrain:
        try:
            return _load_cached(path)
        except Exception as e:  # noqa: BLE001 -- a broken cache is rebuilt, not fatal
            warnings.warn(f"ignoring unreadable digits classifier cache {path} ({e}); retraining")
    model = train_digits_classifier(seed, epochs=epochs)
    _save_atomic({"format_version": FORMAT_VERSION, "state_dict": model.state_dict(),
                  "info": model.info}, path)
    model.info["cache_file"] = str(path)
    return model


# ----------------------------------------------------------------------------- metrics

def _classifier(classifier):
    return load_digits_classifier() if classifier is None else classifier


@torch.no_grad()
def _outputs(images, classifier, name):
    """Features [N, D] and class probabilities [N, 10] (float64) of any image source."""
    x = prepare_digits(images, name=name)
    classifier.eval()
    feats, probs = [], []
    for chunk in torch.split(x, 1024):
        h = classifier.penultimate(chunk)
        feats.append(h * classifier.feature_scale)
        probs.append(classifier.head(h).softmax(1))
    return torch.cat(feats).double(), torch.cat(probs).double()


def digits_features(images, classifier=None):
    """Penultimate-layer features [N, 64] (float64) of the digits classifier."""
    return _outputs(images, _classifier(classifier), "images")[0]


def _reference_images(reference, size):
    """A split name -> its digits, resized to the samples' `size` the way `training.data` resizes
    DIGITS for a config with that image_size (bilinear), so that samples of a model trained at
    16x16 are compared with what it was trained on. Other references are used as given."""
    if not (isinstance(reference, str) and reference in ("train", "test", "all")):
        return reference, "given images"
    x = digits_images(reference)[0]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=size < 8).clamp(0, 1)
    return x, f"digits/{reference} ({len(x)} images{'' if size == 8 else f', resized to {size}x{size}'})"


def _sample_size(samples):
    """Side length of the sample images, as `prepare_digits` will see them (before resizing)."""
    if not torch.is_tensor(samples) and not isinstance(samples, np.ndarray):
        return None
    shape = tuple(samples.shape)
    if len(shape) == 4 and shape[1] not in (1, 3) and shape[-1] in (1, 3):
        return shape[1]
    return shape[-1]


def _pair(samples, reference, classifier):
    classifier = _classifier(classifier)
    if not torch.is_tensor(samples) and not isinstance(samples, np.ndarray):
        samples = load_images(samples, name="samples")
    ref, ref_name = _reference_images(reference, _sample_size(samples))
    f1, p1 = _outputs(samples, classifier, "samples")
    f2, _ = _outputs(ref, classifier, "reference")
    return f1, p1, f2, ref_name, classifier


def digits_fid(samples, reference="train", *, classifier=None):
    """Frechet distance between samples and `reference` ('train', 'test', 'all' or images) in the
    digits classifier's features (`evaluation.metrics.frechet_distance`)."""
    f1, _, f2, _, _ = _pair(samples, reference, classifier)
    return fid_from_features(f1, f2)


def digits_kid(samples, reference="train", *, classifier=None, subsets=100, subset_size=1000,
               generator=None):
    """KID (unbiased cubic-kernel MMD^2) in the digits classifier's features: (mean, std) over
    subsets (`evaluation.metrics.kernel_distance`)."""
    f1, _, f2, _, _ = _pair(samples, reference, classifier)
    return kernel_distance(f1, f2, subsets=subsets, subset_size=subset_size, generator=generator)


def _stats(probs):
    hist = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).double() / probs.shape[0]
    return dict(class_histogram=[round(float(v), 6) for v in hist],
                mean_max_prob=float(probs.max(1).values.mean()),
                classifier_score=classifier_score(probs)[0], num_samples=probs.shape[0])


def digits_classifier_stats(samples, *, classifier=None):
    """What the digits classifier makes of the samples:

    class_histogram  fraction of samples predicted as each digit 0..9 (about 0.1 each for the data)
    mean_max_prob    mean over samples of max_y p(y|x): near 1 for clear digits, lower for noise
    classifier_score exp(E KL(p(y|x) || p(y))), the Inception-Score formula: up to 10 for confident
                     predictions spread evenly over the ten digits
    """
    return _stats(_outputs(samples, _classifier(classifier), "samples")[1])


def digits_metrics(samples, reference="train", *, classifier=None, kid_subsets=100,
                   kid_subset_size=1000, seed=0):
    """`digits_fid`, `digits_kid` and `digits_classifier_stats` in one dict, with how they were
    computed (sample and reference counts, KID subsets and seed, the classifier's seed, held-out
    accuracy and fingerprint)."""
    f1, probs, f2, ref_name, classifier = _pair(samples, reference, classifier)
    kid_mean, kid_std = kernel_distance(f1, f2, subsets=kid_subsets, subset_size=kid_subset_size,
                                        generator=torch.Generator().manual_seed(seed))
    out = dict(digits_fid=fid_from_features(f1, f2), digits_kid_mean=kid_mean, digits_kid_std=kid_std)
    out.update(_stats(probs))
    out.update(num_reference=f2.shape[0], reference=ref_name,
               kid_subset_size=min(kid_subset_size, f1.shape[0], f2.shape[0]), kid_subsets=kid_subsets,
               seed=seed, feature_extractor=dict(
                   name="digits_classifier (penultimate layer, 64 ReLU units, scaled)",
                   **{k: classifier.info.get(k) for k in ("seed", "epochs", "test_accuracy",
                                                          "num_test", "fingerprint")}))
    return out


def _gaussian_blur(x, sigma):
    r = int(np.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
