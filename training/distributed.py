"""Data-parallel runs under torchrun: process-group set-up from the environment, rank helpers.

torchrun (or any launcher) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; with
WORLD_SIZE > 1 `init_distributed` joins the group (NCCL on GPUs, gloo on CPU). Only rank 0 logs
and writes checkpoints; every process trains on its slice of each global batch
(`training.pipeline.shard_slice`) and DistributedDataParallel averages the gradients.

A rank that stalls or dies must not hang the others: every collective has a timeout
(`timeout` seconds, default $SCORE_SDE_DIST_TIMEOUT or `DEFAULT_TIMEOUT`), after which the
waiting ranks raise `DistributedTimeoutError` saying so (a dead peer usually ends them sooner,
with a closed connection). A wait inside a collective cannot run Python signal handlers, so
`StopSignals` also watches SIGTERM/SIGINT from a thread: a signal that arrives while the main
thread has waited in a collective for `grace` seconds ends the process (exit status
128 + signal) with a message, instead of being ignored until the peer returns.
"""

import datetime
import os
import re
import signal
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from configs import resolve_device

DEFAULT_TIMEOUT = 300.0  # seconds a collective may wait for the other ranks
TIMEOUT_ENV = "SCORE_SDE_DIST_TIMEOUT"


class DistributedTimeoutError(RuntimeError):
    """A collective did not complete: another rank stalled, died or lost its connection."""


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    timeout: float = DEFAULT_TIMEOUT

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def _env_int(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def collective_timeout(timeout=None):
    """Seconds a collective may wait: `timeout` if given, else $SCORE_SDE_DIST_TIMEOUT, else
    DEFAULT_TIMEOUT. Must be positive."""
    if timeout is None:
        value = os.environ.get(TIMEOUT_ENV)
        if value:
            try:
                timeout = float(value)
            except ValueError:
                raise ValueError(f"environment variable {TIMEOUT_ENV}={value!r} is not a number "
                                 f"of seconds") from None
        else:
            timeout = DEFAULT_TIMEOUT
    timeout = float(timeout)
    if not timeout > 0 or timeout == float("inf"):
        raise ValueError(f"the collective timeout must be a positive number of seconds, got "
                         f"{timeout}")
    return timeout


def init_distributed(device=None, backend=None, timeout=None):
    """Join the process group described by the environment (if WORLD_SIZE > 1) and pick the
    device: `device` if given, else cuda:LOCAL_RANK when CUDA is available, else the CPU.
    `timeout` (seconds, see `collective_timeout`) bounds every collective wait."""
    timeout = collective_timeout(timeout)
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    device = torch.device(resolve_device("auto" if device is None else device))
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local}")  # one GPU per process under torchrun
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        if backend is None:
            backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":  # NCCL enforces the timeout through its watchdog
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout))
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device,
                    timeout=timeout)


def cleanup_distributed():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# What the main thread is waiting for in a collective, and since when (None: not waiting).
_WAITING = {"what": None, "since": 0.0}
_PEER_FAILURE = re.compile(r"timed? ?out|timeout|connection (closed|reset|refused)|broken pipe|"
                           r"peer|aborted|watchdog", re.IGNORECASE)


class collective:
    """Context manager around code that waits for the other ranks (`what` names it in
    messages): marks the wait for `StopSignals` and turns a timeout or a lost peer into a
    DistributedTimeoutError. A no-op in a one-process run."""

    def __init__(self, info, what):
        self.info, self.what = info, what

    def __enter__(self):
        if self.info.distributed and threading.current_thread() is threading.main_thread():
            self._outer = dict(_WAITING)
            _WAITING.update(what=self.what, since=time.monotonic())
        return self

    def __exit__(self, kind, exc, tb):
        if not self.info.distributed:
            return False
        if threading.current_thread() is threading.main_thread():
            _WAITING.update(self._outer)
        if exc is None or isinstance(exc, DistributedTimeoutError):
            return False
        dist_error = getattr(dist, "DistError", ())
        if isinstance(exc, dist_error) or (isinstance(exc, RuntimeError)
                                           and _PEER_FAILURE.search(str(exc))):
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DistributedTimeoutError(
                f"rank {self.info.rank} of {self.info.world_size}: {self.what} did not complete: "
                f"another rank stalled, died or lost its connection (collective timeout "
                f"{self.info.timeout:g} s, config.training.dist_timeout or ${TIMEOUT_ENV}); the "
                f"last checkpoint stays resumable. Cause: {detail}") from exc
        return False


def all_reduce_mean(x, info):
    """The mean of a tensor over all processes (the tensor itself in a one-process run)."""
    if not info.distributed:
        return x
    x = x.detach().clone()
    with collective(info, "an all-reduce"):
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / info.world_size


def any_process(flag, info):
    """True on every process if `flag` is true on any of them."""
    if not info.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    with collective(info, "an all-reduce of a flag"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)


def barrier(info):
    if info.distributed:
        with collective(info, "a barrier"):
            dist.barrier()


class StopSignals:
    """Context manager: SIGTERM/SIGINT set `.set` (the training loop then saves and stops at
    the next step; a second signal raises KeyboardInterrupt). Because a Python handler cannot
    run while the main thread waits inside a collective, a watcher thread (woken through
    `signal.set_wakeup_fd`) ends the process with a message and exit status 128 + signal when a
    signal has arrived and the main thread has been waiting in a `collective` for `grace`
    seconds since then: a stalled peer never makes a run ignore SIGTERM. Only installed in the
    main thread."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, grace=10.0, rank=0):
        self.grace, self.rank = float(grace), rank
        self.set = False
        self._old, self._pipe, self._thread = {}, None, None
        self._signal = None  # (signum, monotonic time) of the first signal the watcher saw
        self._done = threading.Event()

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        r, w = os.pipe()
        os.set_blocking(w, False)
        os.set_blocking(r, False)
        try:
            self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except (ValueError, OSError):
            os.close(r)
            os.close(w)
            return self
        self._pipe = (r, w)
        self._thread = threading.Thread(target=self._watch, name="stop-signal-watcher",
                                        daemon=True)
        self._thread.start()
        return self

    def _handle(self, signum, frame):
        if self.set:  # a second signal: stop at once
            raise KeyboardInterrupt(f"signal {signum} received twice")
        self.set = True

    def _watch(self):
        import select
        r = self._pipe[0]
        while not self._done.is_set():
            ready, _, _ = select.select([r], [], [], 0.1)
            if ready:
                try:
                    data = os.read(r, 64)
                except (BlockingIOError, OSError):
                    data = b""
                for signum in data:
                    if signum in [int(s) for s in self.SIGNALS] and self._signal is None:
                        self._signal = (signum, time.monotonic())
            if self._signal is None:
                continue
            signum, t_signal = self._signal
            what, since = _WAITING["what"], _WAITING["since"]
            if what is not None and time.monotonic() - max(t_signal, since) >= self.grace:
                name = signal.Signals(signum).name
                waited = time.monotonic() - since
                msg = (f"rank {self.rank}: {name} received while waiting {waited:.0f} s in "
                       f"{what} for other ranks (a rank stalled or died); exiting now without "
                       f"saving, the last checkpoint stays resumable\n")
                try:
                    os.write(2, msg.encode())
                finally:
                    os._exit(128 + signum)

    def __exit__(self, *exc):
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            signal.set_wakeup_fd(self._old_wakeup)
            for fd in self._pipe:
                os.close(fd)
            self._thread = self._pipe = None
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        return False
