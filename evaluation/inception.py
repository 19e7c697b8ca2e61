"""The FID Inception-v3 in plain torch (no torchvision): the TensorFlow graph of 2015-12-05 that
FID (Heusel et al. 2017) and the Inception Score (Salimans et al. 2016) are defined with, as
torch-fidelity's `FeatureExtractorInceptionV3` runs it, loading torch-fidelity's weights file.

    state = load_weights(resolve_weights_path())                 # checked keys and shapes
    pool, logits = inception_outputs(state, images_uint8_rgb)    # [N, 2048], [N, 1008]

The network is Inception-v3 (Szegedy et al. 2016, "Rethinking the Inception Architecture", Fig. 5-7
and Table 1) with the TensorFlow graph's details, each of which moves FID:
  * input: uint8 RGB of any size, resized to 299x299 by TensorFlow 1's bilinear rule (source
    coordinate i * in / out, no half-pixel centres, no antialiasing: `resize_bilinear_tf1`), then
    mapped to [-1, 1) by (x - 128) / 128;
  * every convolution is followed by batch normalisation (eps 1e-3, no conv bias) and a ReLU;
  * the 3x3 average pools of the branches average over the pixels inside the image only
    (`count_include_pad=False`), and the last block (Mixed_7c) pools its branch with a 3x3 max
    pool where Mixed_7b has the average pool;
  * the head has 1008 classes (torchvision's ImageNet model has 1000 and other weights).
Features are the 2048-d global average pool (FID, KID, precision/recall); the Inception Score
uses the softmax of the logits without the fc bias, as torch-fidelity does.
"""

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F

from networks.checkpoint import torch_load_detail

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + WEIGHTS_FILE
WEIGHTS_ENV = "SCORE_SDE_INCEPTION_WEIGHTS"
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
BN_EPS = 1e-3
BN_PARAMS = ("weight", "bias", "running_mean", "running_var")
OPTIONAL_SUFFIX = ".num_batches_tracked"  # PyTorch's BatchNorm counter; not used in evaluation


# ----------------------------------------------------------------------------- the architecture

def _units():
    """{unit name: (in, out, kh, kw, stride, padding)} of every conv + BN + ReLU unit, in graph
    order; names are those of the weights file. padding (ph, pw): 'same' units pad k // 2."""
    units = OrderedDict()

    def unit(name, cin, cout, k=1, stride=1, same=True):
        kh, kw = (k, k) if isinstance(k, int) else k
        units[name] = (cin, cout, kh, kw, stride, (kh // 2, kw // 2) if same else (0, 0))

    def block_a(p, cin, pool):  # Fig. 5: 1x1 | 1x1, 5x5 | 1x1, 3x3, 3x3 | avg pool, 1x1
        unit(p + "branch1x1", cin, 64)
        unit(p + "branch5x5_1", cin, 48)
        unit(p + "branch5x5_2", 48, 64, 5)
        unit(p + "branch3x3dbl_1", cin, 64)
        unit(p + "branch3x3dbl_2", 64, 96, 3)
        unit(p + "branch3x3dbl_3", 96, 96, 3)
        unit(p + "branch_pool", cin, pool)

    def block_c(p, c7):  # Fig. 6 with n = 7, 768 channels in and out
        unit(p + "branch1x1", 768, 192)
        unit(p + "branch7x7_1", 768, c7)
        unit(p + "branch7x7_2", c7, c7, (1, 7))
        unit(p + "branch7x7_3", c7, 192, (7, 1))
        for i, (cin, cout, k) in enumerate([(768, c7, 1), (c7, c7, (7, 1)), (c7, c7, (1, 7)),
                                            (c7, c7, (7, 1)), (c7, 192, (1, 7))], 1):
            unit(p + f"branch7x7dbl_{i}", cin, cout, k)
        unit(p + "branch_pool", 768, 192)

    def block_e(p, cin):  # Fig. 7: the 3x3 convolutions split into parallel 1x3 and 3x1
        unit(p + "branch1x1", cin, 320)
        unit(p + "branch3x3_1", cin, 384)
        unit(p + "branch3x3_2a", 384, 384, (1, 3))
        unit(p + "branch3x3_2b", 384, 384, (3, 1))
        unit(p + "branch3x3dbl_1", cin, 448)
        unit(p + "branch3x3dbl_2", 448, 384, 3)
        unit(p + "branch3x3dbl_3a", 384, 384, (1, 3))
        unit(p + "branch3x3dbl_3b", 384, 384, (3, 1))
        unit(p + "branch_pool", cin, 192)

    unit("Conv2d_1a_3x3", 3, 32, 3, stride=2, same=False)
    unit("Conv2d_2a_3x3", 32, 32, 3, same=False)
    unit("Conv2d_2b_3x3", 32, 64, 3)
    unit("Conv2d_3b_1x1", 64, 80)
    unit("Conv2d_4a_3x3", 80, 192, 3, same=False)
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        block_a(name + ".", cin, pool)
    unit("Mixed_6a.branch3x3", 288, 384, 3, stride=2, same=False)  # grid reduction 35 -> 17
    unit("Mixed_6a.branch3x3dbl_1", 288, 64)
    unit("Mixed_6a.branch3x3dbl_2", 64, 96, 3)
    unit("Mixed_6a.branch3x3dbl_3", 96, 96, 3, stride=2, same=False)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        block_c(name + ".", c7)
    unit("Mixed_7a.branch3x3_1", 768, 192)  # grid reduction 17 -> 8
    unit("Mixed_7a.branch3x3_2", 192, 320, 3, stride=2, same=False)
    unit("Mixed_7a.branch7x7x3_1", 768, 192)
    unit("Mixed_7a.branch7x7x3_2", 192, 192, (1, 7))
    unit("Mixed_7a.branch7x7x3_3", 192, 192, (7, 1))
    unit("Mixed_7a.branch7x7x3_4", 192, 192, 3, stride=2, same=False)
    block_e("Mixed_7b.", 1280)
    block_e("Mixed_7c.", 2048)
    return units


UNITS = _units()


def expected_shapes():
    """{key: shape} of the weights file's state dict (the `num_batches_tracked` counters of
    BatchNorm, which a file may carry, are not listed)."""
    shapes = OrderedDict()
    for name, (cin, cout, kh, kw, _, _) in UNITS.items():
        shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        for p in BN_PARAMS:
            shapes[f"{name}.bn.{p}"] = (cout,)
    shapes["fc.weight"] = (NUM_CLASSES, FEATURE_DIM)
    shapes["fc.bias"] = (NUM_CLASSES,)
    return shapes


# ----------------------------------------------------------------------------- weights

def hub_weights_path():
    """Where torch hub (and torch-fidelity) keep the downloaded file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def weights_help():
    return (f"Download {WEIGHTS_URL} (file {WEIGHTS_FILE}, the TensorFlow FID Inception-v3 "
            f"ported to PyTorch by torch-fidelity; no torchvision needed) on a machine with "
            f"network access and pass its path (--inception-weights PATH, or "
            f"inception_weights=PATH in Python), set ${WEIGHTS_ENV}=PATH, or copy it to "
            f"{hub_weights_path()}.")


def resolve_weights_path(path=None):
    """The weights file: `path`, else $SCORE_SDE_INCEPTION_WEIGHTS, else torch hub's cache;
    a missing file is one error saying where to get it and where to put it."""
    if path or os.environ.get(WEIGHTS_ENV):
        path = Path(path or os.environ[WEIGHTS_ENV])
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights file {path} does not exist. "
                                    + weights_help())
        return path
    if not hub_weights_path().is_file():
        raise FileNotFoundError(f"no Inception weights: no path given, ${WEIGHTS_ENV} not set, "
                                f"and torch hub's cache has no {WEIGHTS_FILE}. " + weights_help())
    return hub_weights_path()


def check_state(state, where="the state dict"):
    """Refuse anything but the FID Inception-v3 state dict, naming the first missing,
    misshapen or unexpected key. torchvision's ImageNet Inception-v3 (a 1000-class head, other
    weights, other FIDs) is named as such."""
    if not isinstance(state, dict) or "fc.weight" not in state:
        keys = list(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{where}: not the FID Inception-v3 state dict (no 'fc.weight'; starts "
                         f"with {keys}). " + weights_help())
    fc = state["fc.weight"]
    if not torch.is_tensor(fc) or fc.dim() != 2 or fc.shape[0] != NUM_CLASSES:
        classes = fc.shape[0] if torch.is_tensor(fc) and fc.dim() else "?"
        raise ValueError(f"{where}: fc.weight has {classes} classes; the FID Inception-v3 has "
                         f"{NUM_CLASSES} (torchvision's ImageNet model has 1000 and gives "
                         f"different FIDs). " + weights_help())
    shapes = expected_shapes()
    for key, shape in shapes.items():
        if key not in state:
            raise ValueError(f"{where}: key {key!r} of the FID Inception-v3 is missing. "
                             + weights_help())
        value = state[key]
        if not torch.is_tensor(value) or tuple(value.shape) != shape:
            got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ValueError(f"{where}: {key} has shape {got}, the FID Inception-v3 has {shape}")
        if not value.is_floating_point():
            raise ValueError(f"{where}: {key} has dtype {value.dtype}, expected floating point")
    for key in state:
        if key not in shapes and not key.endswith(OPTIONAL_SUFFIX):
            raise ValueError(f"{where}: unexpected key {key!r}: not the FID Inception-v3's "
                             f"state dict. " + weights_help())
    return state


def load_weights(path):
    """The checked state dict of a weights file, read with `weights_only=True` (a file of
    arbitrary pickled objects is refused, never executed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights file {path} does not exist. " + weights_help())
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any failure means: not a plain tensor state dict
        raise ValueError(f"{path}: cannot be loaded as a plain state dict of tensors "
                         f"(weights_only=True): {torch_load_detail(e)}") from None
    return check_state(state, str(path))


def file_sha256(path):
    """SHA-256 of a file's bytes: the weights' identity in a statistics file's provenance."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_sha256(state):
    """SHA-256 of a state dict's keys (sorted), shapes, dtypes and float32 values."""
    h = hashlib.sha256()
    for key in sorted(state):
        v = state[key].detach().cpu().float().contiguous()
        h.update(f"{key}:{tuple(v.shape)}".encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()


def random_weights(generator):
    """A state dict of the file's keys and shapes with random values drawn from `generator`,
    for tests and benchmarks (no real weights offline): He-scaled convolutions
    (std sqrt(2 / fan_in), which keeps ReLU activations O(1)), batch-norm statistics near the
    identity (running mean 0.1 N(0, 1), running variance and scale in [0.8, 1.2], shift
    0.1 N(0, 1)), fc weights of std 1 / sqrt(2048)."""
    state = OrderedDict()

    def uniform(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=generator)

    for key, shape in expected_shapes().items():
        if key.endswith(".conv.weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
        elif key.endswith((".bn.weight", ".bn.running_var")):
            state[key] = uniform(shape, 0.8, 1.2)
        elif key.endswith((".bn.bias", ".bn.running_mean")):
            state[key] = 0.1 * torch.randn(shape, generator=generator)
        elif key == "fc.weight":
            state[key] = torch.randn(shape, generator=generator) / FEATURE_DIM ** 0.5
        else:  # fc.bias
            state[key] = 0.1 * torch.randn(shape, generator=generator)
    return state


def prepare(state, device=None):
    """The state dict as float32 on `device` (default the CPU), convolution weights in
    channels-last order, the layout `inception_outputs` computes in (pooling in NCHW order is
    several times slower on the CPU)."""
    device = torch.device("cpu" if device is None else device)
    return {k: v.to(device=device, dtype=torch.float32).contiguous(
        memory_format=torch.channels_last if v.dim() == 4 else torch.contiguous_format)
        for k, v in state.items()}


# ----------------------------------------------------------------------------- the forward pass

def resize_bilinear_tf1(x, size):
    """Bilinear resize [N, C, H, W] -> [N, C, *size] as TensorFlow 1's `resize_bilinear` with
    align_corners=False: output pixel i reads source coordinate s = i * in / out (no half-pixel
    centres), between pixels floor(s) and min(floor(s) + 1, in - 1) with weight s - floor(s);
    no antialiasing when shrinking. Done as two interpolation matrices, rows then columns."""

    def matrix(n_in, n_out):
        s = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
        lo = s.floor().long().clamp_max(n_in - 1)
        hi = (lo + 1).clamp_max(n_in - 1)
        frac = s - lo.double()
        m = torch.zeros(n_out, n_in, dtype=torch.float64)
        m[torch.arange(n_out), lo] += 1 - frac
        m[torch.arange(n_out), hi] += frac
        return m.to(x.dtype).to(x.device)

    rows, cols = matrix(x.shape[-2], size[0]), matrix(x.shape[-1], size[1])
    return rows @ x @ cols.T


def _unit(state, name, x):
    """Convolution, batch normalisation (eps 1e-3, running statistics) and ReLU."""
    _, _, _, _, stride, padding = UNITS[name]
    x = F.conv2d(x, state[f"{name}.conv.weight"], stride=stride, padding=padding)
    bn = [state[f"{name}.bn.{p}"] for p in BN_PARAMS]
    x = F.batch_norm(x, bn[2], bn[3], bn[0], bn[1], training=False, eps=BN_EPS)
    return F.relu(x)


def _chain(state, prefix, names, x):
    for name in names:
        x = _unit(state, prefix + name, x)
    return x


def _avg_pool_3x3(x):
    """3x3 stride-1 average over the pixels inside the image (TensorFlow's SAME average pool)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _block_a(state, p, x):
    return torch.cat([_unit(state, p + "branch1x1", x),
                      _chain(state, p, ["branch5x5_1", "branch5x5_2"], x),
                      _chain(state, p, ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"], x),
                      _unit(state, p + "branch_pool", _avg_pool_3x3(x))], 1)


def _block_b(state, p, x):  # Mixed_6a
    return torch.cat([_unit(state, p + "branch3x3", x),
                      _chain(state, p, ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"], x),
                      F.max_pool2d(x, 3, stride=2)], 1)


def _block_c(state, p, x):
    return torch.cat([_unit(state, p + "branch1x1", x),
                      _chain(state, p, [f"branch7x7_{i}" for i in (1, 2, 3)], x),
                      _chain(state, p, [f"branch7x7dbl_{i}" for i in (1, 2, 3, 4, 5)], x),
                      _unit(state, p + "branch_pool", _avg_pool_3x3(x))], 1)


def _block_d(state, p, x):  # Mixed_7a
    return torch.cat([_chain(state, p, ["branch3x3_1", "branch3x3_2"], x),
                      _chain(state, p, [f"branch7x7x3_{i}" for i in (1, 2, 3, 4)], x),
                      F.max_pool2d(x, 3, stride=2)], 1)


def _block_e(state, p, x, pool):
    a = _unit(state, p + "branch3x3_1", x)
    b = _chain(state, p, ["branch3x3dbl_1", "branch3x3dbl_2"], x)
    pooled = _avg_pool_3x3(x) if pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
    return torch.cat([_unit(state, p + "branch1x1", x),
                      _unit(state, p + "branch3x3_2a", a), _unit(state, p + "branch3x3_2b", a),
                      _unit(state, p + "branch3x3dbl_3a", b), _unit(state, p + "branch3x3dbl_3b", b),
                      _unit(state, p + "branch_pool", pooled)], 1)


def inception_outputs(state, images):
    """uint8 RGB images [N, 3, H, W] (any H, W) -> (pool features [N, 2048], logits [N, 1008]),
    float32, computed in the dtype and on the device of `state`'s tensors."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"the Inception-v3 takes uint8 RGB images [N, 3, H, W], got "
                         f"{images.dtype} {tuple(images.shape)}")
    w = state["fc.weight"]
    x = images.to(device=w.device, dtype=w.dtype)
    x = resize_bilinear_tf1(x, (INPUT_SIZE, INPUT_SIZE))
    x = ((x - 128) / 128).contiguous(memory_format=torch.channels_last)
    x = _chain(state, "", ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"], x)  # 147x147
    x = F.max_pool2d(x, 3, stride=2)  # 73x73
    x = _chain(state, "", ["Conv2d_3b_1x1", "Conv2d_4a_3x3"], x)  # 71x71
    x = F.max_pool2d(x, 3, stride=2)  # 35x35
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = _block_a(state, name + ".", x)
    x = _block_b(state, "Mixed_6a.", x)  # 17x17
    for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        x = _block_c(state, name + ".", x)
    x = _block_d(state, "Mixed_7a.", x)  # 8x8
    x = _block_e(state, "Mixed_7b.", x, "avg")
    x = _block_e(state, "Mixed_7c.", x, "max")  # the TF graph's max pool here
    pool = x.mean(dim=(2, 3))
    logits = F.linear(pool, w, state["fc.bias"])
    return pool.float(), logits.float()
