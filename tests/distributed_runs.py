"""Commands of `python -m sde_lib.run` on several gloo processes, as torchrun starts them (one
process per rank with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set), each on
one thread: shared by the tests of the commands that run under torchrun."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SCORE_SDE_DIST_TIMEOUT="10")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv, world=1):
    """`python -m sde_lib.run ARGV` on `world` processes; returns the Popen objects by rank."""
    port, procs = str(free_port()), []
    for rank in range(world):
        env = dict(ENV, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, "-m", "sde_lib.run", *argv],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs, timeout=120):
    """[(exit status, stdout, stderr)] of each process."""
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        outs.append((p.returncode, out, err))
    return outs


def run(argv, world=1):
    """The stdout of each rank of a run that must succeed."""
    outs = finish(start(argv, world))
    for code, out, err in outs:
        assert code == 0, (out + err)[-3000:]
    return [out for _, out, _ in outs]


def torchrun(argv, nproc=2, timeout=300):
    """`python -m torch.distributed.run --nproc_per_node N -m sde_lib.run ARGV` (the real
    launcher); returns its stdout (every rank's) and asserts it succeeded."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                           str(nproc), "--master_port", str(free_port()), "-m", "sde_lib.run",
                           *argv], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def no_temp_files(folder):
    left = [n for n in os.listdir(folder) if n.endswith(".tmp")]
    assert not left, left


def kill_rank_when(procs, ready, rank=1, timeout=120):
    """Wait until `ready()` (polling, while rank `rank` runs), SIGKILL that rank, and return
    [(exit status, stdout, stderr)] of the other ranks; no process outlives the call."""
    try:
        deadline = time.monotonic() + timeout
        while not ready() and time.monotonic() < deadline:
            assert procs[rank].poll() is None, procs[rank].communicate()
            time.sleep(0.02)
        procs[rank].send_signal(signal.SIGKILL)
        return finish([p for i, p in enumerate(procs) if i != rank])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
