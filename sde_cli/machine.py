"""The machine a command runs on: the device rule and the thread rule, said once."""

import os
import socket

import torch

from sde_cli.errors import CLIError


def resolve_device(args, config=None):
    """--device, else config.device, through `configs.resolve_device` ('auto' -> cuda when
    available); a device that is not there is an error now, not after the work."""
    import configs
    name = args.device or (config.get("device", "auto") if config is not None else "auto")
    try:
        device = torch.device(configs.resolve_device(name))
    except (RuntimeError, TypeError) as e:
        raise CLIError(f"--device {name!r} is not a device: {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name}: no CUDA device is available (torch "
                           f"{torch.__version__}, CUDA build: {torch.version.cuda is not None}); "
                           f"use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device {name}: MPS is not available")
    return device


def physical_cores():
    """Physical cores of this process's CPU set (Linux /proc/cpuinfo; else logical CPUs)."""
    try:
        usable = os.sched_getaffinity(0)
    except AttributeError:
        usable = set(range(os.cpu_count() or 1))
    try:
        cores, cpu, phys = set(), None, "0"
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu = int(value)
                elif key == "physical id":
                    phys = value
                elif key == "core id" and cpu in usable:
                    cores.add((phys, value))
        if cores:
            return len(cores)
    except (OSError, ValueError):
        pass
    return len(usable)


def choose_threads(args, config, device):
    """Set torch's CPU thread count and say why: --threads; else OMP_NUM_THREADS; else one per
    physical core not already busy (`free_cores`), for every model. Torch's default (one per
    logical CPU, whatever the load) oversubscribes a busy machine and loses up to tenfold;
    on a busy machine this gives 1."""
    if args.threads:
        n, why = args.threads, "--threads"
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():
        n, why = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        n, cores, busy = free_cores()
        why = f"{cores} physical cores, {busy}; --threads N to change"
    n = max(1, int(n))
    torch.set_num_threads(n)
    if device.type == "cpu":
        print(f"threads: {n} ({why})")
    return n


def cpu_times(cpus):
    """{cpu: (idle, total)} jiffies of the given logical CPUs from /proc/stat (idle counts
    iowait; total counts steal); {} where /proc/stat is not there."""
    times = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    v = [int(x) for x in fields[:8]]
                    times[int(name[3:])] = (v[3] + v[4], sum(v))
    except (OSError, ValueError):
        return {}
    return times


def idle_cpus(window=0.25):
    """Logical CPUs of this process's CPU set left idle by other processes over the next
    `window` seconds (a sum of idle fractions), or None where /proc/stat cannot tell."""
    import time
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        return None
    before = cpu_times(cpus)
    time.sleep(window)
    after = cpu_times(cpus)
    spans = [(after[c][0] - before[c][0], after[c][1] - before[c][1])
             for c in before if c in after]
    if not spans or not any(total for _, total in spans):
        return None
    return sum(idle / total if total else 1.0 for idle, total in spans)


def free_cores():
    """(free, cores, what was measured): the physical cores of this process's CPU set that
    other processes leave idle, divided among the processes torchrun started on this machine
    ($LOCAL_WORLD_SIZE; they all measure at once and would each see every core free), at least
    1. Idle time is measured over a quarter second (`idle_cpus`), which sees the machine as it
    is now; where that is unavailable, the 1-minute load average, which lags (it still counts a
    job that ended seconds ago)."""
    cores = physical_cores()
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    local = max(1, int(local)) if local.isdigit() else 1
    shared = f", {local} processes here" if local > 1 else ""
    idle = idle_cpus()
    if idle is not None:
        try:
            logical = len(os.sched_getaffinity(0))
        except AttributeError:
            logical = os.cpu_count() or 1
        free = idle * cores / max(logical, 1)
        what = f"{free:.1f} idle now"
    else:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        free, what = cores - load, f"load {load:.1f}"
    return max(1, min(cores, int(round(free))) // local), cores, what + shared


def environment(device):
    import platform
    return {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "machine": platform.machine(),
            "host": socket.gethostname(), "cpu_count": os.cpu_count()}
