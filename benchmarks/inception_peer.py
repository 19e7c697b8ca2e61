"""The FID Inception-v3 of `evaluation.inception` against torch-fidelity's (the peer), on seeded
random weights (the real weights are a download), and the fixture the tests compare with.

    OMP_NUM_THREADS=1 python benchmarks/inception_peer.py            # compare, print differences
    OMP_NUM_THREADS=1 python benchmarks/inception_peer.py --write    # and rewrite the fixture
    OMP_NUM_THREADS=1 python benchmarks/inception_peer.py --speed 16 # images/s of ours

The comparison needs torch-fidelity without torchvision: `pip install --no-deps
torch-fidelity==0.4.0`; its feature-extractor module is loaded without the package's
`__init__` (which imports torchvision). The fixture (tests/data/inception_peer.npz) holds only
the seed, the checksum of the weights it generates, and the peer's outputs on the inputs it
generates: `tests/test_inception.py` regenerates both and checks our extractor against it.
"""

import argparse
import importlib
import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

from evaluation.inception import inception_outputs, prepare, random_weights, state_sha256

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "inception_peer.npz"
SEED = 20151205
# Four 32x32 images (CIFAR-10 size, upsampled), one of an odd small size, one larger than 299
# (shrunk: TensorFlow 1's resize does not antialias).
INPUT_SHAPES = ((4, 3, 32, 32), (1, 3, 21, 45), (1, 3, 333, 310))


def fixture_weights(seed=SEED):
    return random_weights(torch.Generator().manual_seed(seed))


def fixture_inputs(seed=SEED):
    """The uint8 batches of INPUT_SHAPES, drawn after the weights from their own generator."""
    g = torch.Generator().manual_seed(seed + 1)
    return [torch.randint(0, 256, shape, generator=g, dtype=torch.uint8) for shape in INPUT_SHAPES]


def peer_class():
    """torch-fidelity's FeatureExtractorInceptionV3, imported without the package `__init__`."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        raise SystemExit("torch-fidelity is not installed: pip install --no-deps torch-fidelity==0.4.0")
    if "torch_fidelity" not in sys.modules:
        package = types.ModuleType("torch_fidelity")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["torch_fidelity"] = package
    module = importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
    version = importlib.import_module("torch_fidelity.version").__version__
    return module.FeatureExtractorInceptionV3, version


def peer_outputs(state, batches):
    """{'pool', 'logits', 'logits_unbiased'} lists (one per batch) from torch-fidelity, and the
    peer's {key: shape} and version."""
    cls, version = peer_class()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.pth"
        torch.save(dict(state), path)
        peer = cls("inception-v3-compat", ["2048", "logits_unbiased", "logits"],
                   feature_extractor_weights_path=str(path))
    shapes = {k: list(v.shape) for k, v in peer.state_dict().items()}
    out = {"pool": [], "logits_unbiased": [], "logits": []}
    with torch.no_grad():
        for x in batches:
            pool, unbiased, logits = peer(x)
            out["pool"].append(pool)
            out["logits_unbiased"].append(unbiased)
            out["logits"].append(logits)
    return out, shapes, version


def relative_error(ours, theirs):
    return float((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max())


def compare(write=False):
    state, batches = fixture_weights(), fixture_inputs()
    peer, shapes, version = peer_outputs(state, batches)
    with torch.no_grad():
        ours = [inception_outputs(state, x) for x in batches]
    for i, x in enumerate(batches):
        pool, logits = ours[i]
        unbiased = pool @ state["fc.weight"].T
        print(f"inputs {list(x.shape)}: max |difference| / max |peer|: pool "
              f"{relative_error(pool, peer['pool'][i]):.2e}, logits "
              f"{relative_error(logits, peer['logits'][i]):.2e}, logits without bias "
              f"{relative_error(unbiased, peer['logits_unbiased'][i]):.2e}; pool features: "
              f"mean {float(peer['pool'][i].mean()):.3f}, max {float(peer['pool'][i].max()):.3f}")
    if write:
        from sde_base.fileio import atomic_write
        arrays = {f"{name}_{i}": t.numpy() for name, ts in peer.items() for i, t in enumerate(ts)}
        with atomic_write(FIXTURE) as f:
            np.savez(f, seed=np.int64(SEED), weights_sha256=np.asarray(state_sha256(state)),
                     peer_shapes=np.asarray(json.dumps(shapes)),
                     made_with=np.asarray(f"torch-fidelity {version}, torch {torch.__version__}"),
                     **arrays)
        print(f"written: {FIXTURE}")


def speed(n, batch=8):
    """Images per second of `inception_outputs` on 32x32 uint8 inputs, and of torch-fidelity's
    extractor on the same inputs where it is installed."""
    import os
    import platform
    import time
    state = fixture_weights()
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(0),
                      dtype=torch.uint8)
    runs = {"evaluation.inception": lambda b, s=prepare(state): inception_outputs(s, b)}
    if importlib.util.find_spec("torch_fidelity") is not None:
        cls, version = peer_class()
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(dict(state), Path(tmp) / "w.pth")
            runs[f"torch-fidelity {version}"] = cls("inception-v3-compat", ["2048", "logits"],
                                                    feature_extractor_weights_path=str(Path(tmp) / "w.pth"))
    print(f"{n} images of 32x32 in batches of {batch}, threads={torch.get_num_threads()}, torch "
          f"{torch.__version__}, {platform.processor() or platform.machine()}, load average "
          f"{os.getloadavg()[0]:.1f}")
    for name, run in runs.items():
        with torch.no_grad():
            run(x[:1])  # warm-up
            t0 = time.perf_counter()
            for i in range(0, n, batch):
                run(x[i:i + batch])
            seconds = time.perf_counter() - t0
        print(f"  {name}: {seconds:.1f} s, {n / seconds:.2f} images/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the fixture")
    parser.add_argument("--speed", type=int, metavar="N", help="time N images instead")
    args = parser.parse_args()
    if args.speed:
        speed(args.speed)
    else:
        compare(write=args.write)


if __name__ == "__main__":
    main()
