"""Reference statistics computed once and kept, and sample sets scored against them: FID, KID,
a classifier score, and precision and recall (Kynkaanniemi et al. 2019).

    stats = reference_statistics(images, DigitsExtractor(), source="digits/train")
    save_statistics("ref.npz", stats)                       # once
    score_samples("runs/x/samples/seeds_pc", load_statistics("ref.npz"), DigitsExtractor())

Extractors are registered by name in `EXTRACTORS` ('digits'; 'inception', the FID Inception-v3
of `evaluation.inception`) and made with `get_extractor(name, weights=..., device=...)`.

A statistics file (.npz, no pickles) holds the mean `mu` and covariance `sigma` (float64) of the
reference features, the features themselves (float32, for KID and precision/recall) and a JSON
`provenance`: the SHA-256 of the uint8 images in order (the data checksum), the extractor's name,
weights checksum and resizing, and the image count. Scoring refuses statistics of another
extractor or weights. Under torchrun the images are divided over the ranks for feature
extraction (`features_over_ranks`) and the features gathered, in order, on every rank.
"""

import hashlib
import json
import os

import numpy as np
import torch

from sde_base.fileio import numpy_file

from evaluation.metrics import (classifier_score, feature_statistics, frechet_distance,
                                kernel_distance, load_images)

FORMAT = "score-sde-toolkit reference statistics, version 1"
EXTRACTORS = {}


def register_extractor(cls):
    EXTRACTORS[cls.name] = cls
    return cls


@register_extractor
class DigitsExtractor:
    """The offline digits classifier (`evaluation.digits_features`): 64 penultimate features and
    10 class probabilities; images go to grey 8x8 by channel mean and area averaging."""
    name = "digits"
    resizing = "grey by channel mean; area-averaged to 8x8 (evaluation.digits_features)"

    def __init__(self, classifier=None):
        from evaluation.digits_features import fingerprint, load_digits_classifier
        self.model = load_digits_classifier() if classifier is None else classifier
        self.weights = fingerprint(self.model)

    @classmethod
    def from_options(cls, weights=None, device=None):
        if weights is not None:
            raise ValueError("the digits extractor trains (and caches) its own classifier; it "
                             "takes no weights file")
        return cls()

    def identity(self):
        return {"extractor": self.name, "weights_fingerprint": self.weights,
                "resizing": self.resizing}

    def __call__(self, images):
        """uint8 images [N, 3 or 1, H, W] -> (features float64 [N, 64], probs float64 [N, 10])."""
        from evaluation.digits_features import _outputs
        return _outputs(images, self.model, "images")


@register_extractor
class InceptionExtractor:
    """The FID Inception-v3 (`evaluation.inception`: torch-fidelity's weights file, no
    torchvision): the 2048 pool features, and as probabilities the softmax of the 1008 logits
    without the fc bias (the Inception Score's p(y|x), as torch-fidelity computes it).

    weights: the weights file (default $SCORE_SDE_INCEPTION_WEIGHTS, else torch hub's cache);
    its SHA-256 is the identity. state: a checked state dict instead (tests, random weights);
    its identity is `state:` and the SHA-256 of its keys, shapes and values.
    """
    name = "inception"
    resizing = ("grey repeated to RGB; TensorFlow 1 bilinear resize to 299x299 (no half-pixel "
                "centres, no antialiasing)")

    def __init__(self, weights=None, *, state=None, device=None, batch_size=32):
        from evaluation import inception
        if state is None:
            path = inception.resolve_weights_path(weights)
            state, self.weights = inception.load_weights(path), inception.file_sha256(path)
        else:
            self.weights = "state:" + inception.state_sha256(inception.check_state(state))
        self.state = inception.prepare(state, device)
        self.batch_size = int(batch_size)

    @classmethod
    def from_options(cls, weights=None, device=None):
        return cls(weights, device=device)

    def identity(self):
        return {"extractor": self.name, "weights_sha256": self.weights,
                "resizing": self.resizing}

    def __call__(self, images):
        """uint8 images [N, 3 or 1, H, W] -> (features float64 [N, 2048], probs float64
        [N, 1008]), in batches of `batch_size`."""
        from evaluation.inception import FEATURE_DIM, NUM_CLASSES, inception_outputs
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        feats = [torch.empty(0, FEATURE_DIM, dtype=torch.float64)]  # a rank may get no image
        probs = [torch.empty(0, NUM_CLASSES, dtype=torch.float64)]
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                pool, _ = inception_outputs(self.state, images[i:i + self.batch_size])
                unbiased = pool @ self.state["fc.weight"].T
                feats.append(pool.cpu().double())
                probs.append(unbiased.cpu().double().softmax(dim=1))
        return torch.cat(feats), torch.cat(probs)


def get_extractor(name, *, weights=None, device=None):
    """The registered extractor `name` (`EXTRACTORS`: 'digits', 'inception'); `weights`: the
    weights file of one that reads a file; `device`: where it runs (default the CPU)."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r} (known: {', '.join(sorted(EXTRACTORS))})")
    return EXTRACTORS[name].from_options(weights=weights, device=device)


def as_uint8_nchw(images):
    """A uint8 tensor [N, C, H, W] from a folder of shards (`evaluation.shards`), a uint8 array
    [N, H, W, C] (the shards' layout) or any image source `load_images` takes."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4 \
            and images.shape[-1] in (1, 3):
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if isinstance(images, (str, os.PathLike)) and os.path.isdir(images):
        from evaluation.shards import SHARD_RE, read_shards
        if any(SHARD_RE.fullmatch(n) for n in os.listdir(images)):  # a folder of shards
            return as_uint8_nchw(read_shards(images)[0])
    return load_images(images)


def data_checksum(images):
    """SHA-256 of uint8 images [N, C, H, W] in order (their shape included)."""
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()


def features_over_ranks(images, extractor, info=None, batch=1024):
    """(features, probs) of uint8 images [N, ...], rows i with i mod world = rank computed by
    each rank and gathered in order on every rank (one process: all here)."""
    world, rank = (info.world_size, info.rank) if info is not None else (1, 0)
    mine = images[rank::world]
    parts = [extractor(mine[i:i + batch]) for i in range(0, len(mine), batch)] or \
        [extractor(mine)]
    feats = torch.cat([p[0] for p in parts])
    probs = torch.cat([p[1] for p in parts])
    if world == 1:
        return feats, probs
    import torch.distributed as dist
    from training.distributed import collective
    gathered = [None] * world
    with collective(info, "the feature gather"):
        dist.all_gather_object(gathered, (feats, probs))
    feats = torch.empty(len(images), feats.shape[1], dtype=feats.dtype)
    probs = torch.empty(len(images), probs.shape[1], dtype=probs.dtype)
    for r, (f, p) in enumerate(gathered):
        feats[r::world], probs[r::world] = f, p
    return feats, probs


def reference_statistics(images, extractor, *, source="", info=None):
    """Statistics of reference images (any source `as_uint8_nchw` takes) with their provenance."""
    x = as_uint8_nchw(images)
    feats, _ = features_over_ranks(x, extractor, info)
    mu, sigma = feature_statistics(feats)
    provenance = dict(extractor.identity(), data_sha256=data_checksum(x), count=len(x),
                      image_shape=list(x.shape[1:]), source=str(source))
    return {"mu": mu, "sigma": sigma, "features": feats.float().numpy(),
            "provenance": provenance}


def save_statistics(path, stats):
    """Write statistics atomically as an .npz (arrays and a JSON string only)."""
    from sde_base.fileio import atomic_write
    with atomic_write(path) as f:
        np.savez(f, mu=stats["mu"], sigma=stats["sigma"], features=stats["features"],
                 provenance=np.asarray(json.dumps(dict(stats["provenance"], format=FORMAT))))
    return path


def load_statistics(path):
    try:
        with numpy_file(path) as z:
            provenance = json.loads(str(z["provenance"]))
            stats = {"mu": z["mu"], "sigma": z["sigma"], "features": z["features"]}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path} is not a reference statistics file ({e})") from None
    if provenance.pop("format", None) != FORMAT:
        raise ValueError(f"{path} is not a reference statistics file of format {FORMAT!r}")
    stats["provenance"] = provenance
    return stats


def precision_recall(real, fake, k=3, chunk=4096):
    """Improved precision and recall (Kynkaanniemi et al. 2019, Eqs. 1-3): each real feature's
    ball has the radius of its k-th nearest real neighbour (itself excluded); precision is the
    fraction of fake features inside some real ball, recall the fraction of real features inside
    some fake ball (radii from the fakes). Float64; returns (precision, recall)."""
    real = torch.as_tensor(real).double()
    fake = torch.as_tensor(fake).double()
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} features per set, got "
                         f"{len(real)} and {len(fake)}")

    def radii(x):
        out = []
        for i in range(0, len(x), chunk):
            d = torch.cdist(x[i:i + chunk], x)
            out.append(d.kthvalue(k + 1, dim=1).values)  # the 1st is the point itself (0)
        return torch.cat(out)

    def covered(points, centres, r):
        hits = []
        for i in range(0, len(points), chunk):
            hits.append((torch.cdist(points[i:i + chunk], centres) <= r[None]).any(1))
        return float(torch.cat(hits).double().mean())

    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


def score_samples(samples, stats, extractor, *, info=None, k=3, kid_subsets=100,
                  kid_subset_size=1000, score_splits=10):
    """FID, KID, classifier score, precision and recall of `samples` (a shard folder, .npz,
    image folder or uint8 images) against reference `stats` of the same extractor.

    The classifier score is given on all samples (`classifier_score`) and as mean and standard
    deviation over `score_splits` consecutive parts (`classifier_score_mean`, `_std`): with the
    Inception extractor, the Inception Score as usually reported (10 splits; torch-fidelity
    shuffles the samples first, here they stay in seed order)."""
    mine = extractor.identity()
    theirs = {key: stats["provenance"].get(key) for key in mine}
    if theirs != mine:
        raise ValueError(f"the reference statistics were made with {theirs}, not {mine}")
    x = as_uint8_nchw(samples)
    feats, probs = features_over_ranks(x, extractor, info)
    mu, sigma = feature_statistics(feats)
    ref = torch.from_numpy(stats["features"]).double()
    subset = min(kid_subset_size, len(x), len(ref))
    kid_mean, kid_std = kernel_distance(feats, ref, subsets=kid_subsets, subset_size=subset)
    precision, recall = precision_recall(ref, feats, k=k)
    splits = min(score_splits, len(x))
    score_mean, score_std = classifier_score(probs, splits=splits)
    return {"fid": frechet_distance(mu, sigma, stats["mu"], stats["sigma"]),
            "kid_mean": kid_mean, "kid_std": kid_std, "kid_subset_size": subset,
            "classifier_score": classifier_score(probs)[0], "classifier_score_mean": score_mean,
            "classifier_score_std": score_std, "classifier_score_splits": splits,
            "precision": precision,
            "recall": recall, "k": k, "num_samples": len(x), "samples_sha256": data_checksum(x),
            "reference": stats["provenance"]}
