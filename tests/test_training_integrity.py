"""Nothing lost, nothing mixed: checkpoint discovery with damaged files, the log after resuming,
one run per workdir, and SIGKILL at random moments (issue 13)."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from sde_base.fileio import WorkdirLockedError
from training.checkpoints import (CheckpointWarning, checkpoint_identity, checkpoint_step,
                                  latest_checkpoint, meta_path, periodic_path,
                                  save_training_state, sidecar_path)
from training.logs import read_log, truncate_log

REPO = Path(__file__).resolve().parents[1]


def small_config(n_iters=8, **training):
    """builtin/digits_ve with a tiny network, a checkpoint to resume from at every step."""
    import configs
    c = configs.get_config("builtin/digits_ve")
    c.model.nf, c.model.ch_mult, c.model.num_res_blocks, c.model.num_scales = 8, (1, 2), 1, 50
    c.training.batch_size, c.training.n_iters = 8, n_iters
    c.training.log_freq, c.training.eval_freq = 1, 0
    c.training.snapshot_freq, c.training.snapshot_freq_for_preemption = 4, 1
    c.optim.warmup = 3
    for k, v in training.items():
        c.training[k] = v
    return c


def _state(path):
    from networks import read_checkpoint
    ckpt = read_checkpoint(path)
    return ckpt["step"], ckpt["model"], ckpt["ema"]["shadow_params"]


def _assert_same_state(a, b):
    step_a, model_a, ema_a = _state(a)
    step_b, model_b, ema_b = _state(b)
    assert step_a == step_b and model_a.keys() == model_b.keys()
    for k in model_a:
        assert torch.equal(model_a[k], model_b[k]), k
    assert all(torch.equal(x, y) for x, y in zip(ema_a, ema_b))


def _truncate(path, keep=0.5):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:int(len(data) * keep)])  # in place: the sidecar no longer fits


def _temps(root):
    return [str(p) for p in Path(root).rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def workdir_with_checkpoints(tmp_path):
    """Periodic checkpoints at steps 2, 4, 6 (k = 1, 2, 3) and the meta checkpoint at step 7."""
    from training.train import build_state
    c = small_config()
    model, ema, opt = build_state(c, "cpu")
    for k, step in ((1, 2), (2, 4), (3, 6)):
        save_training_state(periodic_path(tmp_path, k), model, c, ema, opt, step)
    save_training_state(meta_path(tmp_path), model, c, ema, opt, 7)
    return tmp_path


def test_discovery_reads_steps_from_the_sidecars_without_opening_checkpoints(
        workdir_with_checkpoints, monkeypatch):
    wd = workdir_with_checkpoints
    record = json.loads(Path(sidecar_path(meta_path(wd))).read_text())
    assert record["step"] == 7 and len(record["sha256"]) == 64
    assert checkpoint_identity(meta_path(wd)) == {"step": 7, "sha256": record["sha256"]}

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was opened")
    monkeypatch.setattr(torch, "load", refuse)
    assert latest_checkpoint(wd) == meta_path(wd)
    assert checkpoint_step(periodic_path(wd, 2)) == 4


def test_a_truncated_old_periodic_checkpoint_is_never_in_the_way(workdir_with_checkpoints):
    wd = workdir_with_checkpoints
    _truncate(periodic_path(wd, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even opened: no warning
        assert latest_checkpoint(wd) == meta_path(wd)


def test_a_truncated_newest_periodic_checkpoint_is_skipped_with_a_warning(
        workdir_with_checkpoints):
    wd = workdir_with_checkpoints
    os.remove(meta_path(wd))
    _truncate(periodic_path(wd, 3))
    with pytest.warns(CheckpointWarning, match="checkpoint_3.pth"):
        assert latest_checkpoint(wd) == periodic_path(wd, 2)


@pytest.mark.parametrize("sidecars", [True, False])
def test_a_truncated_meta_checkpoint_falls_back_to_the_newest_periodic(workdir_with_checkpoints,
                                                                      sidecars):
    wd = workdir_with_checkpoints
    if not sidecars:  # a workdir of the original code: the steps come from the files
        for p in Path(wd).rglob("*.json"):
            p.unlink()
    _truncate(meta_path(wd), keep=0.9)
    with pytest.warns(CheckpointWarning, match=r"checkpoint\.pth.*cannot be read"):
        assert latest_checkpoint(wd) == periodic_path(wd, 3)
    _truncate(periodic_path(wd, 3), keep=0.0)  # an empty file too
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert latest_checkpoint(wd) == periodic_path(wd, 2)
    named = sorted(os.path.basename(str(w.message).split("'")[1]) for w in caught
                   if issubclass(w.category, CheckpointWarning))
    assert named == ["checkpoint.pth", "checkpoint_3.pth"]


def test_the_step_of_a_safetensors_checkpoint_is_read_from_its_metadata(tmp_path):
    from networks import save_checkpoint
    from training.train import build_state
    c = small_config()
    model, ema, _ = build_state(c, "cpu")
    path = save_checkpoint(tmp_path / "model.safetensors", model, c, ema=ema, step=40)
    assert checkpoint_step(path) == 40  # no sidecar: from the file
    assert checkpoint_identity(path)["step"] == 40


def test_a_sidecar_that_no_longer_fits_its_file_is_ignored(workdir_with_checkpoints):
    from networks import save_checkpoint
    from training.train import build_state
    wd = workdir_with_checkpoints
    c = small_config()
    model, ema, opt = build_state(c, "cpu")
    save_checkpoint(meta_path(wd), model, c, ema=ema, optimizer=opt, step=9)  # no new sidecar
    assert checkpoint_step(meta_path(wd)) == 9
    assert checkpoint_identity(meta_path(wd))["step"] == 9


def test_truncate_log_keeps_each_step_once(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [{"event": "start", "step": 0}] + [{"event": "train", "step": s} for s in (1, 2, 3)]
    log.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"event": "tra')
    assert truncate_log(log, 2) == 2  # step 3 and the half-written last line
    assert [r.get("step") for r in read_log(log)] == [0, 1, 2]
    assert log.read_text().endswith("\n") and _temps(tmp_path) == []
    assert truncate_log(log, 2) == 0


def test_resume_after_a_damaged_meta_checkpoint_logs_each_step_once(tmp_path):
    """The meta checkpoint (step 6) is truncated: training resumes from the periodic one (step
    4), the log's records of steps 5 and 6 are dropped and written again, and the result is
    the uninterrupted run's."""
    from training.train import train
    c = small_config(n_iters=8)
    train(c, str(tmp_path / "a"), device="cpu", progress=False)
    first = train(c, str(tmp_path / "b"), device="cpu", progress=False, stop_after=6)
    assert first["step"] == 6
    _truncate(meta_path(tmp_path / "b"))
    with pytest.warns(CheckpointWarning, match="checkpoint.pth"):
        rest = train(c, str(tmp_path / "b"), device="cpu", progress=False, log=lambda *a: None)
    assert rest["start_step"] == 4 and rest["resumed_from"] == periodic_path(tmp_path / "b", 1)
    _assert_same_state(meta_path(tmp_path / "a"), meta_path(tmp_path / "b"))
    logs = {k: [r for r in read_log(tmp_path / k / "log.jsonl") if r["event"] == "train"]
            for k in "ab"}
    assert [r["step"] for r in logs["b"]] == list(range(1, 9))
    assert [r["loss"] for r in logs["b"]] == [r["loss"] for r in logs["a"]]


def _quiet(*args):
    pass


def test_a_history_with_no_readable_checkpoint_is_refused_until_an_explicit_restart(tmp_path):
    """Stopped at step 3 (no periodic checkpoint yet) and the meta checkpoint truncated:
    training refuses, naming the file and changing nothing; restart=True moves the history
    into history-<time>/ and starts from step 0."""
    from training.checkpoints import TrainingHistoryError
    from training.train import train
    c, w = small_config(n_iters=8), tmp_path / "w"
    train(c, str(w), device="cpu", progress=False, stop_after=3, log=_quiet)
    _truncate(meta_path(w))
    before = {p.relative_to(w): p.read_bytes() for p in w.rglob("*") if p.is_file()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        with pytest.raises(TrainingHistoryError, match=r"checkpoint\.pth.*cannot be read.*"
                                                       r"--restart"):
            train(c, str(w), device="cpu", progress=False, log=_quiet)
    after = {p.relative_to(w): p.read_bytes() for p in w.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing lost

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        again = train(c, str(w), device="cpu", progress=False, stop_after=2, log=_quiet,
                      restart=True)
    assert again["start_step"] == 0 and again["resumed_from"] is None and again["step"] == 2
    (aside,) = [p for p in w.iterdir() if p.name.startswith("history-")]
    for rel, data in before.items():
        if rel.parts[0] != ".lock":
            assert (aside / rel).read_bytes() == data, rel  # moved, never deleted


def test_deleted_checkpoints_recorded_in_the_log_are_refused(tmp_path):
    from training.checkpoints import TrainingHistoryError
    from training.train import train
    c, w = small_config(n_iters=8), tmp_path / "w"
    train(c, str(w), device="cpu", progress=False, stop_after=4, log=_quiet)
    for d in ("checkpoints", "checkpoints-meta"):
        for p in (w / d).iterdir():
            p.unlink()
    with pytest.raises(TrainingHistoryError, match="log.jsonl records 1 checkpoint"):
        train(c, str(w), device="cpu", progress=False, log=_quiet)


def test_resume_recreates_the_sidecar_and_log_record_a_kill_left_missing(tmp_path):
    """Killed between writing checkpoint_1.pth (step 4) and its sidecar: the meta checkpoint is
    still the one of step 3, and the log has no checkpoint record. The resumed run starts from
    checkpoint_1 and writes both."""
    import shutil
    from training.checkpoints import read_sidecar, sidecar_path
    from training.train import train
    c, w = small_config(n_iters=6), tmp_path / "w"
    train(c, str(w), device="cpu", progress=False, stop_after=3, log=_quiet)
    shutil.copyfile(meta_path(w), tmp_path / "meta_3.pth")
    train(c, str(w), device="cpu", progress=False, stop_after=1, log=_quiet)
    periodic = periodic_path(w, 1)
    Path(sidecar_path(periodic)).unlink()
    shutil.copyfile(tmp_path / "meta_3.pth", meta_path(w))
    Path(sidecar_path(meta_path(w))).unlink()
    log = w / "log.jsonl"
    lines = [line for line in log.read_text().splitlines(True)
             if '"checkpoint"' not in line and '"end"' not in line]
    log.write_text("".join(lines))

    rest = train(c, str(w), device="cpu", progress=False, log=_quiet)
    assert rest["start_step"] == 4 and rest["resumed_from"] == periodic
    assert read_sidecar(periodic)["step"] == 4
    records = [r for r in read_log(log) if r["event"] == "checkpoint"]
    assert [(r["step"], r["path"]) for r in records] == [(4, periodic),
                                                          (6, periodic_path(w, 2))]


def test_a_second_training_on_a_workdir_fails_at_once_naming_the_first(tmp_path):
    from training.train import train
    code = ("import sys, ml_collections, json; from training.train import train; "
            "c = ml_collections.ConfigDict(json.loads(sys.argv[2])); "
            "train(c, sys.argv[1], device='cpu', progress=False)")
    c = small_config(n_iters=100000)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), c.to_json()], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        t0 = time.monotonic()
        while not (tmp_path / "log.jsonl").exists():  # the first run is training
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() - t0 < 120
            time.sleep(0.05)
        t0 = time.monotonic()
        with pytest.raises(WorkdirLockedError) as err:
            train(small_config(n_iters=3), str(tmp_path), device="cpu", progress=False)
        assert time.monotonic() - t0 < 10  # before building anything
        assert f"pid {proc.pid} on host {socket.gethostname()}" in str(err.value)
        assert proc.poll() is None  # the first run is untouched
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _run_child(config, workdir):
    """Fork a process that trains in `workdir` (torch is already imported: no start-up cost)."""
    pid = os.fork()
    if pid == 0:  # the child: train, never return into pytest
        code = 1
        try:
            from training.train import train
            train(config, workdir, device="cpu", progress=False, log=lambda *a: None)
            code = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the crash test forks")
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_run(tmp_path):
    """20 SIGKILLs at random moments (start-up, mid-step, mid checkpoint or log write), each
    followed by a resume: the final weights equal an uninterrupted run's bit for bit, no
    temporary file is left, and log.jsonl has each step once with the same losses."""
    from training.train import train
    n_iters = 40
    c = small_config(n_iters=n_iters, snapshot_freq=7)
    whole = train(c, str(tmp_path / "whole"), device="cpu", progress=False)
    assert whole["step"] == n_iters
    wd = str(tmp_path / "killed")
    rng = random.Random(13)
    step_time = whole["train_seconds"] / n_iters
    log = os.path.join(wd, "log.jsonl")

    def records(event):
        return [r for r in read_log(log) if r.get("event") == event] if os.path.exists(log) else []

    reached, killed = [], 0
    for i in range(20):
        starts = len(records("start"))
        pid = _run_child(c, wd)
        if i % 4 == 0:  # during start-up (lock, stale temps, log truncation, restore)
            time.sleep(rng.uniform(0.0, 0.1))
        else:  # while training: mid-step, mid checkpoint write, mid log write
            t0 = time.monotonic()
            while len(records("start")) == starts and time.monotonic() - t0 < 60:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 4 * step_time))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0, "the child failed"
        killed += os.WIFSIGNALED(status)
        reached.append(max((r["step"] for r in records("train")), default=0))
    assert killed >= 15 and reached[-1] > 0, f"kills: {killed}, steps reached: {reached}"
    # a temporary file of a writer that died (as a kill mid-write leaves) is removed at start
    stale = Path(meta_path(wd)).parent / ".checkpoint.pth.99999999.0123456789ab.tmp"
    stale.write_bytes(b"half a checkpoint")
    (Path(wd) / "samples" / "iter_7").mkdir(parents=True)
    (Path(wd) / "samples" / "iter_7" / ".sample.png.99999999.0123456789ab.tmp").write_bytes(b"")
    rest = train(c, wd, device="cpu", progress=False, log=lambda *a: None)
    assert rest["status"] == "done" and rest["step"] == n_iters
    _assert_same_state(meta_path(tmp_path / "whole"), meta_path(wd))
    for k in range(1, -(-n_iters // 7) + 1):
        _assert_same_state(periodic_path(tmp_path / "whole", k), periodic_path(wd, k))
    assert _temps(wd) == []
    logs = {k: [r for r in read_log(tmp_path / k / "log.jsonl") if r["event"] == "train"]
            for k in ("whole", "killed")}
    assert [r["step"] for r in logs["killed"]] == list(range(1, n_iters + 1))
    assert [r["loss"] for r in logs["killed"]] == [r["loss"] for r in logs["whole"]]


def test_a_torn_last_log_line_is_skipped_and_never_joins_the_next_record(tmp_path):
    from training.logs import RunLogger
    log = tmp_path / "log.jsonl"
    log.write_text('{"event": "train", "step": 1, "loss": 0.5}\n{"event": "train", "st')
    assert [r["step"] for r in read_log(log)] == [1]
    logger = RunLogger(tmp_path, tensorboard=False)  # no start step: nothing truncated first
    logger.log({"event": "train", "loss": 0.25}, step=2)
    logger.log({"event": "train", "loss": 0.125}, step=3)
    assert [r["step"] for r in read_log(log)] == [1, 2, 3]
    assert log.read_text().count("\n") == 4  # the torn line ended, no blank line


def test_training_on_within_a_period_keeps_the_checkpoint_it_supersedes(tmp_path):
    """A run that ended at step 6 (checkpoint_2.pth, the period 5..8) and is then trained on to
    step 7 would write checkpoint_2.pth again: the step-6 weights are kept beside it, under a name
    discovery ignores, with their sidecar, and the log says so."""
    from training.checkpoints import checkpoint_step, periodic_checkpoints, read_sidecar
    from training.train import train
    w = tmp_path / "w"
    train(small_config(n_iters=6), str(w), device="cpu", progress=False, log=_quiet)
    path = periodic_path(w, 2)
    before = Path(path).read_bytes()
    assert checkpoint_step(path) == 6
    train(small_config(n_iters=7), str(w), device="cpu", progress=False, log=_quiet)
    kept = w / "checkpoints" / "checkpoint_2.step6.pth"
    assert kept.read_bytes() == before and read_sidecar(kept)["step"] == 6
    assert checkpoint_step(path) == 7 and Path(path).read_bytes() != before
    assert sorted(periodic_checkpoints(w)) == [1, 2]
    assert [(r["step"], r["path"]) for r in read_log(w / "log.jsonl")
            if r["event"] == "kept"] == [(7, str(kept))]
    # The same step written again (a resumed run redoing it) replaces nothing else.
    train(small_config(n_iters=7), str(w), device="cpu", progress=False, log=_quiet)
    assert sorted(p.name for p in (w / "checkpoints").glob("*.pth")) == [
        "checkpoint_1.pth", "checkpoint_2.pth", "checkpoint_2.step6.pth"]
