"""DDP with a stalled rank (issue 13): two gloo processes, one SIGSTOPped. The other ends with a
clear message after the collective timeout, and a SIGTERM while it waits ends it within the
grace period instead of being ignored. About 10 s (two small processes per test)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# One rank: join the group, then all-reduce a flag forever (as the training loop does each step).
WORKER = """
import os, sys
rank, port, timeout = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                  MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
from training.distributed import StopSignals, any_process, init_distributed
info = init_distributed(device="cpu", timeout=timeout)
with StopSignals(grace=1.0, rank=rank) as stop:
    print("ready", flush=True)
    while not any_process(stop.set, info):
        pass
print("stopped cleanly", flush=True)
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_pair(timeout):
    port = str(_free_port())
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(r), port, str(timeout)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in (0, 1)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()[-2000:]
    return procs


def _stop_all(procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()


def _stall_rank_1(timeout, then=None):
    """Start a pair, SIGSTOP rank 1, optionally `then(rank 0)`; wait for rank 0 to end.
    Returns (rank 0's return code, its stderr, seconds it took after the stall/`then`)."""
    procs = _start_pair(timeout=timeout)
    try:
        time.sleep(0.3)  # both are exchanging flags
        procs[1].send_signal(signal.SIGSTOP)
        if then is not None:
            time.sleep(0.5)  # rank 0 now waits inside the all-reduce
            then(procs[0])
        t0 = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        return procs[0].returncode, err, time.monotonic() - t0
    finally:
        _stop_all(procs)


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_stalled_rank_ends_the_other_after_the_timeout():
    code, err, waited = _stall_rank_1(timeout=3)
    assert code != 0
    assert "DistributedTimeoutError" in err and "rank 0 of 2" in err, err[-3000:]
    assert "another rank stalled, died or lost its connection" in err
    assert "collective timeout 3 s" in err
    assert waited < 30  # the timeout, not "as long as the peer stalls"


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_sigterm_while_waiting_for_a_stalled_rank_is_not_ignored():
    code, err, waited = _stall_rank_1(timeout=600,
                                      then=lambda p: p.send_signal(signal.SIGTERM))
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert "rank 0: SIGTERM received while waiting" in err and "all-reduce" in err
    assert waited < 30  # the 1 s grace, not the 600 s timeout


def test_sigterm_without_a_stall_stops_both_ranks_cleanly():
    procs = _start_pair(timeout=600)
    try:
        time.sleep(0.3)
        procs[0].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        _stop_all(procs)
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "stopped cleanly" in out, err[-3000:]


def test_the_timeout_must_be_positive(monkeypatch):
    from training.distributed import DEFAULT_TIMEOUT, TIMEOUT_ENV, collective_timeout
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert collective_timeout() == DEFAULT_TIMEOUT and collective_timeout(7) == 7.0
    monkeypatch.setenv(TIMEOUT_ENV, "42")
    assert collective_timeout() == 42.0
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="positive number of seconds"):
            collective_timeout(bad)
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=TIMEOUT_ENV):
        collective_timeout()


TRAINER = """
import json, os, sys
rank, port, workdir, config_json = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                  MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
import ml_collections, torch
torch.set_num_threads(1)
from training.train import train
train(ml_collections.ConfigDict(json.loads(config_json)), workdir, device="cpu", progress=False)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_ddp_training_with_a_stalled_rank_ends_after_config_dist_timeout(tmp_path):
    """The whole loop: config.training.dist_timeout reaches the process group, and the wait
    (in DDP's gradient all-reduce or the loop's own collectives) ends with the clear error."""
    import configs
    from training.logs import read_log
    c = configs.get_config("builtin/digits_vp")
    c.model.nf, c.model.ch_mult, c.model.num_res_blocks, c.model.num_scales = 8, (1, 2), 1, 50
    c.training.batch_size, c.training.n_iters, c.training.log_freq = 8, 100000, 1
    c.training.eval_freq, c.training.snapshot_freq_for_preemption = 0, 1000
    c.training.dist_timeout = 3
    port = str(_free_port())
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", TRAINER, str(r), port, str(tmp_path),
                               c.to_json()], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        log, t0 = tmp_path / "log.jsonl", time.monotonic()
        while not (log.exists() and any(r.get("event") == "train" for r in read_log(log))):
            assert all(p.poll() is None for p in procs), procs[0].stderr.read()[-3000:]
            assert time.monotonic() - t0 < 120
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        waited = time.monotonic() - t0
    finally:
        _stop_all(procs)
    assert procs[0].returncode != 0 and waited < 30
    assert "DistributedTimeoutError: rank 0 of 2" in err, err[-3000:]
    assert "collective timeout 3 s" in err
