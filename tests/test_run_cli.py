"""The command line `python -m sde_lib.run`: the main job (shrunk by --quick), sample, eval."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sde_lib import run

REPO = Path(__file__).resolve().parents[1]
TINY = ["--config.model.nf=8", "--config.model.num_scales=50", "--no-progress"]


def test_config_overrides_and_command_selection():
    rest, over = run.split_config_overrides(
        ["--sde", "vp", "--config.training.n_iters=5", "--config.optim.lr", "0.1", "--quick"])
    assert rest == ["--sde", "vp", "--quick"]
    assert over == ["training.n_iters=5", "optim.lr=0.1"]
    assert run._pick_command(["sample", "--steps", "3"]) == ("sample", ["--steps", "3"])
    assert run._pick_command(["--workdir", "w", "--mode", "train"]) == ("train", ["--workdir", "w"])
    assert run._pick_command(["--sde", "ve"]) == ("main", ["--sde", "ve"])
    with pytest.raises(SystemExit, match="unknown command 'bogus'"):
        run._pick_command(["bogus"])


def test_load_run_config_order():
    from training.commands import load_run_config
    parser = __import__("argparse").ArgumentParser()
    run.add_common_arguments(parser)
    run.add_sampler_arguments(parser)
    args = parser.parse_args(["--sde", "subvp", "--sampler", "ode", "--seed", "3"])
    args.config_overrides = ["training.batch_size=7", "sampling.snr=0.2"]
    c = load_run_config(args)
    assert c.training.sde == "subvpsde" and c.sampling.method == "ode" and c.seed == 3
    assert c.training.batch_size == 7 and c.sampling.snr == 0.2 and c.data.centered


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The main job, as a user runs it, shrunk to seconds by --quick."""
    workdir = tmp_path_factory.mktemp("main") / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "sde_lib.run", "--sde", "ve", "--sampler", "pc",
                           "--quick", "--workdir", str(workdir), "-n", "16", *TINY],
                          cwd=REPO, env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return workdir


def test_main_job_writes_png_and_summary(trained):
    from PIL import Image
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["sde"] == "vesde" and summary["sample"]["options"]["sampler"] == "pc"
    assert summary["train"]["step"] == 20 and summary["sample"]["num_samples"] == 16
    with Image.open(summary["png"]) as im:  # 4 x 4 tiles of 48 pixels, 2-pixel separators
        assert im.size == (4 * 50 + 2, 4 * 50 + 2) and im.mode == "L"
    assert (trained / "samples_pixels.png").is_file()
    with np.load(summary["npz"]) as z:
        assert z["samples"].shape == (16, 8, 8, 1) and z["samples"].dtype == np.uint8
    records = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert {"start", "train", "end"} <= {r["event"] for r in records}
    assert all({"step", "loss", "lr", "time"} <= set(r) for r in records if r["event"] == "train")


def test_sample_command_from_workdir(trained, tmp_path):
    out = tmp_path / "s"
    code = run.main(["sample", "--workdir", str(trained), "--steps", "4", "-n", "6",
                     "--snr", "0.1", "--out", str(out), "--stem", "grid", "--no-progress"])
    assert code == 0
    with np.load(out / "grid.npz") as z:
        assert z["samples"].shape == (6, 8, 8, 1)
    info = json.loads((out / "grid.json").read_text())
    assert info["options"]["steps"] == 4 and info["options"]["snr"] == 0.1
    assert (out / "grid.png").is_file()


def test_sample_command_needs_a_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint"):
        run.main(["sample", "--workdir", str(tmp_path), "--no-progress"])


def test_eval_command_reports_the_test_loss(trained):
    code = run.main(["eval", "--workdir", str(trained), "--num_images", "64", "--no-progress"])
    assert code == 0
    reports = sorted((trained / "eval").glob("report_ckpt_*.json"))
    assert reports and np.isfinite(json.loads(reports[-1].read_text())["eval_loss"])


def test_likelihood_command_writes_bits_per_dim(trained, tmp_path):
    pytest.importorskip("likelihood.evaluate")
    code = run.main(["likelihood", "--workdir", str(trained), "--num_images", "2",
                     "--batch", "2", "--rtol", "1e-3", "--atol", "1e-3", "--out", str(tmp_path),
                     "--no-progress"])
    assert code == 0
    res = json.loads((tmp_path / "bpd_test.json").read_text())
    assert res["bpd_num_images"] == 2 and res["bpd_levels"] == 17 and np.isfinite(res["bpd"])


def test_sample_command_on_an_original_checkpoint(tmp_path):
    """An original score_sde_pytorch .pth with its config name and overrides (shared fixture)."""
    fixtures = REPO.parent / "shared" / "fixtures" / "score_sde_pytorch"
    index = fixtures / "index.json"
    if not index.is_file():
        pytest.skip(f"score_sde_pytorch fixture not found under {fixtures}")
    entry = json.loads(index.read_text())["ve_ncsnpp_cifar"]
    overrides = [f"--config.{k}={tuple(v) if isinstance(v, list) else v}"
                 for k, v in entry["overrides"].items()]
    code = run.main(["sample", "--config", entry["config_module"], *overrides,
                     "--checkpoint", str(fixtures / "ve_ncsnpp_cifar.pth"), "--steps", "2",
                     "-n", "2", "--out", str(tmp_path), "--stem", "orig", "--no-progress"])
    assert code == 0
    with np.load(tmp_path / "orig.npz") as z:
        assert z["samples"].shape == (2, 16, 16, 3)


def test_sampler_options_follow_the_sampler():
    import configs
    from training.sampling import sampling_options
    c = configs.get_config("builtin/digits_ve")
    c.sampling.steps = 7
    assert sampling_options(c)["steps"] == 7 and sampling_options(c)["sampler"] == "pc"
    ode = sampling_options(c, sampler="ode")  # the adaptive ODE solver takes no step count
    assert ode["sampler"] == "ode" and "steps" not in ode
    assert sampling_options(c, sampler="heun", steps=3)["steps"] == 3


def test_sample_command_with_a_fast_sampler(trained, tmp_path):
    code = run.main(["sample", "--workdir", str(trained), "--sampler", "dpm_solver++",
                     "--steps", "3", "-n", "4", "--out", str(tmp_path), "--stem", "fast",
                     "--no-progress"])
    assert code == 0
    info = json.loads((tmp_path / "fast.json").read_text())
    assert info["options"]["sampler"] == "dpm_solver++" and info["nfe"] <= 5


@pytest.mark.parametrize("sde", ["vp", "subvp"])
def test_main_job_for_the_other_sdes(sde, tmp_path):
    code = run.main(["--sde", sde, "--sampler", "pc", "--quick", "-n", "4", "--workdir",
                     str(tmp_path), *TINY])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sde"] == {"vp": "vpsde", "subvp": "subvpsde"}[sde]
    assert (tmp_path / "samples.png").is_file()
