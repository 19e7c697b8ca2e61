"""`python -m sde_lib.run eval` (sde_cli.eval, evaluation.sweep): the original's sweep over a
range of checkpoints, test loss, bits/dim and FID, each result a record keyed by the checkpoint's
bytes, the config and the settings; reused for the same work only, resumable after a kill, and
written only inside the workdir's eval folder. A tiny built-in model, few images, 3 sampler
steps, one thread."""

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

import sde_cli.eval as eval_cmd
from sde_base.fileio import save_torch
from sde_cli.app import main as cli

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
SWEEP = ["eval", "--stages", "loss,bpd,fid", "--num-images", "4", "--batch", "2", "--rtol",
         "1e-2", "--atol", "1e-2", "-n", "16", "--steps", "3", "--config.eval.batch_size=4",
         "--no-progress"]
REUSE = "recorded for the same checkpoint bytes and settings"


def strict_json(path):
    """The file's JSON, refusing NaN and infinities (not JSON)."""
    def refuse(token):
        raise ValueError(f"{path} holds {token}, which is not JSON")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


def copy_workdir(src, dest):
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


@pytest.fixture
def count_evaluations(monkeypatch):
    """Counts the checkpoints `eval` loads and the network evaluations they make."""
    counts = {"loads": 0, "evaluations": 0}
    real = eval_cmd.load_model

    def load(path, config, device):
        model = real(path, config, device)
        counts["loads"] += 1
        model.register_forward_hook(lambda *_: counts.__setitem__(
            "evaluations", counts["evaluations"] + 1))
        return model

    monkeypatch.setattr(eval_cmd, "load_model", load)
    return counts


def sweep(workdir, *extra, capsys=None):
    assert cli([*SWEEP, "--workdir", str(workdir), *extra]) == 0
    out = capsys.readouterr().out if capsys is not None else ""
    summary = strict_json(Path(workdir) / "eval" / "sweep.json")
    return out, {r["name"]: r for r in summary["checkpoints"]}


def records(workdir, folder="eval"):
    return {p.name: p.stat().st_mtime_ns for p in (Path(workdir) / folder / "records").iterdir()}


def numbers(rows):
    return {name: (r["loss"], r["bpd"], r["bpd_stderr"], r["fid"]) for name, r in rows.items()}


@pytest.fixture(scope="module")
def swept(tiny_checkpoint, tmp_path_factory):
    """A copy of the tiny workdir (checkpoint_1 at step 1, checkpoint_2 at step 2) swept once:
    (workdir, printed output, rows by name)."""
    workdir = copy_workdir(tiny_checkpoint.parent.parent, tmp_path_factory.mktemp("sweep") / "w")
    loads, real, out = [], eval_cmd.load_model, io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(out):
        mp.setattr(eval_cmd, "load_model", lambda *a: loads.append(a[0]) or real(*a))
        assert cli([*SWEEP, "--workdir", str(workdir)]) == 0
    assert len(loads) == 2
    summary = strict_json(workdir / "eval" / "sweep.json")
    return workdir, out.getvalue(), {r["name"]: r for r in summary["checkpoints"]}


# ----------------------------------------------------------------------------- records and reuse

def test_a_sweep_over_two_checkpoints_records_every_stage_and_ends_with_a_table(swept):
    workdir, out, rows = swept
    assert sorted(rows) == ["ckpt_1", "ckpt_2"]
    assert [rows[n]["step"] for n in ("ckpt_1", "ckpt_2")] == [1, 2]
    names = sorted(records(workdir))
    assert [n.split("_")[0] for n in names] == ["bpd"] * 2 + ["fid"] * 2 + ["loss"] * 2
    for row in rows.values():
        assert row["reused"] == []
        for stage, path in row["records"].items():
            record = strict_json(path)
            assert record["stage"] == stage and record["provenance"]["checkpoint"] == {
                "step": row["step"], "sha256": row["sha256"]}
        assert all(isinstance(row[k], float) for k in ("loss", "bpd", "bpd_stderr", "fid"))
        fid = row["results"]["fid"]
        assert fid["num_samples"] == 16 and fid["reference"]["extractor"] == "digits"
        assert row["results"]["bpd"]["num_images"] == 4
    # The two checkpoints' weights differ, and so do their numbers.
    assert rows["ckpt_1"]["sha256"] != rows["ckpt_2"]["sha256"]
    assert rows["ckpt_1"]["fid"] != rows["ckpt_2"]["fid"]
    table = out[out.index("checkpoint  step"):].splitlines()
    assert table[0].split() == ["checkpoint", "step", "loss", "bits/dim", "FID", "reused"]
    assert table[2].split()[:2] == ["ckpt_1", "1"] and "+-" in table[2]
    assert REUSE not in out


def test_a_rerun_recomputes_nothing(swept, tmp_path, count_evaluations, capsys):
    workdir = copy_workdir(swept[0], tmp_path / "w")  # records are keyed by bytes, not path
    before = records(workdir)
    out, rows = sweep(workdir, capsys=capsys)
    assert count_evaluations == {"loads": 0, "evaluations": 0}
    assert records(workdir) == before  # not rewritten
    assert out.count(f"reusing loss, bpd, fid {REUSE}") == 2
    assert numbers(rows) == numbers(swept[2])
    assert all(r["reused"] == ["loss", "bpd", "fid"] for r in rows.values())


def test_rewritten_checkpoint_bytes_recompute_that_checkpoint_only(swept, tmp_path,
                                                                   count_evaluations, capsys):
    workdir = copy_workdir(swept[0], tmp_path / "w")
    path = workdir / "checkpoints" / "checkpoint_1.pth"
    state = torch.load(path, weights_only=True)
    state["ema"]["shadow_params"] = [p + 1e-2 for p in state["ema"]["shadow_params"]]
    save_torch(state, path)  # same name and step, other weights
    before = records(workdir)
    out, rows = sweep(workdir, capsys=capsys)
    assert count_evaluations["loads"] == 1 and count_evaluations["evaluations"] > 0
    assert rows["ckpt_2"]["reused"] == ["loss", "bpd", "fid"]
    assert rows["ckpt_1"]["reused"] == [] and rows["ckpt_1"]["step"] == 1
    assert rows["ckpt_1"]["sha256"] != swept[2]["ckpt_1"]["sha256"]
    assert rows["ckpt_1"]["loss"] != swept[2]["ckpt_1"]["loss"]
    assert rows["ckpt_1"]["fid"] != swept[2]["ckpt_1"]["fid"]
    after = records(workdir)
    assert {k: after[k] for k in before} == before  # the old records are kept, untouched
    assert len(after) == len(before) + 3
    # Bytes, not names: checkpoint_1 given checkpoint_2's bytes reuses checkpoint_2's records.
    shutil.copyfile(workdir / "checkpoints" / "checkpoint_2.pth", path)
    count_evaluations["loads"] = 0
    out, rows = sweep(workdir, capsys=capsys)
    assert count_evaluations["loads"] == 0
    assert numbers(rows)["ckpt_1"] == numbers(rows)["ckpt_2"] == numbers(swept[2])["ckpt_2"]


def test_another_setting_recomputes_the_stages_it_changes(swept, tmp_path, count_evaluations,
                                                          capsys):
    workdir = copy_workdir(swept[0], tmp_path / "w")
    out, rows = sweep(workdir, "--steps", "4", "--end", "1", capsys=capsys)  # the sampler's
    assert list(rows) == ["ckpt_1"] and rows["ckpt_1"]["reused"] == ["loss", "bpd"]
    assert rows["ckpt_1"]["results"]["fid"]["sampler"]["steps"] == 4
    assert rows["ckpt_1"]["fid"] != swept[2]["ckpt_1"]["fid"]
    out, rows = sweep(workdir, "--seed", "7", "--end", "1", capsys=capsys)  # the data noise's
    assert rows["ckpt_1"]["reused"] == ["fid"]  # the images are functions of seeds 0..n-1
    assert rows["ckpt_1"]["loss"] != swept[2]["ckpt_1"]["loss"]
    out, rows = sweep(workdir, "--n-probes", "2", "--begin", "2", "--stages", "bpd",
                      capsys=capsys)  # a bits/dim flag
    assert list(rows) == ["ckpt_2"] and rows["ckpt_2"]["reused"] == []
    assert rows["ckpt_2"]["results"]["bpd"]["settings"]["n_probes"] == 2
    # One image: no standard error, written as null (valid JSON), shown as '-'.
    out, rows = sweep(workdir, "--num-images", "1", "--end", "1", "--stages", "bpd",
                      capsys=capsys)
    assert rows["ckpt_1"]["bpd_stderr"] is None and rows["ckpt_1"]["bpd"] is not None
    assert " +- -" in out


def test_a_killed_sweep_rerun_ends_equal_to_an_uninterrupted_one(swept, tmp_path, capsys):
    workdir = copy_workdir(swept[0], tmp_path / "w")
    shutil.rmtree(workdir / "eval")
    proc = subprocess.Popen([sys.executable, "-m", "sde_lib.run", *SWEEP, "--workdir",
                             str(workdir), "--end", "1"], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:  # kill it inside the bits/dim of the first checkpoint, after its first batch
        deadline = time.time() + 120
        while not list((workdir / "eval").glob("bpd_test_*.jsonl")):
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (workdir / "eval" / "sweep.json").exists()
    done = {n.split("_")[0] for n in records(workdir)}
    assert "fid" not in done
    out, rows = sweep(workdir, "--end", "1", capsys=capsys)
    assert "bits/dim: reusing 1 batch(es)" in out or "reusing bpd" in out
    if "loss" in done:
        assert f"ckpt_1 (step 1): reusing loss {REUSE}" in out
    assert numbers(rows) == {"ckpt_1": numbers(swept[2])["ckpt_1"]}
    left = [p for p in (workdir / "eval").rglob("*") if p.name.endswith(".tmp")]
    assert not left


# ----------------------------------------------------------------------------- where it writes

def test_the_eval_folder_is_a_plain_name_inside_the_workdir(swept, tmp_path, capsys):
    workdir = copy_workdir(swept[0], tmp_path / "w")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for name in ("../x", "..", "a/b", str(tmp_path / "abs"), ".hidden"):
        assert cli(["eval", "--workdir", str(workdir), "--eval-folder", name, "--stages",
                    "loss", "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert "--eval-folder" in err and "plain" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert cli(["eval", "--workdir", str(workdir), "--eval-folder", "mine", "--stages", "loss",
                "--num-images", "2", "--end", "1", "--no-progress"]) == 0
    assert (workdir / "mine" / "sweep.json").is_file()


def test_a_checkpoint_file_is_evaluated_into_the_given_workdir(swept, tmp_path, capsys):
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copyfile(swept[0] / "checkpoints" / "checkpoint_2.pth", loose / "c2.pth")
    (loose / "bad.pth").write_bytes((loose / "c2.pth").read_bytes()[:1000])
    target = tmp_path / "target"
    # An unreadable checkpoint: one error line, and nothing created (no folder, no lock).
    assert cli(["eval", "--checkpoint", str(loose / "bad.pth"), "--workdir", str(target),
                "--no-progress"]) == 1
    assert "bad.pth cannot be read" in capsys.readouterr().err
    assert not target.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["loose"]
    assert cli(["eval", "--checkpoint", str(loose / "c2.pth"), "--begin", "2"]) == 1
    assert "--begin" in capsys.readouterr().err
    # A readable one: the records and summary go under --workdir, not the file's grandparent.
    assert cli(["eval", "--checkpoint", str(loose / "c2.pth"), "--workdir", str(target),
                "--stages", "loss", "--num-images", "2", "--no-progress"]) == 0
    rows = strict_json(target / "eval" / "sweep.json")["checkpoints"]
    assert [(r["name"], r["step"]) for r in rows] == [("c2", 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loose", "target"]
    assert sorted(p.name for p in loose.iterdir()) == ["bad.pth", "c2.pth"]
    # Without --workdir, a checkpoint inside a workdir's checkpoints/ is evaluated into it.
    workdir = copy_workdir(swept[0], tmp_path / "w")
    shutil.rmtree(workdir / "eval")
    assert cli(["eval", "--checkpoint", str(workdir / "checkpoints" / "checkpoint_1.pth"),
                "--stages", "loss", "--num-images", "2", "--no-progress"]) == 0
    assert (workdir / "eval" / "sweep.json").is_file()


# ----------------------------------------------------------------------------- torchrun

def test_two_processes_share_the_work_and_give_the_numbers_of_one(swept, tmp_path, capsys):
    """Under torchrun (gloo, 2 processes) both ranks compute loss batches, bits/dim batches and
    sample shards; rank 0 writes the records and the summary, equal to a one-process sweep's."""
    workdir = copy_workdir(swept[0], tmp_path / "w")
    argv = [*SWEEP, "--workdir", str(workdir), "--end", "1", "--config.eval.batch_size=2",
            "--shard-size", "8"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [subprocess.Popen([sys.executable, "-m", "sde_lib.run", *argv, "--eval-folder",
                               "two"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=dict(ENV, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r),
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                                       SCORE_SDE_DIST_TIMEOUT="60"))
             for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)[-3000:]
    assert "rank 1: 8 images in 1 shards" in outs[1] and "checkpoint  step" not in outs[1]
    assert cli([*argv, "--eval-folder", "one"]) == 0
    two = strict_json(workdir / "two" / "sweep.json")["checkpoints"]
    one = strict_json(workdir / "one" / "sweep.json")["checkpoints"]
    assert numbers({r["name"]: r for r in two}) == numbers({r["name"]: r for r in one})
    assert len(two[0]["results"]["loss"]["all_losses"]) == 2  # one batch on each rank


def test_a_file_in_the_place_of_a_record_that_is_not_it_is_refused(tmp_path):
    from evaluation.sweep import RecordError, read_record, record_path, write_record
    assert read_record(tmp_path, "loss", "abc") is None
    write_record(tmp_path, "loss", "abc", {"checkpoint": {"step": 1}}, {"loss": float("nan")})
    assert read_record(tmp_path, "loss", "abc")["result"] == {"loss": None}  # valid JSON
    shutil.copyfile(record_path(tmp_path, "loss", "abc"), record_path(tmp_path, "bpd", "abc"))
    with pytest.raises(RecordError, match="not the eval record of bpd"):
        read_record(tmp_path, "bpd", "abc")
    Path(record_path(tmp_path, "fid", "abc")).write_text("{not json")
    with pytest.raises(RecordError, match="unreadable"):
        read_record(tmp_path, "fid", "abc")


def test_a_missing_inception_weights_file_is_one_error_before_any_work(swept, tmp_path, capsys):
    workdir = copy_workdir(swept[0], tmp_path / "w")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert cli(["eval", "--workdir", str(workdir), "--stages", "fid", "--extractor", "inception",
                "--inception-weights", str(tmp_path / "none.pth"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "inception" in err and "none.pth" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
