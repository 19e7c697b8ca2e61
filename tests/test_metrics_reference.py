"""Reference statistics kept in a file (evaluation.reference): scoring sharded samples against
them gives what a one-pass computation gives; precision and recall on known configurations."""

import numpy as np
import pytest
import torch

from evaluation import digits_features as dfeat
from evaluation.reference import (DigitsExtractor, load_statistics, precision_recall,
                                  reference_statistics, save_statistics, score_samples)
from evaluation.shards import Shard, write_shard


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return dfeat.load_digits_classifier(seed=0, cache=tmp_path_factory.mktemp("digits_cache"))


def uint8_nhwc(x):
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_fid_of_shards_against_cached_statistics_equals_one_pass(classifier, tmp_path):
    train = dfeat.digits_images("train")[0]
    test = dfeat.digits_images("test")[0]
    g = torch.Generator().manual_seed(0)
    samples = uint8_nhwc((test + 0.1 * torch.randn(test.shape, generator=g)).clamp(0, 1))
    reference = uint8_nhwc(train)
    extractor = DigitsExtractor(classifier)
    path = save_statistics(tmp_path / "ref.npz", reference_statistics(reference, extractor,
                                                                      source="digits/train"))
    stats = load_statistics(path)
    assert stats["provenance"]["count"] == len(reference)
    assert stats["provenance"]["weights_fingerprint"] == dfeat.fingerprint(classifier)
    shards = tmp_path / "shards"
    shards.mkdir()
    seeds = np.arange(len(samples))
    for lo in range(0, len(samples), 100):  # shards of 100 seeds, written out of order
        part = slice(lo, lo + 100)
        write_shard(shards, Shard(lo, lo + 99, []), samples[part][::-1].copy(),
                    seeds[part][::-1].copy())
    result = score_samples(shards, stats, extractor)
    one_pass = dfeat.digits_fid(samples, reference, classifier=classifier)
    assert result["num_samples"] == len(samples)
    assert result["fid"] == pytest.approx(one_pass, rel=1e-6) and result["fid"] > 0
    assert 0 < result["precision"] <= 1 and 0 < result["recall"] <= 1
    # the classifier score over 10 consecutive splits: exp E_x KL(p(y|x) || p(y)) per split
    probs = extractor(torch.from_numpy(samples).permute(0, 3, 1, 2))[1]
    per_split = [float(torch.exp((p * (p.clamp_min(1e-300).log()
                                       - p.mean(0).clamp_min(1e-300).log())).sum(1).mean()))
                 for p in torch.tensor_split(probs, 10)]
    assert result["classifier_score_splits"] == 10
    assert result["classifier_score_mean"] == pytest.approx(np.mean(per_split), rel=1e-9)
    assert result["classifier_score_std"] == pytest.approx(np.std(per_split), rel=1e-9)
    other = DigitsExtractor(dfeat.load_digits_classifier(seed=1, cache=tmp_path, epochs=1))
    with pytest.raises(ValueError, match="made with"):
        score_samples(shards, stats, other)


def test_precision_and_recall_on_known_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 4, generator=g, dtype=torch.float64)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    far = real + 100.0
    assert precision_recall(real, far) == (0.0, 0.0)
    # One-dimensional, k = 3: reals at 0..9 have radii 3 (ends) or 2, so of the fakes
    # 0..4, 50..53 the first five are inside: precision 5/9. The fakes' radii are 3 (at 0, 4,
    # 50, 53) or 2, so their balls cover the reals 0..7: recall 8/10.
    real1 = torch.arange(10.0)[:, None]
    fake1 = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 50.0, 51.0, 52.0, 53.0])[:, None]
    assert precision_recall(real1, fake1, k=3) == (pytest.approx(5 / 9), pytest.approx(0.8))


def test_metrics_command_on_two_processes_scores_as_one(classifier, tmp_path):
    """`metrics` under a 2-process gloo group (the torchrun environment) divides the feature
    extraction over the ranks and gives the scores of one process."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    cache = Path(classifier.info.get("cache_file", "")).parent
    samples = tmp_path / "samples.npz"
    np.savez(samples, samples=uint8_nhwc(dfeat.digits_images("test")[0][:150]))
    base = [sys.executable, "-m", "sde_lib.run", "metrics", "--stats", str(tmp_path / "r.npz"),
            "--reference", "train", "--samples", str(samples)]
    env = dict(os.environ, OMP_NUM_THREADS="1", SCORE_SDE_CACHE=str(cache))
    one = subprocess.run(base + ["--out", str(tmp_path / "one.json")], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [subprocess.Popen(base + ["--out", str(tmp_path / "two.json")], cwd=repo,
                              env=dict(env, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r),
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    for key in ("fid", "kid_mean", "precision", "recall", "classifier_score"):
        assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), key


def test_metrics_command_takes_a_dataset_split_as_reference(classifier, tmp_path, monkeypatch):
    """`--reference cifar10/train` reads the CIFAR-10 binary release from --data-dir: the
    statistics are of its images in file order, with that source in their provenance."""
    from pathlib import Path
    from evaluation.reference import data_checksum
    from sde_cli.app import main as cli
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    g = np.random.default_rng(0)
    images = []
    for i in range(1, 6):
        records = g.integers(0, 256, (3, 3073), dtype=np.uint8)
        (folder / f"data_batch_{i}.bin").write_bytes(records.tobytes())
        images.append(records[:, 1:].reshape(3, 3, 32, 32))
    monkeypatch.setenv("SCORE_SDE_CACHE", str(Path(classifier.info["cache_file"]).parent))
    assert cli(["metrics", "--stats", str(tmp_path / "ref.npz"), "--reference", "cifar10/train",
                "--data-dir", str(tmp_path)]) == 0
    provenance = load_statistics(tmp_path / "ref.npz")["provenance"]
    assert provenance["source"] == "cifar10/train" and provenance["count"] == 15
    assert provenance["data_sha256"] == data_checksum(torch.from_numpy(np.concatenate(images)))
    assert cli(["metrics", "--stats", str(tmp_path / "r.npz"), "--reference", "cifar10/valid"]) == 1


def test_metrics_out_replaces_only_scores_metrics_wrote(classifier, tmp_path, monkeypatch,
                                                        capsys):
    """--out writes a new file or replaces scores `metrics` wrote; a file the toolkit did not
    write is refused before any work and kept."""
    import json
    from pathlib import Path
    from sde_cli.app import main as cli
    monkeypatch.setenv("SCORE_SDE_CACHE", str(Path(classifier.info["cache_file"]).parent))
    samples = tmp_path / "samples.npz"
    np.savez(samples, samples=uint8_nhwc(dfeat.digits_images("test")[0][:40]))
    base = ["metrics", "--stats", str(tmp_path / "r.npz"), "--samples", str(samples)]
    assert cli(base[:3] + ["--reference", "train"]) == 0
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": 1}')
    assert cli(base + ["--out", str(mine)]) == 1
    assert "never replaced" in capsys.readouterr().err
    assert mine.read_text() == '{"mine": 1}'
    out = tmp_path / "scores.json"
    assert cli(base + ["--out", str(out)]) == 0 and cli(base + ["--out", str(out)]) == 0
    assert json.loads(out.read_text())["command"] == "metrics"
