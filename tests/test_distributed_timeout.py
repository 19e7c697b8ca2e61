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
print("ready", flush=True)
with StopSignals(grace=1.0, rank=rank) as stop:
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


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_stalled_rank_ends_the_other_after_the_timeout():
    procs = _start_pair(timeout=3)
    try:
        time.sleep(0.3)  # both are exchanging flags
        procs[1].send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        waited = time.monotonic() - t0
    finally:
        _stop_all(procs)
    assert procs[0].returncode != 0
    assert "DistributedTimeoutError" in err and "rank 0 of 2" in err, err[-3000:]
    assert "another rank stalled, died or lost its connection" in err
    assert "collective timeout 3 s" in err
    assert waited < 30  # the timeout, not "as long as the peer stalls"


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_sigterm_while_waiting_for_a_stalled_rank_is_not_ignored():
    procs = _start_pair(timeout=600)
    try:
        time.sleep(0.3)
        procs[1].send_signal(signal.SIGSTOP)
        time.sleep(0.5)  # rank 0 now waits inside the all-reduce
        procs[0].send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        waited = time.monotonic() - t0
    finally:
        _stop_all(procs)
    assert procs[0].returncode == 128 + signal.SIGTERM, err[-3000:]
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
