"""The training loop: one process, or many under torchrun with DistributedDataParallel.

`train(config, workdir)` resumes from `<workdir>/checkpoints-meta/checkpoint.pth` when it exists
and otherwise starts from scratch. Each step t (counting finished updates from 0):

  1. the next global batch of the resumable data order (`training.pipeline.BatchOrder`); this
     process takes its rows (`shard_slice`);
  2. flips / dequantization / scaling and the loss's noise are drawn for the whole global batch
     from a generator seeded by (seed, t), so the run is the same for any number of processes
     and a resumed run repeats exactly what the uninterrupted one would have done; the global
     torch RNG (dropout) is reseeded by (seed, t, rank) — a per-process seed;
  3. loss, backward (DDP averages gradients), Adam with warm-up lr * min(t / warmup, 1) and
     gradient clipping, EMA update.

Rank 0 writes `log.jsonl` (step, loss, lr, time...), a progress bar, the periodic and meta
checkpoints and snapshot sample grids. SIGTERM/SIGINT save the meta checkpoint and stop.
"""

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time

import torch

from training.checkpoints import (meta_path, periodic_path, restore_training_state,
                                  save_training_state)
from training.data import load_dataset
from training.distributed import all_reduce_mean, any_process, barrier, init_distributed
from training.logs import RunLogger, read_log
from training.losses import get_loss_fn
from training.optim import get_optimizer, optimize_step
from training.pipeline import BatchOrder, augment, get_images, mix_seed, shard_slice

# Stream keys for mix_seed: one independent random stream per purpose.
_STEP, _DROPOUT, _EVAL, _SNAPSHOT = 1, 2, 3, 4


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop saves a checkpoint and returns at the next step (a second
    signal interrupts at once)."""

    def __init__(self):
        self.set = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set:  # a second signal: stop at once
            raise KeyboardInterrupt(f"signal {signum} received twice")
        self.set = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _generator(device, seed):
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _every(step, freq):
    return freq is not None and freq > 0 and step % freq == 0


def build_state(config, device):
    """Model (seeded by config.seed, identical on every process), EMA and optimizer (fused
    Adam on CUDA)."""
    from networks import ExponentialMovingAverage, create_model, fused_adam_kwargs
    torch.manual_seed(int(config.seed))
    model = create_model(config, device=device)
    ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
    optimizer = get_optimizer(config, model.parameters(), **fused_adam_kwargs(device))
    return model, ema, optimizer


def wrap_for_training(model, options, info):
    """The module the training step calls: `model` in channels_last layout if asked, inside
    DistributedDataParallel when several processes run, torch.compile'd if asked
    (`config.runtime`, networks.RuntimeOptions). `model` itself stays the unwrapped network
    that the EMA and the checkpoints use."""
    from networks.runtime import prepare_model
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    net = model
    if info.distributed:
        device = info.device
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if options.compile:
        net = prepare_model(net, dataclasses.replace(options, channels_last=False))
    return net


def train(config, workdir, *, info=None, device=None, data_dir=None, progress=True,
          stop_after=None, log=print):
    """Train (or resume) as `config` says, writing into `workdir`. Returns a summary dict.

    stop_after: return after this many steps of this call (the run stays resumable)."""
    from networks.runtime import RuntimeOptions, fast_math
    from sde_lib import get_sde

    info = info or init_distributed(device=device)
    device = info.device
    tr = config.training
    n_iters = int(tr.n_iters)
    B = int(tr.batch_size)
    rows = shard_slice(B, info.rank, info.world_size)
    accum = int(tr.get("grad_accum", 1))
    local = rows.stop - rows.start
    if accum < 1 or local % accum:
        raise ValueError(f"config.training.grad_accum = {accum} must divide the per-process "
                         f"batch {local}")
    seed = int(config.seed)

    if info.is_main:
        os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
        os.makedirs(os.path.dirname(meta_path(workdir)), exist_ok=True)
    logger = RunLogger(workdir, enabled=info.is_main)

    options = RuntimeOptions.from_config(config)
    model, ema, optimizer = build_state(config, device)
    scaler = torch.amp.GradScaler(device.type) if options.precision == "fp16" else None
    sde = get_sde(config)
    loss_fn = get_loss_fn(config, sde)
    train_ds = load_dataset(config, "train", data_dir=data_dir)
    order = BatchOrder(len(train_ds), B, seed)

    step = 0
    resumed_from = None
    if os.path.isfile(meta_path(workdir)):
        step, extra = restore_training_state(meta_path(workdir), model, ema, optimizer,
                                             map_location=device)
        if "data_order" in extra:
            order.load_state_dict(extra["data_order"])
        if scaler is not None and "grad_scaler" in extra:
            scaler.load_state_dict(extra["grad_scaler"])
        resumed_from = meta_path(workdir)
        if info.is_main:
            log(f"resuming from {resumed_from} at step {step}")
    barrier(info)

    net = wrap_for_training(model, options, info)

    def checkpoint_extra():
        out = {"data_order": order.state_dict()}
        if scaler is not None:
            out["grad_scaler"] = scaler.state_dict()
        return out

    eval_ds = None
    if tr.get("eval_freq", 0) and tr.eval_freq > 0:
        try:
            eval_ds = load_dataset(config, "test", data_dir=data_dir)
        except FileNotFoundError as e:
            if info.is_main:
                log(f"no evaluation split, skipping eval losses: {str(e).splitlines()[0]}")
    eval_order = BatchOrder(len(eval_ds), min(B, len(eval_ds)), seed) if eval_ds else None

    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm
        bar = tqdm(total=n_iters, initial=step, desc="train", dynamic_ncols=True,
                   unit="step", smoothing=0.1)
    logger.log({"event": "start", "n_iters": n_iters, "batch_size": B,
                "world_size": info.world_size, "resumed_from": resumed_from,
                "sde": str(tr.sde), "model": str(config.model.name)}, step=step)

    start_step, t_start, cpu_start = step, time.time(), time.process_time()
    interval_loss = torch.zeros((), device=device)
    interval_n, t_interval = 0, time.time()
    last_loss, status = float("nan"), "done"
    log_freq = int(tr.get("log_freq", 50))

    with _StopFlag() as stop, fast_math(options, device):
        while step < n_iters:
            if stop_after is not None and step - start_step >= stop_after:
                status = "stopped"
                break
            if any_process(stop.set, info):
                status = "preempted"
                break
            g = _generator(device, mix_seed(seed, _STEP, step))
            torch.manual_seed(mix_seed(seed, _DROPOUT, step, info.rank))
            idx = order.next()
            x, _ = get_images(train_ds, idx[rows])
            x = augment(x.to(device), config, generator=g, global_batch=B, rows=rows)
            noise = {k: v[rows] for k, v in
                     loss_fn.draw((B,) + tuple(x.shape[1:]), generator=g, device=device,
                                  dtype=x.dtype).items()}

            net.train()
            optimizer.zero_grad(set_to_none=True)
            chunk = local // accum
            step_loss = torch.zeros((), device=device)
            for a in range(accum):
                part = slice(a * chunk, (a + 1) * chunk)
                sync = a == accum - 1 or not info.distributed
                ctx = net.no_sync() if not sync else contextlib.nullcontext()
                with ctx:
                    loss = loss_fn(net, x[part], {k: v[part] for k, v in noise.items()}) / accum
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                step_loss += loss.detach()
            if not torch.isfinite(step_loss):
                raise FloatingPointError(f"the training loss is {step_loss.item()} at step {step}")
            lr, gnorm = optimize_step(optimizer, model.parameters(), step, lr=config.optim.lr,
                                      warmup=config.optim.warmup, grad_clip=config.optim.grad_clip,
                                      scaler=scaler)
            ema.update(model.parameters())
            step += 1
            interval_loss += step_loss
            interval_n += 1

            if _every(step, log_freq) or step == n_iters:
                mean_loss = all_reduce_mean(interval_loss / interval_n, info).item()
                now = time.time()
                rate = interval_n / max(now - t_interval, 1e-9)
                last_loss = mean_loss
                rec = {"event": "train", "loss": mean_loss, "lr": lr, "steps_per_sec": rate,
                       "elapsed": now - t_start}
                if gnorm is not None:
                    rec["grad_norm"] = float(gnorm)
                logger.log(rec, step=step)
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.4g}", lr=f"{lr:.2g}")
                interval_loss.zero_()
                interval_n, t_interval = 0, now
            if bar is not None:
                bar.update(1)

            if eval_order is not None and _every(step, tr.eval_freq):
                ev = evaluate_loss(model, ema, loss_fn, config, eval_ds, eval_order, info,
                                   mix_seed(seed, _EVAL, step))
                logger.log({"event": "eval", "eval_loss": ev}, step=step)

            if _every(step, tr.get("snapshot_freq_for_preemption", 0)) or step == n_iters:
                if info.is_main:
                    save_training_state(meta_path(workdir), model, config, ema, optimizer, step,
                                        checkpoint_extra())
            if _every(step, tr.get("snapshot_freq", 0)) or step == n_iters:
                k = -(-step // tr.snapshot_freq) if tr.get("snapshot_freq", 0) > 0 else step
                if info.is_main:
                    save_training_state(periodic_path(workdir, k), model, config, ema, optimizer,
                                        step, checkpoint_extra())
                    logger.log({"event": "checkpoint", "path": periodic_path(workdir, k)},
                               step=step)
                    if tr.get("snapshot_sampling", False):
                        snapshot_samples(model, ema, sde, config, workdir, step, device,
                                         mix_seed(seed, _SNAPSHOT, step))
                barrier(info)

    if status != "done" and info.is_main:
        save_training_state(meta_path(workdir), model, config, ema, optimizer, step,
                            checkpoint_extra())
    if bar is not None:
        bar.close()
    if math.isnan(last_loss) and info.is_main:  # nothing left to train: the logged last loss
        done = [r for r in read_log(logger.path) if r.get("event") == "train"]
        last_loss = float(done[-1]["loss"]) if done else last_loss
    elapsed = time.time() - t_start
    summary = {"status": status, "step": step, "start_step": start_step, "n_iters": n_iters,
               "final_loss": last_loss, "train_seconds": elapsed,
               "train_cpu_seconds": time.process_time() - cpu_start,
               "steps_per_sec": (step - start_step) / max(elapsed, 1e-9),
               "world_size": info.world_size, "resumed_from": resumed_from,
               "checkpoint": meta_path(workdir)}
    logger.log({"event": "end", **{k: v for k, v in summary.items() if k != "step"}}, step=step)
    logger.close()
    summary["model"], summary["ema"], summary["sde"] = model, ema, sde
    return summary


@torch.no_grad()
def evaluate_loss(model, ema, loss_fn, config, dataset, order, info, seed):
    """The loss of the EMA weights on the next evaluation batch (mean over processes)."""
    device = next(model.parameters()).device
    g = _generator(device, seed)
    idx = order.next()
    B = len(idx)
    rows = shard_slice(B, info.rank, info.world_size) if B % info.world_size == 0 else slice(0, B)
    x, _ = get_images(dataset, idx[rows])
    x = augment(x.to(device), config, generator=g, global_batch=B, rows=rows)
    noise = {k: v[rows] for k, v in loss_fn.draw((B,) + tuple(x.shape[1:]), generator=g,
                                                  device=device, dtype=x.dtype).items()}
    with ema_weights(model, ema):
        model.eval()
        loss = loss_fn(model, x, noise)
    model.train()
    return all_reduce_mean(loss, info).item()


class ema_weights:
    """Context manager: the model holds the EMA weights inside, its own weights after."""

    def __init__(self, model, ema):
        self.model, self.ema = model, ema

    def __enter__(self):
        self.saved = [p.detach().clone() for p in self.model.parameters()]
        self.ema.copy_to(self.model.parameters())
        return self.model

    def __exit__(self, *exc):
        with torch.no_grad():
            for p, s in zip(self.model.parameters(), self.saved):
                p.copy_(s)
        return False


def snapshot_samples(model, ema, sde, config, workdir, step, device, seed):
    """Sample with the EMA weights; write samples/iter_<step>/sample.png and sample.npz."""
    from training.images import save_grid, save_npz, to_uint8
    from training.sampling import draw_samples
    n = int(config.training.get("snapshot_samples", min(int(config.training.batch_size), 64)))
    g = _generator(device, seed)
    with ema_weights(model, ema):
        images, nfe, _ = draw_samples(model, sde, config, n, generator=g, device=device)
    out = os.path.join(workdir, "samples", f"iter_{step}")
    save_grid(images, os.path.join(out, "sample.png"), nrow=int(math.ceil(math.sqrt(n))))
    save_npz(os.path.join(out, "sample.npz"), samples=to_uint8(images))
    return out


__all__ = ["train", "build_state", "wrap_for_training", "evaluate_loss", "ema_weights",
           "snapshot_samples"]
