"""The command line (`python -m sde_lib.run`, package `sde_cli`) as a user meets it: the main job
shrunk by --quick, sample, eval, likelihood, and the checks and errors before any long work."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sde_cli import app, configuration, errors, flags, machine
from sde_cli.app import main as cli

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "data" / "score_sde_pytorch"
TINY = ["--config.model.nf=8", "--config.model.num_scales=50", "--no-progress"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
COMMANDS = ["main", "train", "sample", "eval", "likelihood", "advise", "inpaint", "colorize",
            "conditional", "metrics"]


def run_module(*argv, timeout=300):
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=ENV, capture_output=True,
                          timeout=timeout, text=True)


def only_error_line(text):
    """The one `error:` line a failed command prints (and no traceback)."""
    lines = [s for s in text.splitlines() if s.strip()]
    assert "Traceback" not in text, text
    assert lines and lines[-1].startswith("error: "), text
    return lines[-1]


# ----------------------------------------------------------------------------- parsing

def test_config_overrides_and_command_selection():
    rest, over = flags.split_config_overrides(
        ["--sde", "vp", "--config.training.n_iters=5", "--config.optim.lr", "0.1", "--quick"])
    assert rest == ["--sde", "vp", "--quick"]
    assert over == ["training.n_iters=5", "optim.lr=0.1"]
    assert app._pick_command(["sample", "--steps", "3"]) == ("sample", ["--steps", "3"])
    assert app._pick_command(["--workdir", "w", "--mode", "train"]) == ("train", ["--workdir", "w"])
    assert app._pick_command(["--sde", "ve"]) == ("main", ["--sde", "ve"])
    with pytest.raises(errors.CLIError, match="unknown command 'bogus'"):
        app._pick_command(["bogus"])


def test_load_run_config_order():
    _, args = app.parse("sample", ["--sde", "subvp", "--sampler", "ode", "--seed", "3",
                                   "--config.training.batch_size=7", "--config.sampling.snr=0.2"])
    c = configuration.load_run_config(args)
    assert c.training.sde == "subvpsde" and c.sampling.method == "ode" and c.seed == 3
    assert c.training.batch_size == 7 and c.sampling.snr == 0.2 and c.data.centered


def test_every_command_registers_itself_with_the_decorator_at_import():
    """One registration style: importing `sde_cli` registers each command module's own `run`
    (decorated with `@command`), nothing lazy."""
    import importlib
    assert app.COMMANDS.names() == sorted(COMMANDS)
    for name in COMMANDS:
        module = importlib.import_module(f"sde_cli.{name}")
        registered = app.COMMANDS.get(name)
        assert isinstance(registered, app.Command) and registered.run is module.run
        assert not hasattr(module, "COMMAND")


@pytest.mark.parametrize("name", COMMANDS)
def test_help_has_a_line_for_every_flag_and_one_flag_style(name, capsys):
    """Every flag has help text, every choice lists its names, every long flag has a
    --kebab-case spelling (the old --snake_case ones are accepted beside it)."""
    command = app.COMMANDS.get(name)
    parser = flags.new_parser("prog", command.help)
    command.add_arguments(parser)
    for action in parser._actions:
        if not action.option_strings or action.help == "==SUPPRESS==":
            continue
        assert action.help, f"{name}: {action.option_strings} has no help"
        longs = [s for s in action.option_strings if s.startswith("--")]
        assert any("_" not in s for s in longs), f"{name}: {longs} has no --kebab-case spelling"
        if action.choices:
            assert action.metavar is None or all(str(c) in action.help for c in action.choices)
    with pytest.raises(SystemExit):
        cli([name, "--help"])
    text = capsys.readouterr().out
    if name in ("main", "sample", "eval", "inpaint", "colorize", "conditional"):
        for sampler in ("pc", "ode", "heun", "dpm_solver++"):
            assert sampler in text
        assert "reverse_diffusion" in text and "langevin" in text
    if name == "inpaint":
        assert "center" in text and "random" in text and "tmpd" in text


# ----------------------------------------------------------------------------- errors up front

@pytest.mark.parametrize("argv, message", [
    (["--config", "no/such_config", "--quick"], "no/such_config"),
    (["--quick", "--config.model.nf=abc"], "model.nf"),
    (["--quick", "--config.training.n_iters=-5"], "n_iters must be a positive integer"),
    (["--quick", "--config.sampling.method=foo"], "unknown sampler 'foo'"),
    (["--quick", "--config.sampling.predictor=bar"], "unknown predictor 'bar'"),
    (["--quick", "--device", "cuda"] if not torch.cuda.is_available() else
     ["--quick", "--device", "cuda:99"], "--device cuda"),
])
def test_main_job_fails_before_training_with_one_error_line(argv, message, tmp_path, capsys):
    workdir = tmp_path / "w"
    t0 = time.time()
    assert cli([*argv, "--workdir", str(workdir), *TINY]) == 1
    line = only_error_line(capsys.readouterr().err)
    assert message in line
    assert not (workdir / "checkpoints").exists() and time.time() - t0 < 60


@pytest.mark.parametrize("argv, message", [
    (["sample", "--sampler", "foo"], "--sampler"), (["sample", "--steps", "0"], "--steps"),
    (["sample", "--snr", "inf"], "--snr"), (["sample", "--snr", "-1"], "--snr"),
    (["sample", "-n", "0"], "-n"), (["sample", "-n", "-3"], "-n"),
    (["sample", "--sample-eps", "-1"], "--sample-eps"),
    (["likelihood", "--num-images", "0"], "--num-images"),
    (["likelihood", "--num_images", "-3"], "--num-images"),
    (["likelihood", "--batch", "0"], "--batch"), (["inpaint", "--mask", "circle"], "--mask"),
    (["sample", "--no-such-flag"], "--no-such-flag"), (["eval", "--eps", "0.01"], "ambiguous"),
    (["sample", "--sampler-option", "variant=bh3"], "--sampler-option"),
    (["sample", "--sampler-option", "no_such_option=1"], "--sampler-option"),
    (["sample", "--sampler-option", "order"], "--sampler-option"),
])
def test_bad_flag_values_are_one_error_line_and_status_1(argv, message, capsys):
    """The parser's errors follow the rule of every expected error: one line, status 1 (not
    argparse's usage text and status 2)."""
    assert cli(argv) == 1
    captured = capsys.readouterr()
    line = only_error_line(captured.err)
    assert message in line and "usage:" not in captured.err + captured.out
    assert len([s for s in captured.err.splitlines() if s.strip()]) == 1


def test_a_misspelt_choice_gets_the_nearest_names(capsys):
    assert cli(["sample", "--sampler", "dpm_solver"]) == 1
    assert "did you mean 'dpm_solver++'" in only_error_line(capsys.readouterr().err)
    assert cli(["inpaint", "--mask", "centre"]) == 1
    assert "did you mean 'center'" in only_error_line(capsys.readouterr().err)
    assert cli(["smaple"]) == 1
    assert "did you mean 'sample'" in only_error_line(capsys.readouterr().err)


def test_an_override_without_a_value_does_not_take_the_next_flag():
    with pytest.raises(errors.CLIError, match="--config.sampling.snr needs a value"):
        flags.split_config_overrides(["--config.sampling.snr", "--no-progress"])
    with pytest.raises(errors.CLIError, match="needs a value"):
        flags.split_config_overrides(["--config.sampling.snr", "-n", "3"])
    assert flags.split_config_overrides(["--config.optim.lr", "-1e-3", "--quick"]) == (
        ["--quick"], ["optim.lr=-1e-3"])  # a negative number is a value


def test_a_misspelt_config_name_is_named_before_any_checkpoint_lookup(tmp_path, capsys):
    assert cli(["sample", "--config", "ve/cifar10_ncsnpp_continuos", "--workdir",
                str(tmp_path / "none"), "--no-progress"]) == 1
    line = only_error_line(capsys.readouterr().err)
    assert "unknown config 've/cifar10_ncsnpp_continuos'" in line
    assert "ve/cifar10_ncsnpp_continuous" in line and "no checkpoint" not in line


@pytest.mark.parametrize("override, message", [
    ("--config.optim.lr=-1", "config.optim.lr must be a finite positive number, got -1.0"),
    ("--config.model.sigma_max=inf", "config.model.sigma_max must be a finite positive"),
    ("--config.training.batch_size=-4", "config.training.batch_size must be a positive integer"),
    ("--config.model.sigma_min=9", "config.model.sigma_min (9.0) must be below"),
])
def test_config_values_are_checked_before_anything_is_created(override, message, tmp_path,
                                                              capsys):
    workdir = tmp_path / "w"
    assert cli(["train", "--quick", "--workdir", str(workdir), override, *TINY]) == 1
    assert message in only_error_line(capsys.readouterr().err)
    assert not workdir.exists()


def test_a_failed_start_leaves_no_skeleton_and_keeps_what_was_there(tmp_path, capsys):
    """A start that fails once the workdir is locked (here: no dataset) removes the folders
    and lock it created; in a folder that existed, what was there stays."""
    new = tmp_path / "new"
    npz = ["--config.data.dataset=NPZ", "--data-dir", str(tmp_path / "no_data")]
    assert cli(["train", "--quick", "--workdir", str(new), *npz, *TINY]) == 1
    line = only_error_line(capsys.readouterr().err)
    assert "cannot find" in line and ".;" not in line and "Looked in: " in line
    assert not new.exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "notes.txt").write_text("mine")
    assert cli(["--quick", "--workdir", str(old), *npz, *TINY]) == 1
    assert sorted(p.name for p in old.iterdir()) == [".lock", "notes.txt"]
    assert (old / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("command, extra", [
    ("colorize", []),  # refused after the output folder exists: the digits are grey
    ("conditional", ["--classifier", "CLASSIFIER", "--labels", "1"]),  # not a classifier
])
def test_every_command_that_fails_after_making_its_output_folder_leaves_no_skeleton(
        command, extra, tiny_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a classifier")
    extra = [str(bad) if a == "CLASSIFIER" else a for a in extra]
    out = tmp_path / "new" / "a" / "b"
    assert cli([command, "--checkpoint", str(tiny_checkpoint), "--out", str(out), *extra,
                "--no-progress"]) == 1
    only_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert cli([command, "--checkpoint", str(tiny_checkpoint), "--out", str(kept), *extra,
                "--no-progress"]) == 1
    assert (kept / "notes.txt").read_text() == "mine"


def test_multi_line_errors_become_one_readable_line():
    text = ("NPZ: cannot find an .npz file (or <dir>/train.npz).\nLooked in:\n  - data/npz\n"
            "  - data\nSave one with numpy.savez(...).\nno full stop here\nlast")
    assert app.one_line(text) == ("NPZ: cannot find an .npz file (or <dir>/train.npz). Looked "
                                  "in: data/npz, data. Save one with numpy.savez(...). no full "
                                  "stop here; last")


def test_config_help_says_a_python_config_is_executed_and_json_is_parsed(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["train", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "is Python and is EXECUTED" in text and ".json file" in text and "only parsed" in text


def test_every_command_gives_data_dir_one_meaning():
    helps = set()
    for name in COMMANDS:
        command = app.COMMANDS.get(name)
        parser = flags.new_parser("prog", command.help)
        command.add_arguments(parser)
        helps |= {a.help for a in parser._actions if "--data-dir" in a.option_strings}
    assert helps == {flags.DATA_DIR_HELP}


def test_a_json_config_is_parsed_and_trains_like_its_python_twin(tmp_path, capsys):
    import configs
    path = tmp_path / "mine.json"
    config = configs.get_config("builtin/digits_vp")
    config.model.nf = 8
    configs.save_config(config, path)
    evil = tmp_path / "evil.json"
    evil.write_text('{"__import__": "os"}')  # parsed as data: fails on its fields, runs nothing
    workdir = tmp_path / "w"
    assert cli(["train", "--config", str(path), "--quick", "--workdir", str(workdir),
                "--config.model.num_scales=50", "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["status"] == "done" and summary["step"] == 20
    assert cli(["train", "--config", str(evil), "--workdir", str(tmp_path / "e")]) == 1
    only_error_line(capsys.readouterr().err)


def test_train_json_is_alone_on_stdout_also_when_resuming(tmp_path, capsys):
    """`train --json | jq` works: the threads and resuming lines go to stderr."""
    base = ["train", "--quick", "--workdir", str(tmp_path / "w"), *TINY, "--json"]
    assert cli([*base, "--stop-after", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "stopped"
    assert cli([*base, "--stop-after", "1"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["start_step"] == 1 and "resuming from" in err


def test_quick_never_does_more_than_the_default():
    import configs
    for sampler, steps in (("pc", 25), ("dpm_solver++", None), ("unipc", None)):
        _, args = app.parse("main", ["--quick", "--sampler", sampler])
        config = configuration.load_run_config(args)
        assert config.sampling.get("steps", None) == steps
        assert args.num_samples == 16
    _, args = app.parse("main", ["--quick", "-n", "40"])
    configuration.load_run_config(args)
    assert args.num_samples == 40  # asked for: kept
    _, args = app.parse("main", [])
    config = configuration.load_run_config(args)
    assert args.num_samples == 64 and config.sampling.get("steps", None) is None
    assert configs.get_config("builtin/digits_ve").eval.num_samples > 16


def test_the_training_summary_is_readable_and_its_json_is_valid(tmp_path, capsys):
    workdir = tmp_path / "w"
    base = ["train", "--quick", "--workdir", str(workdir), *TINY]
    assert cli([*base, "--stop-after", "1", "--json"]) == 0  # no loss logged in one step

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON: {c}"))

    summary = strict(capsys.readouterr().out.splitlines()[-1])
    assert summary["status"] == "stopped" and summary["final_loss"] is None
    assert cli(base) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("trained to step 20 (19 steps in this run") and "final loss" in last
    from sde_cli.train import summary_lines
    preempted = dict(summary, status="preempted", step=7, start_step=0)
    assert summary_lines(preempted)[0].startswith("training preempted at step 7")
    assert "rerun the same command to resume" in summary_lines(preempted)[0]


def test_expected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    junk = tmp_path / "random.pth"
    junk.write_bytes(os.urandom(4096))
    proc = run_module("-m", "sde_lib.run", "sample", "--checkpoint", str(junk), "--config",
                      "builtin/digits_ve", "--no-progress")
    assert proc.returncode == 1
    line = only_error_line(proc.stderr)
    assert "not a checkpoint" in line and "unpickl" not in line
    proc = run_module("-m", "sde_lib.run", "sample", "--workdir", str(tmp_path / "empty"))
    assert proc.returncode == 1 and "no checkpoint in" in only_error_line(proc.stderr)
    proc = run_module("-m", "sde_lib.run", "sample", "--checkpoint", str(junk), "--config",
                      "builtin/digits_ve", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_the_likelihood_progress_counts_images(tmp_path, capsys):
    from evaluation.bits_per_dim import evaluate_split
    from training.data import ImageArrayDataset
    from sde_lib import VPSDE, oracle
    sde = VPSDE()
    p_t = oracle.gaussian(torch.zeros(4), event_shape=(1, 2, 2)).marginal(sde)
    data = ImageArrayDataset(torch.randint(0, 256, (6, 1, 2, 2), dtype=torch.uint8))
    evaluate_split(p_t.score, sde, data,
                   data_range=(-1, 1), batch_size=4, out=str(tmp_path / "r.jsonl"), seed=0,
                   key="k", progress=True, rtol=1e-3, atol=1e-3)
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert any("6/6" in line and "image" in line for line in bar), bar


def test_pixel_levels_follow_one_rule():
    from ml_collections import ConfigDict
    from sde_cli.likelihood import pixel_levels
    config = ConfigDict({"data": {"dataset": "NPZ"}})

    class Floats:
        levels = None

    class Digits:
        levels = 17

    plain = ConfigDict({"levels": None, "bits": None})
    assert pixel_levels(plain, Digits(), config) == 17
    assert pixel_levels(ConfigDict({"levels": 256, "bits": None}), Floats(), config) == 256
    assert pixel_levels(ConfigDict({"levels": None, "bits": 5}), Floats(), config) == 32
    with pytest.raises(errors.CLIError, match="pass --levels"):
        pixel_levels(plain, Floats(), config)


def test_random_mask_is_drawn_on_the_cpu_from_the_seed():
    """The mask does not use the run's (possibly CUDA) generator: same seed, same mask, on any
    device, whatever the global RNG state."""
    from sde_cli.inpaint import make_mask
    torch.manual_seed(1)
    a = make_mask("random", (3, 1, 8, 8), seed=5)
    torch.manual_seed(2)
    b = make_mask("random", (3, 1, 8, 8), seed=5)
    assert torch.equal(a, b) and a.device.type == "cpu" and 0 < a.mean() < 1
    assert not torch.equal(a, make_mask("random", (3, 1, 8, 8), seed=6))


def test_threads_rule(monkeypatch, capsys):
    import configs
    _, args = app.parse("sample", ["--threads", "1"])
    before = torch.get_num_threads()
    try:
        config = configs.get_config("builtin/digits_ve")
        assert machine.choose_threads(args, config, torch.device("cpu")) == 1
        assert torch.get_num_threads() == 1 and "threads: 1 (--threads)" in capsys.readouterr().out
        _, args = app.parse("sample", [])
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(machine, "physical_cores", lambda: 2)
        for idle, want in ((1.9, 2), (1.4, 1), (0.6, 1), (0.0, 1)):  # idle cores, at least 1
            monkeypatch.setattr(machine, "idle_cpus", lambda window=0.25: idle)
            for name in ("builtin/digits_ve", "ve/cifar10_ncsnpp_continuous"):  # every model
                config = configs.get_config(name)
                assert machine.choose_threads(args, config, torch.device("cpu")) == want
                assert f"threads: {want} (2 physical cores, {idle:.1f} idle now" in \
                    capsys.readouterr().out
        monkeypatch.setattr(machine, "physical_cores", lambda: 8)  # 4 torchrun ranks share 8
        every = float(len(os.sched_getaffinity(0)))  # every logical CPU idle
        monkeypatch.setattr(machine, "idle_cpus", lambda window=0.25: every)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
        assert machine.choose_threads(args, config, torch.device("cpu")) == 2
        assert "threads: 2 (8 physical cores, 8.0 idle now, 4 processes here" in \
            capsys.readouterr().out
        monkeypatch.delenv("LOCAL_WORLD_SIZE")
        monkeypatch.setattr(machine, "physical_cores", lambda: 2)
        monkeypatch.setattr(machine, "idle_cpus", lambda window=0.25: None)  # no /proc/stat
        for load, want in ((0.1, 2), (0.8, 1), (1.4, 1), (7.0, 1)):  # the load average then
            monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
            config = configs.get_config("builtin/digits_ve")
            assert machine.choose_threads(args, config, torch.device("cpu")) == want
            assert f"threads: {want} (2 physical cores, load {load:.1f}" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)


def test_idle_cpus_sums_each_cpus_idle_share(monkeypatch):
    """Idle share per CPU over the window (idle + iowait over all jiffies, steal included)."""
    readings = iter([{0: (100, 1000), 1: (50, 1000)},    # before
                     {0: (190, 1100), 1: (55, 1100)}])   # after: cpu0 90% idle, cpu1 5%
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(machine, "cpu_times", lambda cpus: next(readings))
    assert machine.idle_cpus(window=0) == pytest.approx(0.95)
    monkeypatch.setattr(machine, "cpu_times", lambda cpus: {})  # /proc/stat unreadable
    assert machine.idle_cpus(window=0) is None


def test_cpu_times_reads_this_machine():
    cpus = os.sched_getaffinity(0)
    times = machine.cpu_times(cpus)
    assert set(times) == set(cpus) and all(0 <= i <= t for i, t in times.values())
    assert 0 <= machine.idle_cpus(window=0.05) <= len(cpus) + 1e-9


# ----------------------------------------------------------------------------- a trained run

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The main job, as a user runs it, shrunk to seconds by --quick."""
    workdir = tmp_path_factory.mktemp("main") / "run"
    proc = run_module("-m", "sde_lib.run", "--sde", "ve", "--sampler", "pc", "--quick",
                      "--workdir", str(workdir), "-n", "16", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "threads: 1" in proc.stdout
    return workdir


def test_main_job_writes_png_and_summary_named_by_what_made_them(trained):
    from PIL import Image
    summary = json.loads((trained / "samples" / "samples_pc_25steps_seed42.json").read_text())
    assert summary["sde"] == "vesde" and summary["sample"]["options"]["sampler"] == "pc"
    assert summary["train"]["step"] == 20 and summary["sample"]["num_samples"] == 16
    assert summary["train"]["seconds_total"] > 0
    with Image.open(summary["png"]) as im:  # 4 x 4 tiles of 48 pixels, 2-pixel separators
        assert im.size == (4 * 50 + 2, 4 * 50 + 2) and im.mode == "L"
    assert (trained / "samples" / "samples_pc_25steps_seed42_pixels.png").is_file()
    with np.load(summary["npz"]) as z:
        assert z["samples"].shape == (16, 8, 8, 1) and z["samples"].dtype == np.uint8
    records = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert {"start", "train", "end"} <= {r["event"] for r in records}


def test_rerun_with_another_sampler_keeps_the_first_outputs(trained, capsys):
    first = (trained / "samples" / "samples_pc_25steps_seed42.json").read_bytes()
    assert cli(["--sde", "ve", "--sampler", "ode", "--quick", "--workdir", str(trained), "-n",
                "4", *TINY]) == 0
    out = capsys.readouterr().out
    assert (trained / "samples" / "samples_pc_25steps_seed42.json").read_bytes() == first
    summary = json.loads((trained / "samples" / "samples_ode_seed42.json").read_text())
    assert summary["train"]["steps_this_run"] == 0
    before = json.loads(first)["train"]["seconds_total"]  # not the 0 s of this run alone
    assert before <= summary["train"]["seconds_total"] < before + 2
    used = summary["sample"]["options"]   # the ODE sampler's options, and no PC ones
    assert set(used) == {"sampler", "denoise", "eps", "rtol", "atol", "method", "ode_options"}
    assert "0 steps in this run" in out


def test_sample_command_from_workdir(trained, tmp_path):
    out = tmp_path / "s"
    code = cli(["sample", "--workdir", str(trained), "--steps", "4", "-n", "6",
                "--snr", "0.1", "--out", str(out), "--stem", "grid", "--no-progress"])
    assert code == 0
    with np.load(out / "grid.npz") as z:
        assert z["samples"].shape == (6, 8, 8, 1)
    info = json.loads((out / "grid.json").read_text())
    assert info["options"]["steps"] == 4 and info["options"]["snr"] == 0.1
    # Same command again: numbered, not overwritten.
    assert cli(["sample", "--workdir", str(trained), "--steps", "4", "-n", "2", "--out",
                str(out), "--stem", "grid", "--no-progress"]) == 0
    with np.load(out / "grid.npz") as z:
        assert len(z["samples"]) == 6
    with np.load(out / "grid_2.npz") as z:
        assert len(z["samples"]) == 2


def test_sample_checks_the_output_folder_before_sampling(trained, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    t0 = time.time()
    assert cli(["sample", "--workdir", str(trained), "--out", str(blocker / "sub"), "-n", "2",
                "--no-progress"]) == 1
    assert "cannot write to" in only_error_line(capsys.readouterr().err)
    assert time.time() - t0 < 30


def test_sample_command_with_a_fast_sampler(trained, tmp_path):
    code = cli(["sample", "--workdir", str(trained), "--sampler", "dpm_solver++",
                "--steps", "3", "-n", "4", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    info = json.loads((tmp_path / "samples_dpm_solverpp_3steps_seed42.json").read_text())
    assert info["options"]["sampler"] == "dpm_solver++" and info["nfe"] <= 5
    assert "snr" not in info["options"] and "predictor" not in info["options"]


def test_eval_reports_the_test_loss_and_keeps_the_two_eps_apart(trained, capsys):
    assert cli(["eval", "--workdir", str(trained), "--eps", "0.01"]) == 1
    assert "ambiguous" in capsys.readouterr().err
    code = cli(["eval", "--workdir", str(trained), "--num-images", "2", "--batch", "2",
                "--rtol", "1e-2", "--atol", "1e-2", "--sample-eps", "0.05",
                "--config.eval.enable_bpd=True", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.count("threads:") == 1  # one rule, one line, for both checkpoints
    rows = json.loads((trained / "eval" / "sweep.json").read_text())["checkpoints"]
    assert np.isfinite(rows[-1]["loss"]) and np.isfinite(rows[-1]["bpd"])
    # the likelihood's own default, not --sample-eps
    assert rows[-1]["results"]["bpd"]["eps"] == 1e-5


def test_likelihood_is_recomputed_after_more_training(tmp_path, capsys):
    """Train, bits/dim; train on with the same checkpoint path; bits/dim again through both
    commands: the saved records of the old weights are never reused."""
    workdir = tmp_path / "w"
    base = ["--config", "builtin/digits_vp", "--workdir", str(workdir), *TINY,
            "--config.training.batch_size=8", "--config.training.snapshot_freq=10",
            "--config.training.eval_freq=0"]
    assert cli(["train", *base, "--config.training.n_iters=10"]) == 0
    bpd_args = ["--num-images", "2", "--batch", "2", "--rtol", "1e-2", "--atol", "1e-2",
                "--no-progress"]
    meta = workdir / "checkpoints-meta" / "checkpoint.pth"
    assert cli(["likelihood", "--checkpoint", str(meta), *bpd_args]) == 0
    first = capsys.readouterr().out
    assert "reusing" not in first
    assert cli(["likelihood", "--checkpoint", str(meta), *bpd_args]) == 0  # reused: same work
    again = capsys.readouterr().out
    assert again.splitlines()[-1] == first.splitlines()[-1]
    assert "bits/dim: reusing 1 batch(es) (2 images) recorded in" in again
    assert cli(["train", *base, "--config.training.n_iters=20"]) == 0
    capsys.readouterr()
    assert cli(["likelihood", "--checkpoint", str(meta), *bpd_args]) == 0
    second = capsys.readouterr().out
    assert second.splitlines()[-1] != first.splitlines()[-1]
    records = sorted((workdir / "eval").glob("bpd_test_*.jsonl"))
    assert len(records) == 2
    # python -m likelihood.evaluate: config from the checkpoint, same number as `likelihood`.
    out = tmp_path / "again.jsonl"
    proc = run_module("-m", "likelihood.evaluate", "--checkpoint", str(meta), "--out",
                      str(out), *bpd_args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1].split(" (")[0] == second.splitlines()[-1].split(" (")[0]
    # A records file of other work is refused, and --fresh replaces it.
    assert cli(["likelihood", "--checkpoint", str(meta), "--records", str(out),
                "--n-probes", "2", *bpd_args]) == 1
    assert "not reused" in only_error_line(capsys.readouterr().err)
    assert cli(["likelihood", "--checkpoint", str(meta), "--records", str(out),
                "--n-probes", "2", "--fresh", *bpd_args]) == 0
    # The variational bound and the truncated-normal dequantization: records of their own.
    for extra in (["--method", "bound", "--n-samples", "4"],
                  ["--method", "bound", "--n-samples", "4", "--dequantize", "truncated_normal"]):
        assert cli(["likelihood", "--checkpoint", str(meta), *extra, *bpd_args]) == 0
        assert "upper bound" in capsys.readouterr().out
    records = sorted((workdir / "eval").glob("bpd_test_*.jsonl"))
    assert len(records) == 4
    kinds = {(r["method"], r["dequantize"]) for p in records for r in map(json.loads, p.read_text().splitlines())}
    assert kinds == {("ode", "uniform"), ("bound", "uniform"), ("bound", "truncated_normal")}


def test_second_writer_of_a_workdir_gets_the_lock_message(tmp_path, capsys):
    workdir = tmp_path / "locked"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from sde_base.fileio import WorkdirLock; "
         f"WorkdirLock({str(workdir)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli(["train", "--quick", "--workdir", str(workdir), *TINY]) == 1
        line = only_error_line(capsys.readouterr().err)
        assert f"pid {holder.pid}" in line and "host" in line
    finally:
        holder.kill()
        holder.wait()
    assert cli(["train", "--quick", "--workdir", str(workdir), *TINY]) == 0  # holder gone


def test_sample_command_on_an_original_checkpoint(tmp_path):
    """An original score_sde_pytorch .pth (the fixture copy in tests/data) with its config name
    and overrides."""
    entry = json.loads((FIXTURE / "index.json").read_text())["ve_ncsnpp_cifar"]
    overrides = [f"--config.{k}={tuple(v) if isinstance(v, list) else v}"
                 for k, v in entry["overrides"].items()]
    code = cli(["sample", "--config", entry["config_module"], *overrides,
                "--checkpoint", str(FIXTURE / "ve_ncsnpp_cifar.pth"), "--steps", "2",
                "-n", "2", "--out", str(tmp_path), "--stem", "orig", "--no-progress"])
    assert code == 0
    with np.load(tmp_path / "orig.npz") as z:
        assert z["samples"].shape == (2, 16, 16, 3)


def test_a_config_mismatch_says_how_to_fix_it_on_the_command_line(trained, capsys):
    ckpt = trained / "checkpoints-meta" / "checkpoint.pth"
    assert cli(["sample", "--checkpoint", str(ckpt), "--sde", "ve", "-n", "2",
                "--config.model.nf=16", "--no-progress"]) == 1
    line = only_error_line(capsys.readouterr().err)
    assert "--config.model." in line and "check_config" not in line


@pytest.mark.parametrize("argv, field, trained_value, asked", [
    (["sample", "--config.training.sde=vpsde", "--sampler", "unipc"], "training.sde",
     "'vesde'", "--config.training.sde=vpsde asks for 'vpsde'"),
    (["sample", "--sde", "vp"], "training.sde", "'vesde'", "--sde vp asks for 'vpsde'"),
    (["sample", "--config.model.sigma_max=10"], "model.sigma_max", "5.0", "10.0"),
    (["sample", "--config.training.continuous=False"], "training.continuous", "True", "False"),
    (["likelihood", "--config.data.centered=True"], "data.centered", "False", "True"),
    (["eval", "--config.training.sde=subvpsde"], "training.sde", "'vesde'", "'subvpsde'"),
    (["inpaint", "--config.model.num_scales=7"], "model.num_scales", "50", "7"),
    (["conditional", "--classifier", "c.pt", "--labels", "1", "--train-steps", "1",
      "--config.training.sde=vpsde"],
     "training.sde", "'vesde'", "'vpsde'"),
    (["train", "--quick", "--config.model.nf=8", "--config.model.num_scales=50",
      "--config.training.sde=vpsde"], "training.sde", "'vesde'", "'vpsde'"),
    (["main", "--quick", "--config.model.nf=8", "--config.model.num_scales=50", "--sde", "vp",
      "--config", "builtin/digits_ve"], "training.sde", "'vesde'", "'vpsde'"),
])
def test_an_override_that_changes_what_the_weights_mean_is_refused(trained, argv, field,
                                                                  trained_value, asked, capsys):
    """The checkpoint's stored config fixes the SDE and its parameters, the network, the data
    scaling and the noise labels: contradicting it (which gave noise, silently) is refused on
    every command that loads a checkpoint, naming the field and both values."""
    before = sorted(p.relative_to(trained) for p in trained.rglob("*"))
    assert cli([*argv, "--workdir", str(trained), "-n", "2", "--no-progress"]
               if argv[0] not in ("train", "main", "eval", "likelihood") else
               [*argv, "--workdir", str(trained), "--no-progress"]) == 1
    line = only_error_line(capsys.readouterr().err)
    assert f"{field} is {trained_value} there" in line and asked in line
    assert sorted(p.relative_to(trained) for p in trained.rglob("*")) == before


def test_sampler_options_follow_the_sampler():
    import configs
    from training.sampling import sampling_options
    c = configs.get_config("builtin/digits_ve")
    c.sampling.steps = 7
    assert sampling_options(c)["steps"] == 7 and sampling_options(c)["sampler"] == "pc"
    ode = sampling_options(c, sampler="ode")  # the adaptive ODE solver takes no step count
    assert ode["sampler"] == "ode" and "steps" not in ode
    assert not {"predictor", "corrector", "snr", "n_corrector_steps"} & set(ode)
    assert sampling_options(c, sampler="ode", snr=0.3)["snr"] == 0.3   # given: passed on
    assert sampling_options(c, sampler="heun", steps=3)["steps"] == 3


@pytest.mark.parametrize("sde", ["vp", "subvp"])
def test_main_job_for_the_other_sdes(sde, tmp_path):
    code = cli(["--sde", sde, "--sampler", "pc", "--quick", "-n", "4", "--workdir",
                str(tmp_path), *TINY])
    assert code == 0
    summary = json.loads((tmp_path / "samples" / "samples_pc_25steps_seed42.json").read_text())
    assert summary["sde"] == {"vp": "vpsde", "subvp": "subvpsde"}[sde]
    assert (tmp_path / "samples" / "samples_pc_25steps_seed42.png").is_file()


def test_sample_and_likelihood_from_a_diffusers_pipeline_folder(tmp_path, capsys):
    """`--diffusers DIR`: a diffusers DDPM pipeline folder (unet/ + scheduler/) sampled by the
    toolkit's samplers; bits/dim of a dataset that is not there is one clear error."""
    from diffusers import DDPMScheduler, UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 32),
                       layers_per_block=1, norm_num_groups=32, norm_eps=1e-6,
                       attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1,
                       downsample_padding=0, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    DDPMScheduler(num_train_timesteps=100, beta_start=1e-3, beta_end=0.05).save_pretrained(
        tmp_path / "pipe" / "scheduler")
    out = tmp_path / "out"
    assert cli(["sample", "--diffusers", str(tmp_path / "pipe"), "-n", "3", "--sampler",
                "dpm_solver++", "--steps", "3", "--out", str(out), "--no-progress"]) == 0
    info = json.loads((out / "samples_dpm_solverpp_3steps_seed42.json").read_text())
    assert info["checkpoint"] == str(tmp_path / "pipe") and info["sde"] == "vpsde"
    with np.load(out / "samples_dpm_solverpp_3steps_seed42.npz") as z:
        assert z["samples"].shape == (3, 8, 8, 1)
    assert cli(["sample", "--diffusers", str(tmp_path / "pipe"), "-n", "3", "--out", str(out),
                "--config.training.sde=vesde", "--no-progress"]) == 1  # the model is VP
    line = only_error_line(capsys.readouterr().err)
    assert "training.sde is 'vpsde' there but --config.training.sde=vesde asks for 'vesde'" in line
    assert cli(["likelihood", "--diffusers", str(tmp_path / "pipe"), "--data-dir",
                str(tmp_path / "nodata"), "--config.data.download=False", "--out", str(out),
                "--no-progress"]) == 1
    assert "cannot find" in only_error_line(capsys.readouterr().err)


def test_eval_bits_per_dim_follow_a_rewritten_checkpoint(tmp_path, capsys):
    """checkpoint_1.pth rewritten with another run's weights (other seed): `eval`
    computes its bits/dim anew instead of reusing the records of the old file's weights."""
    workdir = tmp_path / "w"
    base = ["--config", "builtin/digits_vp", "--workdir", str(workdir), *TINY,
            "--config.training.batch_size=8", "--config.training.snapshot_freq=10",
            "--config.training.eval_freq=0", "--config.training.n_iters=10"]
    evaluate = ["eval", "--workdir", str(workdir), "--num-images", "2", "--batch", "2",
                "--rtol", "1e-2", "--atol", "1e-2", "--config.eval.enable_bpd=True",
                "--no-progress"]
    summary = workdir / "eval" / "sweep.json"
    assert cli(["train", *base]) == 0 and cli(evaluate) == 0
    first = json.loads(summary.read_text())["checkpoints"][0]["bpd"]
    other = tmp_path / "other"
    assert cli(["train", *base, "--workdir", str(other), "--seed", "7"]) == 0
    shutil.copyfile(other / "checkpoints" / "checkpoint_1.pth",
                    workdir / "checkpoints" / "checkpoint_1.pth")  # same name, other weights
    assert cli(evaluate) == 0
    second = json.loads(summary.read_text())["checkpoints"][0]["bpd"]
    assert second != first
    assert len(list((workdir / "eval").glob("bpd_test_*.jsonl"))) == 2


def test_grid_flag_takes_a_name_or_explicit_times(trained, tmp_path, capsys):
    assert cli(["sample", "--workdir", str(trained), "--sampler", "unipc", "--grid",
                "1,0.5,0.1,0.001", "-n", "2", "--out", str(tmp_path), "--no-progress"]) == 0
    info = json.loads((tmp_path / "samples_unipc_3steps_seed42.json").read_text())
    assert info["options"]["grid"] == [1.0, 0.5, 0.1, 0.001] and info["nfe"] == 4
    assert cli(["sample", "--workdir", str(trained), "--sampler", "heun", "--grid", "logsnr",
                "--steps", "3", "-n", "2", "--out", str(tmp_path), "--no-progress"]) == 0
    assert json.loads((tmp_path / "samples_heun_3steps_seed42.json").read_text())[
        "options"]["grid"] == "logsnr"
    # checked before any sampling: a sampler without a grid or a step count
    assert cli(["sample", "--workdir", str(trained), "--sampler", "pc", "--grid", "karras",
                "--no-progress"]) == 1
    assert "sampler 'pc' does not take grid; its options: steps, predictor" in only_error_line(
        capsys.readouterr().err)
    assert cli(["sample", "--workdir", str(trained), "--sampler", "ode", "--steps", "5",
                "--no-progress"]) == 1
    assert "sampler 'ode' does not take steps" in only_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv,message", [
    (["--sampler", "ode", "--snr", "0.2"], "sampler 'ode' does not take snr; its options: rtol, "
                                           "atol, method, ode_options"),
    (["--sampler", "heun", "--predictor", "euler_maruyama"], "sampler 'heun' does not take "
                                                            "predictor; its options: steps, grid"),
    (["--sampler", "ode", "--snr", "0.16"], "sampler 'ode' does not take snr"),
    (["--sampler", "pc", "--sampler-option", "order=2"], "sampler 'pc' does not take order"),
])
def test_an_option_the_sampler_does_not_take_is_one_error_line(trained, argv, message, capsys):
    """Every sampler follows one rule: an option given on the command line that it does not
    take (or a value it does not allow) stops the command before any sampling."""
    assert cli(["sample", "--workdir", str(trained), *argv, "-n", "2", "--no-progress"]) == 1
    assert message in only_error_line(capsys.readouterr().err)


def test_recorded_options_reproduce_the_images_bit_for_bit(trained, tmp_path):
    """`sample --sampler heun` records every option it used, steps and grid included; drawing
    again with exactly those options gives the same images."""
    from networks import load_checkpoint, read_checkpoint
    from networks.checkpoint import stored_config
    from sde_lib import get_sde
    from sde_base.fileio import json_ready
    from training.checkpoints import latest_checkpoint
    from training.images import to_uint8
    from training.sampling import draw_samples

    assert cli(["sample", "--workdir", str(trained), "--sampler", "heun", "--sampler-option",
                "S_churn=1.5", "-n", "3", "--out", str(tmp_path), "--stem", "h",
                "--no-progress"]) == 0
    info = json.loads((tmp_path / "h.json").read_text())
    used = info["options"]
    assert used["steps"] == 25   # --quick's config.sampling.steps
    assert used["grid"] == "karras" and used["S_churn"] == 1.5
    assert used["sampler"] == "heun" and used["second_order"] is True and "eps" in used
    path = latest_checkpoint(str(trained))
    config = stored_config(read_checkpoint(path))
    model = load_checkpoint(path, config, ema=True, map_location="cpu").eval()
    g = torch.Generator().manual_seed(info["seed"])
    images, nfe, again = draw_samples(model, get_sde(config), config, 3, generator=g,
                                      device="cpu", **used)
    with np.load(tmp_path / "h.npz") as z:
        assert np.array_equal(z["samples"], to_uint8(images))
    assert json_ready(again) == used and nfe == info["nfe"]  # as JSON holds it: inf is null
