"""The training loop: learning, exact resumption, SIGKILL safety, two-process DDP on gloo."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def tiny_config(sde="ve", n_iters=12, **training):
    import configs
    c = configs.get_config(f"builtin/digits_{sde}")
    c.model.nf = 8
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.num_scales = 50
    c.training.batch_size = 8
    c.training.n_iters = n_iters
    c.training.log_freq = 2
    c.training.eval_freq = 0
    c.training.snapshot_freq = 6
    c.training.snapshot_freq_for_preemption = 4
    c.optim.warmup = 3
    for k, v in training.items():
        c.training[k] = v
    return c


def _params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_optimizer_warmup_and_clipping():
    from training.optim import optimize_step, warmup_lr
    assert warmup_lr(0, 1e-3, 10) == 0 and warmup_lr(5, 1e-3, 10) == 5e-4
    assert warmup_lr(50, 1e-3, 10) == 1e-3 and warmup_lr(0, 1e-3, 0) == 1e-3
    p = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([p], lr=1.0)
    p.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])  # norm 5, clipped to 1
    lr, norm = optimize_step(opt, [p], 5, lr=2.0, warmup=10, grad_clip=1.0)
    assert lr == 1.0 and abs(float(norm) - 5.0) < 1e-6
    torch.testing.assert_close(p.detach(), -torch.tensor([0.6, 0.8, 0.0, 0.0]))


def test_a_few_steps_lower_the_loss(tmp_path):
    from sde_lib import get_sde
    from sde_cli.eval import dataset_loss
    from training.data import load_dataset
    from training.losses import get_loss_fn
    from training.train import build_state, train
    c = tiny_config("vp", n_iters=40)
    c.optim.lr, c.optim.warmup = 3e-3, 0
    c.training.batch_size = 32
    sde = get_sde(c)
    loss_fn = get_loss_fn(c, sde)
    ds = load_dataset(c, "train")
    model0, _, _ = build_state(c, "cpu")
    before = sum(dataset_loss(model0, loss_fn, c, ds, batch_size=256, seed=0, device="cpu",
                              limit=512))
    result = train(c, str(tmp_path), device="cpu", progress=False)
    after = sum(dataset_loss(result["model"], loss_fn, c, ds, batch_size=256, seed=0,
                             device="cpu", limit=512))
    assert result["step"] == 40 and after < 0.8 * before


def test_resume_gives_the_same_parameters(tmp_path):
    from training.train import train
    c = tiny_config("ve", n_iters=10)
    c.model.dropout = 0.1  # the per-step reseeded dropout must resume too
    whole = train(c, str(tmp_path / "a"), device="cpu", progress=False)
    part = train(c, str(tmp_path / "b"), device="cpu", progress=False, stop_after=4)
    assert part["status"] == "stopped" and part["step"] == 4
    rest = train(c, str(tmp_path / "b"), device="cpu", progress=False)
    assert rest["start_step"] == 4 and rest["step"] == 10
    assert torch.equal(_params(whole["model"]), _params(rest["model"]))
    for a, b in zip(whole["ema"].shadow_params, rest["ema"].shadow_params):
        assert torch.equal(a, b)
    assert whole["final_loss"] == rest["final_loss"]


def test_importance_sampled_likelihood_training_resumes_exactly(tmp_path):
    from training.train import train
    c = tiny_config("vp", n_iters=8, likelihood_weighting=True, importance_sampling=True)
    whole = train(c, str(tmp_path / "a"), device="cpu", progress=False)
    train(c, str(tmp_path / "b"), device="cpu", progress=False, stop_after=4)
    rest = train(c, str(tmp_path / "b"), device="cpu", progress=False)
    assert rest["start_step"] == 4 and torch.equal(_params(whole["model"]), _params(rest["model"]))
    uniform = train(tiny_config("vp", n_iters=8, likelihood_weighting=True),
                    str(tmp_path / "c"), device="cpu", progress=False)
    assert not torch.equal(_params(whole["model"]), _params(uniform["model"]))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, config_json, workdir, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import ml_collections
    from training.distributed import cleanup_distributed
    from training.train import train
    config = ml_collections.ConfigDict(json.loads(config_json))
    result = train(config, workdir, device="cpu", progress=False)
    if rank == 0:
        torch.save({"params": _params(result["model"]), "loss": result["final_loss"]}, out)
    cleanup_distributed()


@pytest.mark.parametrize("training", [{}, {"likelihood_weighting": True,
                                            "importance_sampling": True}],
                         ids=["default", "likelihood_importance_sampling"])
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path, training):
    import torch.multiprocessing as mp
    from training.logs import read_log
    from training.train import train
    c = tiny_config("subvp", n_iters=6, **training)
    c.optim.warmup = 0
    single = train(c, str(tmp_path / "one"), device="cpu", progress=False)
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), c.to_json(), str(tmp_path / "two"), out),
             nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    torch.testing.assert_close(ddp["params"], _params(single["model"]), rtol=1e-5, atol=1e-6)
    one = [r["loss"] for r in read_log(tmp_path / "one" / "log.jsonl") if r["event"] == "train"]
    two = [r["loss"] for r in read_log(tmp_path / "two" / "log.jsonl") if r["event"] == "train"]
    assert len(one) == len(two) == 3
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-5, atol=1e-6)
    starts = [r for r in read_log(tmp_path / "two" / "log.jsonl") if r["event"] == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2  # rank 0 alone writes the log


def _wait_for_step(log, step, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with {proc.returncode}: "
                                 f"{proc.stderr.read().decode()[-2000:]}")
        if log.exists():
            steps = [r.get("step", 0) for r in _records(log) if r.get("event") == "train"]
            if steps and max(steps) >= step:
                return max(steps)
        time.sleep(0.05)
    raise AssertionError("training did not reach the step in time")


def _records(log):
    from training.logs import read_log
    return read_log(log)


def _train_cmd(workdir, n_iters, extra=()):
    return [sys.executable, "-m", "sde_lib.run", "train", "--config", "builtin/digits_ve",
            "--workdir", str(workdir), "--no-progress", "--config.model.nf=8",
            "--config.model.num_scales=50", "--config.training.batch_size=8",
            f"--config.training.n_iters={n_iters}", "--config.training.log_freq=1",
            "--config.training.eval_freq=0", "--config.training.snapshot_freq=1000000",
            "--config.training.snapshot_freq_for_preemption=1", "--json", *extra]


def test_sigkill_mid_training_resumes_from_a_whole_checkpoint(tmp_path):
    from networks import read_checkpoint
    from training.checkpoints import meta_path
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = tmp_path / "log.jsonl"
    # SIGKILL: every step rewrites the meta checkpoint, so the kill often lands mid-write.
    proc = subprocess.Popen(_train_cmd(tmp_path, 100000), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_step(log, 15, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert read_checkpoint(meta_path(tmp_path))["step"] >= 14  # a whole file, never half-written
    # SIGTERM (preemption): the run saves its state and exits with status 1.
    proc = subprocess.Popen(_train_cmd(tmp_path, 100000), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_step(log, 30, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err.decode()[-2000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["status"] == "preempted"
    saved = read_checkpoint(meta_path(tmp_path))["step"]
    assert saved == result["step"] >= 30
    done = subprocess.run(_train_cmd(tmp_path, saved + 5), cwd=REPO, env=env,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    starts = [r for r in _records(log) if r.get("event") == "start"]
    assert len(starts) == 3 and starts[0]["step"] == 0 and starts[1]["step"] >= 14
    assert starts[2]["step"] == saved and starts[2]["resumed_from"]
    assert read_checkpoint(meta_path(tmp_path))["step"] == saved + 5


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    from training.train import train
    c = tiny_config("vp", n_iters=3)
    full = train(c, str(tmp_path / "full"), device="cpu", progress=False)
    c.training.grad_accum = 2
    accum = train(c, str(tmp_path / "accum"), device="cpu", progress=False)
    torch.testing.assert_close(_params(accum["model"]), _params(full["model"]), rtol=1e-5,
                               atol=1e-6)


def test_snapshots_and_runtime_options(tmp_path):
    """Snapshot sample grids at each periodic checkpoint; bf16 autocast and channels_last run."""
    from training.train import train
    c = tiny_config("ve", n_iters=4, snapshot_freq=2, snapshot_sampling=True, snapshot_samples=4)
    c.sampling.steps = 3
    c.runtime.precision, c.runtime.channels_last = "bf16", True
    result = train(c, str(tmp_path), device="cpu", progress=False)
    assert result["step"] == 4 and torch.isfinite(torch.tensor(result["final_loss"]))
    for step in (2, 4):
        assert (tmp_path / "samples" / f"iter_{step}" / "sample.png").is_file()
        assert (tmp_path / "checkpoints" / f"checkpoint_{step // 2}.pth").is_file()
