"""Sample-quality metrics: FID, Inception Score and KID.

Two layers:

* `fidelity_metrics`: FID / IS / KID with the standard Inception-v3 features through the optional
  package torch-fidelity (`pip install "score-sde-toolkit[metrics]"`). Inputs are converted here to
  what torch-fidelity expects: uint8 [3, H, W] images in 0..255, grey images repeated to 3 channels.
* Plain statistics on *any* features, no torch-fidelity needed: `feature_statistics`,
  `frechet_distance` (Heusel et al. 2017), `polynomial_mmd2` / `kernel_distance` (the unbiased MMD^2
  of KID, Binkowski et al. 2018) and `classifier_score` (the Inception Score formula on any
  classifier's probabilities, Salimans et al. 2016). `evaluation.digits_features` uses them with a
  small classifier trained on the built-in digits, which needs no download; `evaluation.inception`
  is the FID Inception-v3 itself in plain torch (torch-fidelity's weights file, no torchvision).

FID depends on the sample count (it is biased upward for small counts), the reference set and the
seed, so every result dict here carries them.
"""

import math
import os
import socket
import urllib.error
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from configs import resolve_device
from evaluation.inception import WEIGHTS_ENV, WEIGHTS_FILE, WEIGHTS_URL, load_weights, weights_help

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
NPZ_KEYS = ("samples", "images", "arr_0")  # looked up in this order in an .npz file

# torch-fidelity's Inception-v3: the TensorFlow FID network ported to PyTorch (1008-class head).
# The file, where to get it, and the environment variable naming it: `evaluation.inception`.
INCEPTION_WEIGHTS_FILE = WEIGHTS_FILE
INCEPTION_WEIGHTS_URL = WEIGHTS_URL
INCEPTION_WEIGHTS_ENV = WEIGHTS_ENV
INSTALL_HINT = ('pip install "score-sde-toolkit[metrics]"   (or: pip install torch-fidelity torchvision, '
                "with a torchvision built for your torch version)")


# ----------------------------------------------------------------------------- images to uint8 RGB

def check_float_range(x, name="images"):
    """Float images must lie in [0, 1] (up to what clipping should fix); say what to do if not."""
    lo, hi = float(x.min()), float(x.max())
    if lo < -0.5 or hi > 1.5:
        raise ValueError(
            f"{name}: float images must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]. Map model "
            f"outputs to [0, 1] first (the data inverse scaler: (x + 1) / 2 for centred data) or "
            f"pass uint8 images in 0..255.")


def as_nchw(images, name="images"):
    """A numpy array or tensor [N, H, W], [N, C, H, W] or [N, H, W, C] (C in {1, 3}) -> a CPU
    tensor [N, C, H, W], dtype unchanged; a clear error for other shapes or an empty batch."""
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images).detach().cpu()
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() == 4 and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected grey or RGB images [N, H, W], [N, C, H, W] or [N, H, W, C] "
                         f"with 1 or 3 channels, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: no images")
    return x


def to_uint8_rgb(images, *, rounding="round", name="images"):
    """Images -> uint8 tensor [N, 3, H, W] in 0..255, as torch-fidelity's Inception expects.

    Accepts a numpy array or tensor [N, H, W], [N, C, H, W] or [N, H, W, C] with C in {1, 3}:
    uint8 (or integers in 0..255) as they are, floats in [0, 1] scaled by 255 (values just outside
    [0, 1], as samplers give, are clipped). `rounding='round'` rounds to the nearest level;
    `rounding='floor'` truncates, the rule of the original score_sde evaluation
    (`np.clip(x * 255, 0, 255).astype(np.uint8)`). Both give back u exactly for 8-bit data stored
    as u / 255. Grey images are repeated to 3 channels.
    """
    if rounding not in ("round", "floor"):
        raise ValueError(f"rounding must be 'round' or 'floor', got {rounding!r}")
    x = as_nchw(images, name)
    if x.dtype == torch.uint8:
        pass
    elif x.dtype == torch.bool:
        raise ValueError(f"{name}: boolean images are not supported; pass uint8 or float in [0, 1]")
    elif x.is_floating_point():
        x = x.double()
        check_float_range(x, name)
        x = x.clamp(0.0, 1.0) * 255.0
        x = (x.round() if rounding == "round" else x.floor()).to(torch.uint8)
    else:  # other integer types: must already be 8-bit levels
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{name}: integer images must lie in 0..255, got range [{lo}, {hi}]")
        x = x.to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def _read_image_file(path):
    """One image file -> uint8 [3, H, W] (PIL converts grey, palette and RGBA to RGB)."""
    from PIL import Image
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def _npz_images(path):
    from sde_base.fileio import numpy_file
    with numpy_file(path) as z:
        keys = list(z.files)
        key = next((k for k in NPZ_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise KeyError(f"{path}: no image array; expected one of {list(NPZ_KEYS)} (or a single "
                           f"array), found {keys}")
        return z[key]


class UInt8ImageDataset(torch.utils.data.Dataset):
    """uint8 [3, H, W] image tensors, one per item: the input torch-fidelity takes.

    Backed by a tensor [N, 3, H, W] (`images`), a list of image files read lazily (`files`), or
    another dataset whose items are images or (image, label) pairs (`dataset`, converted per item
    with `to_uint8_rgb`). `description` says where the images came from.
    """

    def __init__(self, *, images=None, files=None, dataset=None, rounding="round", description=""):
        if sum(v is not None for v in (images, files, dataset)) != 1:
            raise ValueError("give exactly one of images, files, dataset")
        self.images, self.files, self.dataset = images, files, dataset
        self.rounding = rounding
        self.description = description
        self._size = None

    def __len__(self):
        if self.images is not None:
            return self.images.shape[0]
        return len(self.files) if self.files is not None else len(self.dataset)

    def __getitem__(self, i):
        if self.images is not None:
            return self.images[i]
        if self.files is not None:
            x = _read_image_file(self.files[i])
        else:
            item = self.dataset[i]
            item = item[0] if isinstance(item, (tuple, list)) else item
            x = to_uint8_rgb(torch.as_tensor(item)[None], rounding=self.rounding,
                             name=self.description)[0]
        size = tuple(x.shape[-2:])
        if self._size is None:
            self._size = size
        elif size != self._size:
            where = self.files[i] if self.files is not None else f"item {i}"
            raise ValueError(f"{self.description}: {where} is {size[0]}x{size[1]} but earlier "
                             f"images are {self._size[0]}x{self._size[1]}; all images must share "
                             f"one size")
        return x


def image_dataset(source, *, rounding="round", name="images"):
    """Any image source -> `UInt8ImageDataset`.

    `source`: a folder of images (PNG/JPEG/...; searched recursively, sorted by path), an `.npz`
    file (array `samples`, `images` or `arr_0`, or its only array), an `.npy` file, a numpy array
    or tensor (see `to_uint8_rgb`), or a `torch.utils.data.Dataset` of images or (image, label)
    pairs, e.g. `training.data.load_dataset(config, 'train')`.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise FileNotFoundError(f"{name}: no images ({', '.join(IMAGE_SUFFIXES)}) under {path}")
            return UInt8ImageDataset(files=[str(f) for f in files], description=f"folder {path}")
        if path.is_file() and path.suffix == ".npz":
            return UInt8ImageDataset(images=to_uint8_rgb(_npz_images(path), rounding=rounding, name=str(path)),
                                     description=f"npz {path}")
        if path.is_file() and path.suffix == ".npy":
            from sde_base.fileio import numpy_file
            with numpy_file(path) as arr:
                arr = np.asarray(arr)
            return UInt8ImageDataset(images=to_uint8_rgb(arr, rounding=rounding, name=str(path)),
                                     description=f"npy {path}")
        if not path.exists():
            raise FileNotFoundError(f"{name}: {path} does not exist")
        raise ValueError(f"{name}: {path} is neither a folder of images nor an .npz/.npy file")
    if isinstance(source, UInt8ImageDataset):
        return source
    if isinstance(source, (np.ndarray, torch.Tensor)):
        x = to_uint8_rgb(source, rounding=rounding, name=name)
        return UInt8ImageDataset(images=x, description=f"{name} array {list(x.shape)}")
    if isinstance(source, torch.utils.data.Dataset):
        if len(source) == 0:
            raise ValueError(f"{name}: the dataset is empty")
        label = getattr(source, "name", type(source).__name__)
        return UInt8ImageDataset(dataset=source, rounding=rounding, description=f"dataset {label}")
    raise TypeError(f"{name}: expected a folder, an .npz/.npy file, an array/tensor or a Dataset, "
                    f"got {type(source).__name__}")


def load_images(source, *, rounding="round", name="images"):
    """Any source accepted by `image_dataset`, read in full: uint8 tensor [N, 3, H, W]."""
    ds = image_dataset(source, rounding=rounding, name=name)
    if ds.images is not None:
        return ds.images
    return torch.stack([ds[i] for i in range(len(ds))])


# ----------------------------------------------------------------------------- statistics on features

def _as_features(f, name):
    f = torch.as_tensor(np.asarray(f) if not torch.is_tensor(f) else f).detach().cpu().double()
    if f.dim() != 2:
        raise ValueError(f"{name}: features must have shape [N, D], got {tuple(f.shape)}")
    if not torch.isfinite(f).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return f


def feature_statistics(features):
    """Mean [D] and unbiased covariance [D, D] (divisor N - 1) of features [N, D], float64 numpy."""
    f = _as_features(features, "features").numpy()
    if f.shape[0] < 2:
        raise ValueError(f"feature_statistics needs at least 2 samples, got {f.shape[0]}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _clip_roundoff(w):
    """Eigenvalues of a PSD matrix with those at round-off level (below d * eps * max) set to 0:
    their square roots would otherwise add up to a visible error (sqrt(1e-16) = 1e-8 each)."""
    tol = w.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), 1e-300)
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(cov):
    """Symmetric square root of a symmetric PSD matrix."""
    w, v = scipy.linalg.eigh(cov)
    return (v * np.sqrt(_clip_roundoff(w))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2):
    """Squared Frechet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2):

        d^2 = |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^{1/2})     (Heusel et al. 2017, Eq. 6)

    tr (cov1 cov2)^{1/2} is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix S cov2 S with S = cov1^{1/2}, which has the same spectrum as cov1 cov2. This avoids
    the complex parts and the eps-regularisation retries that `scipy.linalg.sqrtm(cov1 @ cov2)`
    needs on near-singular covariances (fewer samples than feature dimensions).
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    cov1, cov2 = (np.atleast_2d(np.asarray(c, dtype=np.float64)) for c in (cov1, cov2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"frechet_distance: shapes do not match: mu1 {mu1.shape}, cov1 {cov1.shape}, "
                         f"mu2 {mu2.shape}, cov2 {cov2.shape}")
    for name, a in (("mu1", mu1), ("cov1", cov1), ("mu2", mu2), ("cov2", cov2)):
        if not np.isfinite(a).all():
            raise ValueError(f"frechet_distance: {name} contains NaN or inf")
    cov1, cov2 = (cov1 + cov1.T) / 2, (cov2 + cov2.T) / 2
    s1 = _psd_sqrt(cov1)
    eig = scipy.linalg.eigvalsh(s1 @ cov2 @ s1)
    tr_sqrt = np.sqrt(_clip_roundoff(eig)).sum()
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)
    return max(value, 0.0)  # a squared distance: a negative value is round-off


def fid_from_features(features1, features2):
    """Frechet distance between the Gaussians fitted to two feature sets [N1, D], [N2, D]."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def polynomial_kernel(x, y, *, degree=3, gamma=None, coef0=1.0):
    """k(x, y) = (gamma <x, y> + coef0)^degree, gamma = 1 / D by default (KID's kernel)."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (gamma * (x @ y.T) + coef0) ** degree


def polynomial_mmd2(features1, features2, *, degree=3, gamma=None, coef0=1.0):
    """Unbiased estimate of MMD^2 between two feature sets [m, D] and [n, D] (m, n >= 2):

        sum_{i!=j} k(x_i, x_j) / (m (m-1)) + sum_{i!=j} k(y_i, y_j) / (n (n-1)) - 2 sum_{i,j} k(x_i, y_j) / (m n)

    with the polynomial kernel (Binkowski et al. 2018, "Demystifying MMD GANs", Eq. 3); it can be
    negative when the two distributions are close. Float64.
    """
    x, y = _as_features(features1, "features1"), _as_features(features2, "features2")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"polynomial_mmd2 needs at least 2 samples per set, got {m} and {n}")
    kw = dict(degree=degree, gamma=gamma, coef0=coef0)
    kxx, kyy, kxy = polynomial_kernel(x, x, **kw), polynomial_kernel(y, y, **kw), polynomial_kernel(x, y, **kw)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def kernel_distance(features1, features2, *, subsets=100, subset_size=1000, degree=3, gamma=None,
                    coef0=1.0, generator=None):
    """KID on any features: `polynomial_mmd2` averaged over `subsets` random pairs of subsets of
    `subset_size` (capped at the smaller set) drawn without replacement. Returns (mean, std).

    `generator`: a torch.Generator for the subset draws; by default one seeded with 0, so the
    result is reproducible.
    """
    x, y = _as_features(features1, "features1"), _as_features(features2, "features2")
    size = min(int(subset_size), x.shape[0], y.shape[0])
    if size < 2:
        raise ValueError(f"kernel_distance needs at least 2 samples per set, got {x.shape[0]} and {y.shape[0]}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    values = []
    for _ in range(subsets):
        ix = torch.randperm(x.shape[0], generator=g)[:size]
        iy = torch.randperm(y.shape[0], generator=g)[:size]
        values.append(polynomial_mmd2(x[ix], y[iy], degree=degree, gamma=gamma, coef0=coef0))
    values = np.asarray(values)
    return float(values.mean()), float(values.std())


def classifier_score(probs, *, splits=1):
    """The Inception Score formula on any classifier: exp(E_x KL(p(y|x) || p(y))) with p(y) the
    mean of p(y|x) over the split (Salimans et al. 2016). Between 1 and the number of classes;
    `probs` [N, K] rows sum to 1. Returns (mean, std) over `splits` equal parts.
    """
    p = _as_features(probs, "probs")
    if (p < 0).any() or not torch.allclose(p.sum(1), torch.ones(p.shape[0], dtype=p.dtype), atol=1e-4):
        raise ValueError("classifier_score: probs must be non-negative with rows summing to 1")
    if not 1 <= splits <= p.shape[0]:
        raise ValueError(f"splits must lie in 1..{p.shape[0]}, got {splits}")
    scores = []
    for part in torch.tensor_split(p, splits):
        py = part.mean(0, keepdim=True)
        kl = torch.where(part > 0, part * (part.clamp_min(1e-300).log() - py.clamp_min(1e-300).log()),
                         torch.zeros_like(part)).sum(1)
        scores.append(math.exp(float(kl.mean())))
    scores = np.asarray(scores)
    return float(scores.mean()), float(scores.std())


# ----------------------------------------------------------------------------- torch-fidelity

def _import_torch_fidelity():
    try:
        import torch_fidelity
    except ImportError as e:
        raise ImportError(
            f"FID/IS/KID with Inception features need the optional package torch-fidelity, which is "
            f"not installed ({e}). Install it with:\n    {INSTALL_HINT}\n"
            f"Without it: `python -m sde_lib.run metrics --extractor inception` (the same "
            f"Inception-v3 in plain torch, given its weights file); offline and for the built-in "
            f"digits, evaluation.digits_features gives a Frechet/kernel distance in the features "
            f"of a small digits classifier.") from e
    return torch_fidelity


def check_inception_weights(path):
    """Check that `path` holds the FID Inception-v3 state dict and nothing else
    (`evaluation.inception.load_weights`: every key and shape, `weights_only=True`), so a file
    of arbitrary pickled objects is refused before torch-fidelity (which unpickles it in full)
    sees it, and torchvision's 1000-class ImageNet Inception-v3 is named as such."""
    load_weights(path)
    return Path(path)


def _is_network_error(e):
    while e is not None:
        if isinstance(e, (urllib.error.URLError, ConnectionError, TimeoutError, socket.gaierror)):
            return True
        e = e.__cause__ or e.__context__
    return False


FIDELITY_KEYS = {"frechet_inception_distance": "fid", "inception_score_mean": "isc_mean",
                 "inception_score_std": "isc_std", "kernel_inception_distance_mean": "kid_mean",
                 "kernel_inception_distance_std": "kid_std"}


def fidelity_metrics(samples, reference=None, *, fid=True, isc=True, kid=True, inception_weights=None,
                     batch_size=64, device=None, kid_subset_size=1000, kid_subsets=100, isc_splits=10,
                     seed=2020, rounding="round", verbose=False, **fidelity_kwargs):
    """FID, Inception Score and KID of `samples` against `reference` with torch-fidelity.

    samples, reference: anything `image_dataset` takes (image folder, .npz/.npy file, array/tensor,
      Dataset such as `training.data.load_dataset(config, 'train')`); float images in [0, 1] or
      uint8. The reference is needed for FID and KID. The paper's protocol: 50k samples against the
      training set.
    inception_weights: path to the FID Inception weights (INCEPTION_WEIGHTS_FILE); default
      $SCORE_SDE_INCEPTION_WEIGHTS, else torch-fidelity's download cache (downloaded if absent).
    kid_subset_size: capped at the smaller set's size; the value used is returned.
    seed: torch-fidelity's `rng_seed` (KID subsets); 2020 is its default.
    fidelity_kwargs: passed on to `torch_fidelity.calculate_metrics`.

    Returns a dict: `fid`, `isc_mean`, `isc_std`, `kid_mean`, `kid_std` (those computed), and how
    they were computed: `num_samples`, `num_reference`, `samples`, `reference` (descriptions),
    `kid_subset_size`, `kid_subsets`, `isc_splits`, `seed`, `rounding`, `feature_extractor`,
    `inception_weights`.
    """
    if not (fid or isc or kid):
        raise ValueError("fidelity_metrics: nothing to compute (fid, isc and kid are all False)")
    if (fid or kid) and reference is None:
        raise ValueError("fidelity_metrics: FID and KID need a reference (image folder, .npz file "
                         "or dataset); pass reference=..., or only isc=True")
    tf = _import_torch_fidelity()

    weights = inception_weights or os.environ.get(INCEPTION_WEIGHTS_ENV) or None
    if weights is not None:
        weights = str(check_inception_weights(weights))

    input1 = image_dataset(samples, rounding=rounding, name="samples")
    input2 = image_dataset(reference, rounding=rounding, name="reference") if (fid or kid) else None
    n1, n2 = len(input1), (len(input2) if input2 is not None else None)
    subset = min(int(kid_subset_size), n1, n2) if kid else int(kid_subset_size)
    if isc and n1 < isc_splits:
        raise ValueError(f"the Inception Score with isc_splits={isc_splits} needs at least that many "
                         f"samples, got {n1}")
    if kid and subset < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {n1} samples and {n2} reference images")
    device = torch.device(resolve_device("auto" if device is None else device))

    kwargs = dict(input1=input1, cuda=device.type == "cuda", batch_size=batch_size, isc=isc, fid=fid,
                  kid=kid, feature_extractor_weights_path=weights, kid_subset_size=subset,
                  kid_subsets=kid_subsets, isc_splits=isc_splits, rng_seed=seed, verbose=verbose)
    if input2 is not None:
        kwargs["input2"] = input2
    kwargs.update(fidelity_kwargs)
    try:
        raw = tf.calculate_metrics(**kwargs)
    except Exception as e:
        if weights is None and _is_network_error(e):
            raise RuntimeError(f"torch-fidelity could not download the Inception-v3 weights ({e}); "
                               f"offline, give a local copy. " + weights_help()) from e
        raise

    out = {FIDELITY_KEYS.get(k, k): float(v) if isinstance(v, (int, float)) else v for k, v in raw.items()}
    out.update(
        num_samples=n1, num_reference=n2, samples=input1.description,
        reference=input2.description if input2 is not None else None,
        kid_subset_size=subset if kid else None, kid_subsets=kid_subsets if kid else None,
        isc_splits=isc_splits if isc else None, seed=seed, rounding=rounding,
        feature_extractor=f"inception-v3-compat (torch-fidelity {getattr(tf, '__version__', '?')})",
        inception_weights=weights or f"torch-fidelity default ({INCEPTION_WEIGHTS_FILE})")
    return out
