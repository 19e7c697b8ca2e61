"""The FID Inception-v3 in plain torch (evaluation.inception): torch-fidelity's outputs on seeded
random weights (a stored fixture), its weights file checked key by key, and FID of sharded
samples against cached reference statistics through the `metrics` command."""

import json
import os

import numpy as np
import pytest
import torch

from benchmarks.inception_peer import FIXTURE, INPUT_SHAPES, fixture_inputs, fixture_weights
from evaluation import inception
from evaluation.metrics import fid_from_features
from evaluation.reference import (InceptionExtractor, get_extractor, load_statistics,
                                  score_samples)
from evaluation.shards import Shard, write_shard
from sde_cli.app import main as cli

# float32 through ~95 layers: ours and torch-fidelity's differ by ~1e-6 of the largest output
# (benchmarks/inception_peer.py prints the differences); asserted at 1e-5.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def peer():
    with np.load(FIXTURE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def state(peer):
    state = fixture_weights(int(peer["seed"]))
    if inception.state_sha256(state) != str(peer["weights_sha256"]):
        pytest.fail(f"torch {torch.__version__} draws other random weights from seed "
                    f"{int(peer['seed'])} than those the fixture was made with "
                    f"({peer['made_with']}); regenerate it with torch-fidelity installed: "
                    f"python benchmarks/inception_peer.py --write")
    return state


def test_outputs_match_torch_fidelity_on_seeded_random_weights(peer, state):
    """Pool features, logits and the bias-free logits of the Inception Score agree with
    torch-fidelity 0.4.0's FeatureExtractorInceptionV3 on 32x32, odd-sized and larger-than-299
    inputs, to 1e-5 of the largest value."""
    peer_shapes = {k: tuple(v) for k, v in json.loads(str(peer["peer_shapes"])).items()
                   if not k.endswith(inception.OPTIONAL_SUFFIX)}
    assert peer_shapes == dict(inception.expected_shapes())
    batches = fixture_inputs(int(peer["seed"]))
    assert [tuple(x.shape) for x in batches] == list(INPUT_SHAPES)
    with torch.no_grad():
        for i, x in enumerate(batches):
            pool, logits = inception.inception_outputs(state, x)
            for name, ours in (("pool", pool), ("logits", logits),
                               ("logits_unbiased", pool @ state["fc.weight"].T)):
                theirs = torch.from_numpy(peer[f"{name}_{i}"])
                scale = float(theirs.abs().max())
                assert scale > 0.1  # the random weights keep activations O(1)
                torch.testing.assert_close(ours, theirs, rtol=TOLERANCE, atol=TOLERANCE * scale,
                                           msg=lambda m: f"{name} of inputs {i}: {m}")


def test_resize_is_tensorflow1_bilinear():
    """Output pixel i reads source coordinate i * in / out (no half-pixel centres), clamped at
    the last pixel; shrinking samples without averaging."""
    x = torch.arange(4.0).reshape(1, 1, 1, 4)
    out = inception.resize_bilinear_tf1(x, (1, 8))
    assert out.flatten().tolist() == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3]
    y = torch.arange(10.0).reshape(1, 1, 10, 1)
    assert inception.resize_bilinear_tf1(y, (4, 1)).flatten().tolist() == [0, 2.5, 5, 7.5]


def save_shaped(path, state):
    """Save a state dict as tiny files: every tensor a broadcast view of one value."""
    torch.save({k: v.reshape(-1)[:1].clone().reshape([1] * v.dim()).expand(v.shape)
                for k, v in state.items()}, path)
    return path


class NotATensor:
    pass


def test_weights_file_is_checked_key_by_key(state, tmp_path, monkeypatch):
    good = save_shaped(tmp_path / "good.pth", state)
    assert set(inception.load_weights(good)) == set(state)
    with_counters = dict(state, **{"Conv2d_1a_3x3.bn.num_batches_tracked": torch.tensor(0)})
    assert inception.load_weights(save_shaped(tmp_path / "counters.pth", with_counters))
    torchvision = dict(state, **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    with pytest.raises(ValueError, match="1000 classes.*torchvision"):
        inception.load_weights(save_shaped(tmp_path / "tv.pth", torchvision))
    missing = {k: v for k, v in state.items() if k != "Mixed_6c.branch7x7dbl_3.bn.running_var"}
    with pytest.raises(ValueError, match="'Mixed_6c.branch7x7dbl_3.bn.running_var'.*missing"):
        inception.load_weights(save_shaped(tmp_path / "missing.pth", missing))
    wrong = dict(state, **{"Mixed_7b.branch3x3_2a.conv.weight": torch.zeros(384, 384, 3, 1)})
    with pytest.raises(ValueError, match=r"Mixed_7b.branch3x3_2a.conv.weight has shape "
                                         r"\(384, 384, 3, 1\).*\(384, 384, 1, 3\)"):
        inception.load_weights(save_shaped(tmp_path / "wrong.pth", wrong))
    extra = dict(state, **{"AuxLogits.fc.weight": torch.zeros(1008, 768)})
    with pytest.raises(ValueError, match="unexpected key 'AuxLogits.fc.weight'"):
        inception.load_weights(save_shaped(tmp_path / "extra.pth", extra))
    torch.save({"fc.weight": torch.zeros(1008, 2048), "x": NotATensor()}, tmp_path / "pickle.pth")
    with pytest.raises(ValueError, match="weights_only"):
        inception.load_weights(tmp_path / "pickle.pth")
    # where the file comes from: the argument, else the environment, else torch hub's cache
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    with pytest.raises(FileNotFoundError) as err:
        inception.resolve_weights_path()
    msg = str(err.value)
    assert inception.WEIGHTS_URL in msg and inception.WEIGHTS_ENV in msg and "--inception-weights" in msg
    assert str(tmp_path / "hub" / "checkpoints" / inception.WEIGHTS_FILE) in msg
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(good))
    assert inception.resolve_weights_path() == good
    assert inception.resolve_weights_path(tmp_path / "counters.pth") == tmp_path / "counters.pth"
    monkeypatch.delenv(inception.WEIGHTS_ENV)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    os.link(good, tmp_path / "hub" / "checkpoints" / inception.WEIGHTS_FILE)
    assert inception.resolve_weights_path() == inception.hub_weights_path()
    with pytest.raises(ValueError, match="no weights file"):
        get_extractor("digits", weights=good)


def uint8_images(n, size, seed):
    """Smooth random RGB images [n, size, size, 3] (uint8), as a sampler might give."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = x + 0.05 * torch.randn(x.shape, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def real_weights():
    path = os.environ.get(inception.WEIGHTS_ENV)
    if not path:
        pytest.skip(f"optional data: ${inception.WEIGHTS_ENV} is not set, so the real weights "
                    f"({inception.WEIGHTS_FILE}) are not on this machine")
    return path


@pytest.mark.parametrize("weights", ["seeded random", "real"])
def test_fid_of_shards_against_cached_statistics_equals_one_pass(weights, state, tmp_path,
                                                                 capsys):
    """`metrics --extractor inception`: statistics of the reference computed once and kept,
    sharded samples (written out of order) scored against them: the FID of one pass over
    the same images, to 1e-6 relative; statistics of other weights are refused."""
    if weights == "real":
        path = real_weights()
    else:
        path = str(tmp_path / inception.WEIGHTS_FILE)
        torch.save(state, path)
    reference, samples = uint8_images(5, 32, seed=1), uint8_images(6, 32, seed=2)
    np.savez(tmp_path / "reference.npz", images=reference)
    shards = tmp_path / "shards"
    shards.mkdir()
    seeds = np.arange(len(samples))
    for lo in (4, 0, 2):
        write_shard(shards, Shard(lo, lo + 1, []), samples[lo:lo + 2][::-1].copy(),
                    seeds[lo:lo + 2][::-1].copy())
    base = ["metrics", "--extractor", "inception", "--inception-weights", path,
            "--stats", str(tmp_path / "ref.npz")]
    assert cli(base + ["--reference", str(tmp_path / "reference.npz")]) == 0
    assert cli(base + ["--samples", str(shards), "--out", str(tmp_path / "r.json")]) == 0, \
        capsys.readouterr().err
    result = json.loads((tmp_path / "r.json").read_text())
    provenance = load_statistics(tmp_path / "ref.npz")["provenance"]
    assert provenance["weights_sha256"] == inception.file_sha256(path)
    assert provenance["extractor"] == "inception" and provenance["count"] == 5

    extractor = InceptionExtractor(path)

    def one_pass(images):
        return extractor(torch.from_numpy(images).permute(0, 3, 1, 2))[0]

    expected = fid_from_features(one_pass(samples), one_pass(reference))
    empty = extractor(torch.zeros(0, 3, 32, 32, dtype=torch.uint8))  # a rank with no image
    assert [tuple(t.shape) for t in empty] == [(0, 2048), (0, 1008)]
    assert result["num_samples"] == 6 and expected > 0
    assert result["fid"] == pytest.approx(expected, rel=1e-6)
    other = InceptionExtractor(state={k: v * 1.01 for k, v in state.items()})
    with pytest.raises(ValueError, match="made with"):
        score_samples(shards, load_statistics(tmp_path / "ref.npz"), other)
