"""Data-parallel runs under torchrun: process-group set-up from the environment, rank helpers.

torchrun (or any launcher) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; with
WORLD_SIZE > 1 `init_distributed` joins the group (NCCL on GPUs, gloo on CPU). Only rank 0 logs
and writes checkpoints; every process trains on its slice of each global batch
(`training.pipeline.shard_slice`) and DistributedDataParallel averages the gradients.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

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


def init_distributed(device=None, backend=None):
    """Join the process group described by the environment (if WORLD_SIZE > 1) and pick the
    device: `device` if given, else cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if device is None:
        device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local}")  # one GPU per process under torchrun
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        if backend is None:
            backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def cleanup_distributed():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(x, info):
    """The mean of a tensor over all processes (the tensor itself in a one-process run)."""
    if not info.distributed:
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / info.world_size


def any_process(flag, info):
    """True on every process if `flag` is true on any of them."""
    if not info.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info):
    if info.distributed:
        dist.barrier()
