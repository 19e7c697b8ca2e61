"""The plain `sample` command's outputs (sde_cli.sample, sde_cli.outputs): a set (.png,
_pixels.png, .npz, .json) appears whole or not at all, also when the writer is SIGKILLed or the
disk is full; names are names; a request that cannot fit in memory is refused at once."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sde_cli import outputs
from sde_cli.app import main as cli
from sde_cli.errors import CLIError

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def only_error_line(text):
    lines = [s for s in text.splitlines() if s.strip()]
    assert "Traceback" not in text and lines and lines[-1].startswith("error: "), text
    return lines[-1]


def assert_sets_whole(folder):
    """Every file of `folder` belongs to a set whose JSON lists it, every listed file exists,
    and no temporary file or journal is left."""
    names = set(os.listdir(folder)) - {".lock"}
    assert not [n for n in names if n.startswith(".")], sorted(names)
    listed = set()
    for name in (n for n in names if n.endswith(".json")):
        info = json.loads((folder / name).read_text())
        files = [info[k] for k in ("png", "pixels_png", "npz")]
        assert all(os.path.isabs(p) and os.path.isfile(p) for p in files), info
        listed |= {os.path.basename(p) for p in files} | {name}
    assert names == listed, sorted(names - listed)


def test_sigkill_at_random_moments_leaves_whole_sets_only(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "sde_lib.run", "sample", "--checkpoint", str(tiny_checkpoint),
            "-n", "512", "--steps", "2", "--no-progress", "--out", str(out)]
    t0 = time.monotonic()
    subprocess.run(argv, cwd=REPO, env=ENV, check=True, capture_output=True, timeout=300)
    full = time.monotonic() - t0
    rng = random.Random(0)
    for _ in range(4):  # most kills land in sampling or in the writing of the grids
        p = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.6, 1.0) * full)
        p.send_signal(signal.SIGKILL)
        p.wait()
    proc = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_sets_whole(out)
    # the printed line names every file of the set it wrote
    written = proc.stdout.strip().splitlines()[-1].split(": ", 1)[1].split(", ")
    assert len(written) == 4 and all(os.path.isfile(p) for p in written)


def test_a_dead_writers_partial_set_is_removed_and_a_whole_one_kept(tmp_path):
    images = torch.rand(4, 1, 8, 8)
    files = outputs.sample_files(images, tmp_path, "a")
    outputs.commit_set(tmp_path, "a", files, {"x": 1})
    code = ("import os, sys, torch; from sde_cli import outputs; f = outputs.sample_files("
            "torch.rand(4, 1, 8, 8), sys.argv[1], 'b'); path, write = f['npz']; "
            "f['npz'] = (path, lambda p: os._exit(9)); outputs.commit_set(sys.argv[1], 'b', f, {})")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=ENV)
    assert proc.returncode == 9 and (tmp_path / "b.png").is_file()  # died mid-set
    removed = outputs.recover_sets(tmp_path)
    assert {os.path.basename(p) for p in removed} >= {"b.png", "b_pixels.png"}
    assert_sets_whole(tmp_path)
    assert json.loads((tmp_path / "a.json").read_text())["x"] == 1


def test_a_full_disk_keeps_nothing_of_the_set_and_names_file_and_folder(tmp_path):
    files = outputs.sample_files(torch.rand(4, 1, 8, 8), tmp_path, "s")

    def full(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    files["npz"] = (files["npz"][0], full)
    with pytest.raises(CLIError, match=r"cannot write s\.npz in folder .*No space left"):
        outputs.commit_set(tmp_path, "s", files, {})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["sample", "inpaint"])
@pytest.mark.parametrize("stem", ["../../x", "/abs/path", "..", "a/b", ".hidden"])
def test_a_stem_is_a_plain_name(command, stem, tiny_checkpoint, tmp_path, capsys):
    assert cli([command, "--checkpoint", str(tiny_checkpoint), "--stem", stem, "-n", "2",
                "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "not a plain file name" in only_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_a_request_too_large_for_memory_is_refused_at_once(tiny_checkpoint, tmp_path, capsys):
    t0 = time.monotonic()
    assert cli(["sample", "--checkpoint", str(tiny_checkpoint), "-n", "100000000000",
                "--sample-batch", "64", "--out", str(tmp_path), "--no-progress"]) == 1
    line = only_error_line(capsys.readouterr().err)
    assert "-n 100000000000 with --sample-batch 64" in line and "--seeds" in line
    assert time.monotonic() - t0 < 10


def test_inpaint_names_its_method_and_lists_its_files(tiny_checkpoint, tmp_path, capsys):
    assert cli(["inpaint", "--checkpoint", str(tiny_checkpoint), "-n", "2", "--steps", "2",
                "--method", "pigdm", "--out", str(tmp_path), "--no-progress"]) == 0
    info = json.loads((tmp_path / "inpaint_pc_pigdm_center_seed42.json").read_text())
    assert all(os.path.isabs(info[k]) and os.path.isfile(info[k])
               for k in ("original", "before", "after"))
    assert os.path.isabs(info["checkpoint"])
    assert "inpaint_pc_pigdm_center_seed42.json" in capsys.readouterr().out


def test_metrics_line_names_each_number():
    line = outputs.format_metrics({"metrics": {"fid": 12.345678, "num_samples": 64, "ok": True}})
    assert line == "metrics: fid 12.35, num_samples 64"
    assert "metrics not computed: ImportError" in outputs.format_metrics(
        {"metrics_error": "ImportError: no torch-fidelity"})
