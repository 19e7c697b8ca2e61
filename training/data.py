"""Datasets for training and evaluation, read from standard files without a network.

`load_dataset(config, split)` returns a `torch.utils.data.Dataset` of `(image, label)` with
`image` a float32 tensor [C, H, W] in [0, 1] (neither dequantized nor centred) at
`config.data.image_size` and `config.data.num_channels`; `.levels` is the number of pixel values
(256 for 8-bit sources, 17 for DIGITS at its native 8x8, None when unknown), `.get_batch(idx)`
gathers a batch. The training pipeline
(`training.pipeline`) applies random flips, uniform dequantization and the data scaler as
`config.data` says.

Sources, by `config.data.dataset` (case-insensitive):

  DIGITS   scikit-learn's bundled 8x8 handwritten digits (1797 images, 17 grey levels),
           offline; split 'train' = the first 1497, 'test' = the last 300.
  MNIST    the idx files `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`.
  CIFAR10  the *binary* release `cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin`
           (the python release is pickled and is never read here).
           MNIST and CIFAR10 download themselves when not found (training/download.py:
           published checksums, atomic extraction) into `data_dir`, default
           ~/.cache/score-sde; `config.data.download = False` turns that off.
  FOLDER   an image folder (PNG/JPEG/BMP/...; `<path>/<split>/` if that exists, else `<path>`;
           images in sub-folders get the sub-folder's index as label).
  NPZ      an `.npz` file with an `images` array ([N, H, W], [N, H, W, C] or [N, C, H, W],
           uint8 in 0..255 or float in [0, 1]; channels last unless the shape can only be
           channels first) and optional `labels`; `<split>_images` /
           `<split>_labels` take precedence when present.

Where files are looked for: `data_dir` if given, else `config.data.path` / `config.data.data_dir`
when set, else `$SCORE_SDE_DATA/<name>` and `./data/<name>`.
"""

import gzip
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sde_base.fileio import numpy_file

DATA_ENV = "SCORE_SDE_DATA"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageArrayDataset(torch.utils.data.Dataset):
    """Images held in one tensor [N, C, H, W] (uint8 in 0..255, or float in [0, 1]) with labels."""

    def __init__(self, images, labels=None, name="dataset", levels=None):
        if images.dim() != 4:
            raise ValueError(f"{name}: images must have shape [N, C, H, W], "
                             f"got {tuple(images.shape)}")
        self.images = images
        self.labels = (torch.zeros(len(images), dtype=torch.long) if labels is None
                       else torch.as_tensor(labels, dtype=torch.long).reshape(-1))
        if len(self.labels) != len(images):
            raise ValueError(f"{name}: {len(images)} images but {len(self.labels)} labels")
        self.name = name
        # Pixel values per channel (for bits/dim): 256 for uint8 data, else as the source says.
        self.levels = 256 if images.dtype == torch.uint8 else levels

    def __len__(self):
        return self.images.shape[0]

    def _to_float(self, x):
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    def __getitem__(self, i):
        return self._to_float(self.images[i]), int(self.labels[i])

    def get_batch(self, indices):
        """Images [len(indices), C, H, W] in [0, 1] and labels, gathered in one go."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return self._to_float(self.images[indices]), self.labels[indices]


# ----------------------------------------------------------------------------- errors

class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are missing; the message says which, where, and how to get them."""


def _missing(name, files, places, how):
    places = "\n".join(f"  - {p}" for p in places)
    raise DatasetNotFoundError(
        f"{name}: cannot find {', '.join(files)}.\nLooked in:\n{places}\n{how}\n"
        f"Pass --data-dir, set config.data.path, or set ${DATA_ENV} to the folder holding them.")


def _candidate_dirs(config, data_dir, name, subdirs=()):
    """Folders to look in, in order of preference."""
    roots = []
    if data_dir is not None:
        roots.append(Path(data_dir))
    for key in ("path", "data_dir"):
        value = config.data.get(key, None) if hasattr(config.data, "get") else None
        if value:
            roots.append(Path(value))
    if not roots:
        env = os.environ.get(DATA_ENV)
        if env:
            roots += [Path(env) / name, Path(env)]
        roots += [Path("data") / name, Path("data")]
    out = []
    for r in roots:
        out.append(r)
        out += [r / s for s in subdirs]
    seen, unique = set(), []
    for d in out:
        key = str(d)
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def _find(dirs, stems):
    """The first folder holding every file in `stems` (each possibly with a .gz suffix)."""
    for d in dirs:
        found = []
        for s in stems:
            for cand in (d / s, d / (s + ".gz")):
                if cand.is_file():
                    found.append(cand)
                    break
        if len(found) == len(stems):
            return found
    return None


def _download(config, name, data_dir, stems, subdirs):
    """The files `stems` of dataset `name` after `training.download.ensure_dataset` fetched
    them into `data_dir` (default ~/.cache/score-sde), or None when config.data.download is
    False. Failures (offline, checksum) raise DatasetNotFoundError saying what to put where."""
    if not config.data.get("download", True):
        return None
    from training.download import DownloadError, ensure_dataset
    try:
        folder = ensure_dataset(name, data_dir=data_dir)
    except DownloadError as e:
        raise DatasetNotFoundError(str(e)) from None
    return _find([folder / s for s in subdirs], stems)


def _read_bytes(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read()


# ----------------------------------------------------------------------------- sources

def _digits(config, split, data_dir):
    from sklearn.datasets import load_digits  # bundled with scikit-learn; no download
    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # 17 levels -> [0, 1]
    labels = torch.from_numpy(d.target.astype(np.int64))
    sel = slice(0, 1497) if split == "train" else slice(1497, None)
    return images[sel], labels[sel]


def read_idx(path):
    """An array from an idx(.gz) file (the MNIST format: magic, dims, big-endian data)."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic number {raw[:4]!r})")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown idx data type 0x{raw[2]:02x}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise ValueError(f"{path}: header says {dims} = {math.prod(dims)} values, "
                         f"file holds {data.size}")
    return data.reshape(dims)


def _mnist(config, split, data_dir):
    prefix = "train" if split == "train" else "t10k"
    stems = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    dirs = _candidate_dirs(config, data_dir, "mnist", subdirs=("mnist", "MNIST", "MNIST/raw"))
    found = _find(dirs, stems) or _download(config, "MNIST", data_dir, stems, ("",))
    if found is None:
        _missing("MNIST", [s + "[.gz]" for s in stems], dirs,
                 "Get them from http://yann.lecun.com/exdb/mnist/ (or any mirror of the four "
                 "idx files, e.g. https://ossci-datasets.s3.amazonaws.com/mnist/).")
    images = torch.from_numpy(read_idx(found[0]).copy())[:, None]
    labels = torch.from_numpy(read_idx(found[1]).astype(np.int64))
    return images, labels


def _cifar10(config, split, data_dir):
    stems = ([f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train"
             else ["test_batch.bin"])
    dirs = _candidate_dirs(config, data_dir, "cifar10",
                           subdirs=("cifar-10-batches-bin", "cifar10/cifar-10-batches-bin"))
    found = _find(dirs, stems) or _download(config, "CIFAR10", data_dir, stems,
                                            ("cifar-10-batches-bin",))
    if found is None:
        _missing("CIFAR10", stems, dirs,
                 "Get the CIFAR-10 *binary version* (cifar-10-binary.tar.gz) from "
                 "https://www.cs.toronto.edu/~kriz/cifar.html and extract it; the python version "
                 "is pickled and is not read by this toolkit.")
    images, labels = [], []
    for path in found:
        raw = np.frombuffer(_read_bytes(path), dtype=np.uint8)
        if raw.size % 3073:
            raise ValueError(f"{path}: size {raw.size} is not a multiple of 3073 bytes "
                             "(1 label byte + 3x32x32 pixels); is it the CIFAR-10 binary version?")
        rec = raw.reshape(-1, 3073)
        labels.append(rec[:, 0].astype(np.int64))
        images.append(rec[:, 1:].reshape(-1, 3, 32, 32))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _folder(config, split, data_dir):
    from PIL import Image
    dirs = _candidate_dirs(config, data_dir, "images")
    root = next((d for d in dirs if d.is_dir()), None)
    if root is None:
        _missing("FOLDER", ["an image folder"], dirs,
                 "Put PNG/JPEG images in a folder (optionally in one sub-folder per class).")
    if (root / split).is_dir():
        root = root / split
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetNotFoundError(f"FOLDER: no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    classes = sorted({p.parent.relative_to(root).as_posix() for p in files})
    class_index = {c: i for i, c in enumerate(classes)}
    mode = "L" if config.data.num_channels == 1 else "RGB"
    size = config.data.image_size
    images = torch.empty(len(files), config.data.num_channels, size, size, dtype=torch.uint8)
    for i, p in enumerate(files):
        with Image.open(p) as im:
            im = im.convert(mode)
            w, h = im.size
            c = min(w, h)  # centre crop to a square, then resize
            im = im.crop(((w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c))
            if c != size:
                im = im.resize((size, size), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8)
        images[i] = torch.from_numpy(arr.reshape(size, size, -1).transpose(2, 0, 1).copy())
    labels = torch.tensor([class_index[p.parent.relative_to(root).as_posix()] for p in files])
    return images, labels


def _npz(config, split, data_dir):
    dirs = _candidate_dirs(config, data_dir, "npz")
    path = next((d for d in dirs if d.is_file() and d.suffix == ".npz"), None)
    if path is None:
        path = next((d / f"{split}.npz" for d in dirs if (d / f"{split}.npz").is_file()), None)
    if path is None:
        _missing("NPZ", [f"an .npz file (or <dir>/{split}.npz)"], dirs,
                 "Save one with numpy.savez(path, images=uint8 [N, H, W, C] array, labels=...).")
    with numpy_file(path) as z:
        key = f"{split}_images" if f"{split}_images" in z.files else "images"
        if key not in z.files:
            raise KeyError(f"{path}: no 'images' (or '{split}_images') array; it holds {z.files}")
        images = z[key]
        lkey = f"{split}_labels" if f"{split}_labels" in z.files else "labels"
        labels = z[lkey] if lkey in z.files else None
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        n, a, b, c = images.shape  # [N, H, W, C] unless it can only be [N, C, H, W]
        square_chw = a in (1, 3, 4) and b == c and a != b
        if c in (1, 3, 4) and not square_chw:
            images = images.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"{path}: '{key}' must have shape [N, H, W], [N, H, W, C] or "
                         f"[N, C, H, W], got {images.shape}")
    if images.dtype == np.uint8:
        t = torch.from_numpy(np.ascontiguousarray(images))
    else:
        t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise ValueError(f"{path}: float images must lie in [0, 1], got range "
                             f"[{float(t.min())}, {float(t.max())}]; or store uint8 0..255")
    return t, (None if labels is None else torch.from_numpy(np.asarray(labels).astype(np.int64)))


SOURCES = {"DIGITS": _digits, "MNIST": _mnist, "CIFAR10": _cifar10, "FOLDER": _folder,
           "IMAGEFOLDER": _folder, "NPZ": _npz}

# Datasets of the original release that need TensorFlow Datasets or TFRecords there.
NO_LOADER = ("CELEBA", "LSUN", "FFHQ", "CELEBAHQ", "SVHN")


def _fit(images, config, name):
    """Match config.data.num_channels (grey <-> RGB only where lossless) and image_size."""
    c = config.data.num_channels
    if images.shape[1] != c:
        if images.shape[1] == 1 and c == 3:
            images = images.expand(-1, 3, -1, -1)
        else:
            raise ValueError(f"{name} images have {images.shape[1]} channels but "
                             f"config.data.num_channels = {c}")
    size = config.data.image_size
    if images.shape[-2:] != (size, size):
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"{name} images are {tuple(images.shape[-2:])}, not square; "
                             f"crop them or use the FOLDER loader, which centre-crops")
        uint8 = images.dtype == torch.uint8
        x = images.float() / (255.0 if uint8 else 1.0)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=size < images.shape[-1]).clamp(0, 1)
        images = (x * 255).round().to(torch.uint8) if uint8 else x
    return images.contiguous()


def load_dataset(config, split="train", data_dir=None):
    """The dataset `config.data.dataset` as a Dataset of (float [C, H, W] in [0, 1], label)."""
    if split not in ("train", "test", "eval", "validation"):
        raise ValueError(f"split must be 'train' or 'test' (or 'eval'/'validation'), got {split!r}")
    split = "train" if split == "train" else "test"
    name = str(config.data.dataset).upper().replace("-", "").replace("_", "")
    if name in NO_LOADER:
        raise NotImplementedError(
            f"config.data.dataset = {config.data.dataset!r} has no built-in loader here (the "
            f"original read it through TensorFlow Datasets/TFRecords). Export the images to a "
            f"folder or an .npz file (array 'images', uint8 [N, H, W, C]) and set "
            f"config.data.dataset = 'FOLDER' or 'NPZ' and config.data.path to it "
            f"(--config.data.dataset=NPZ --config.data.path=/path/to/file.npz).")
    if name not in SOURCES:
        raise ValueError(f"unknown config.data.dataset {config.data.dataset!r}; known: "
                         f"{sorted(set(SOURCES) - {'IMAGEFOLDER'})}")
    images, labels = SOURCES[name](config, split, data_dir)
    native = images.shape[-2:]
    images = _fit(images, config, name)
    # DIGITS holds the 17 grey levels k/16 (while not resized); uint8 sources hold 256.
    levels = 17 if name == "DIGITS" and images.shape[-2:] == native else None
    return ImageArrayDataset(images, labels, name=f"{name}/{split}", levels=levels)


# ----------------------------------------------------------------------------- transforms

def get_data_scaler(config):
    """[0, 1] -> the model's range: x -> 2x - 1 when config.data.centered, else identity."""
    return (lambda x: x * 2.0 - 1.0) if config.data.centered else (lambda x: x)


def get_data_inverse_scaler(config):
    """The model's range -> [0, 1]: the inverse of `get_data_scaler`."""
    return (lambda x: (x + 1.0) / 2.0) if config.data.centered else (lambda x: x)


def uniform_dequantize(x, generator=None):
    """(255 x + u) / 256 with u ~ U[0, 1): 8-bit values spread over their bins, range [0, 1)."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x * 255.0 + u) / 256.0


def random_flip(x, generator=None):
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
