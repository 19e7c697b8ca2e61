"""`sample --seeds` (evaluation.shards, sde_cli.seeds): one image per seed in resumable shards,
the same on 1 and 2 gloo processes, after a SIGKILL of a rank, and refused when the provenance
differs. Each process runs one thread on a tiny built-in model."""

import json
import subprocess
import sys

import numpy as np
import pytest

from distributed_runs import ENV, REPO, free_port, kill_rank_when, no_temp_files, run, start
from evaluation.shards import ShardError, parse_seeds, read_shards
from sde_cli.app import main as cli

SEEDS = ["--seeds", "0-63", "--shard-size", "16", "--steps", "3", "--no-progress"]
NFE = 2 * 3  # PC with one corrector step: two score evaluations per step


def _start(argv, world=1):
    return start(["sample", *argv], world)


def _run(argv, world=1):
    return run(["sample", *argv], world)


def _evaluations(out):
    """(images, score evaluations) a rank reports."""
    line = next(s for s in out.splitlines() if s.startswith("rank "))
    words = line.split()
    return int(words[2]), int(words[words.index("score") - 1].rstrip(","))


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def one_process(checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("one")
    _run(["--checkpoint", str(checkpoint), *SEEDS, "--sample-batch", "8", "--out", str(folder)])
    return read_shards(folder)


def test_seed_lists_and_ranges():
    assert parse_seeds("0-3,7,10-11") == [0, 1, 2, 3, 7, 10, 11]
    for bad, message in (("5-2", "ends before"), ("1,1", "repeats seed 1"), ("a", "not a seed"),
                         ("0-99999999999", "more than")):
        with pytest.raises(ShardError, match=message):
            parse_seeds(bad)


def test_two_processes_give_the_images_of_one(checkpoint, one_process, tmp_path):
    samples, seeds = one_process
    assert samples.shape == (64, 8, 8, 1) and samples.dtype == np.uint8
    assert seeds.tolist() == list(range(64))
    assert len({s.tobytes() for s in samples}) == 64  # 64 different images
    same, other = tmp_path / "same", tmp_path / "other"
    outs = _run(["--checkpoint", str(checkpoint), *SEEDS, "--sample-batch", "8", "--out",
                 str(same)], world=2)
    assert [_evaluations(o) for o in outs] == [(32, 4 * NFE)] * 2  # two shards each
    got, got_seeds = read_shards(same)
    assert np.array_equal(got_seeds, seeds) and np.array_equal(got, samples)  # bitwise
    # Another batch size: the same images up to float round-off; stated tolerance: uint8
    # values differ by at most one level, in at most 1% of the pixels.
    _run(["--checkpoint", str(checkpoint), *SEEDS, "--sample-batch", "5", "--out", str(other)],
         world=2)
    got, _ = read_shards(other)
    diff = np.abs(got.astype(int) - samples.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.01
    no_temp_files(same)


def test_a_killed_rank_loses_only_its_unfinished_shard(checkpoint, one_process, tmp_path):
    folder = tmp_path / "killed"
    argv = ["--checkpoint", str(checkpoint), *SEEDS, "--sample-batch", "8", "--out", str(folder)]
    first_of_rank_0 = folder / "seeds_000000-000015.npz"  # rank 0: shards 0, 2; rank 1: 1, 3
    # rank 1 is killed inside one of its shards
    ((code, out, _),) = kill_rank_when(_start(argv, world=2), first_of_rank_0.exists)
    assert code == 1 and "rerun to finish" in out
    kept = sorted(folder.glob("seeds_*.npz"))
    assert len(kept) < 4 and not (folder / "seeds_000048-000063.npz").exists()
    for path in kept:  # no partial shard: each holds its 16 seeds
        assert len(np.load(path)["seeds"]) == 16
    # A kill inside an atomic write may leave that write's temporary file (never a shard
    # name); the rerun removes it.
    outs = _run(argv, world=2)
    todo = 64 - 16 * len(kept)
    assert f"{64 - todo} done, {todo} to sample" in outs[0]
    images, evaluations = zip(*(_evaluations(o) for o in outs))
    assert sum(images) == todo and sum(evaluations) == (todo // 8) * NFE  # only what was lost
    got, got_seeds = read_shards(folder)
    assert np.array_equal(got, one_process[0]) and np.array_equal(got_seeds, one_process[1])
    no_temp_files(folder)


def test_provenance_mismatch_is_refused_naming_what_differs(checkpoint, tmp_path, capsys):
    folder = tmp_path / "set"
    base = ["sample", "--checkpoint", str(checkpoint), "--seeds", "0-3", "--shard-size", "4",
            "--steps", "3", "--no-progress", "--out", str(folder)]
    assert cli(base) == 0
    first = (folder / "seeds_000000-000003.npz").read_bytes()
    assert cli(base + ["--snr", "0.2"]) == 1
    err = capsys.readouterr().err
    assert "differences" in err and "sampler.snr: 0.16 -> 0.2" in err
    other = checkpoint.parent.parent / "checkpoints" / "checkpoint_1.pth"
    assert cli(["sample", "--checkpoint", str(other), *base[3:]]) == 1
    assert "checkpoint.sha256" in capsys.readouterr().err
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["provenance"]["sampler"]["corrector_options"] == {"norm": "sample"}
    assert cli(base + ["--snr", "0.2", "--fresh"]) == 0  # the old set is moved aside, kept
    (moved,) = folder.glob("previous-*")
    assert (moved / "seeds_000000-000003.npz").read_bytes() == first
    assert (moved / "manifest.json").is_file()


def test_accelerate_launch_gives_the_images_of_one_process(checkpoint, one_process, tmp_path):
    """`accelerate launch` sets the environment torchrun sets (RANK, WORLD_SIZE, MASTER_*): the
    toolkit runs under it unchanged. --multi_gpu only picks accelerate's torchrun-style
    launcher; on this CPU machine the ranks use gloo."""
    out = tmp_path / "accelerate"
    env = dict(ENV, HF_HOME=str(tmp_path / "hf"))  # no user accelerate config is read
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                        "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                        "-m", "sde_lib.run", "sample", "--checkpoint", str(checkpoint), *SEEDS,
                        "--sample-batch", "8", "--device", "cpu", "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "on 2 process(es)" in r.stdout
    ranks = sorted(line.split(":")[0] for line in r.stdout.splitlines() if line.startswith("rank "))
    assert ranks == ["rank 0", "rank 1"]
    got, got_seeds = read_shards(out)
    samples, seeds = one_process
    assert np.array_equal(got_seeds, seeds) and np.array_equal(got, samples)  # bitwise


def test_a_shard_that_is_a_pickle_or_broken_is_named_without_unsafe_advice(tmp_path):
    import pickle
    from evaluation.shards import ShardError, read_shard
    pickled, broken = tmp_path / "seeds_0-3.npz", tmp_path / "seeds_4-7.npz"
    pickled.write_bytes(pickle.dumps({"samples": 1}))
    broken.write_bytes(b"PK\x03\x04" + b"garbage" * 20)
    for path in (pickled, broken):
        with pytest.raises(ShardError) as e:
            read_shard(path)
        text = str(e.value)
        assert str(path) in text and "allow_pickle" not in text and "unsafe" not in text, text


def test_a_request_of_too_many_shard_files_is_refused_before_the_model_loads(tmp_path, capsys):
    from evaluation.shards import MAX_SHARDS, ShardError, check_shard_count
    from sde_cli.app import main as cli
    assert check_shard_count(list(range(10)) + [2500], 1000) == 2
    with pytest.raises(ShardError, match="--shard-size"):
        check_shard_count(list(range(MAX_SHARDS + 1)), 1)
    out = tmp_path / "out"
    assert cli(["sample", "--workdir", str(tmp_path / "no_run"), "--seeds",
                f"0-{MAX_SHARDS}", "--shard-size", "1", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "shard files" in err and "checkpoint" not in err and not out.exists()
