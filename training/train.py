"""The training loop: one process, or many under torchrun with DistributedDataParallel.

`train(config, workdir)` resumes from `<workdir>/checkpoints-meta/checkpoint.pth` when it exists
and otherwise starts from scratch (a workdir with a history but no readable checkpoint is
refused; `restart=True` moves such a history aside and starts afresh). Each step t (counting finished updates from 0):

  1. the next global batch of the resumable data order (`training.pipeline.BatchOrder`); this
     process takes its rows (`shard_slice`);
  2. flips / dequantization / scaling and the loss's noise are drawn for the whole global batch
     from a generator seeded by (seed, t), so the run is the same for any number of processes
     and a resumed run repeats exactly what the uninterrupted one would have done; the global
     torch RNG (dropout) is reseeded by (seed, t, rank) — a per-process seed;
  3. loss, backward (DDP averages gradients), Adam with warm-up lr * min(t / warmup, 1) and
     gradient clipping, EMA update.

Rank 0 writes `log.jsonl` (step, loss, lr, time...), a progress bar, the periodic and meta
checkpoints and snapshot sample grids. SIGTERM/SIGINT save the meta checkpoint and stop (a rank
stuck waiting for a stalled peer exits instead, `training.distributed.StopSignals`).

Nothing lost, nothing mixed: the workdir is locked for the run (`sde_base.fileio.WorkdirLock`);
temporary files of writers that died are removed at start; every file is written atomically;
the run resumes from the newest readable checkpoint (`training.checkpoints.latest_checkpoint`:
the meta one, or the newest periodic one if that cannot be read), and log records of steps
after it, written by a run that died before saving them, are dropped, so `log.jsonl` holds each
step once. A run killed at any moment and resumed ends with the same weights as an
uninterrupted one.
"""

import contextlib
import dataclasses
import math
import os
import time

import torch

from configs import check_values
from networks import ExponentialMovingAverage, create_model, fused_adam_kwargs
from networks.runtime import RuntimeOptions, fast_math, prepare_model
from networks.sizes import check_model_config
from sde_lib import get_sde
from sde_base.fileio import WorkdirLock, WorkdirLockedError, remove_stale_temps
from training.checkpoints import (PERIODIC_DIR, ensure_sidecar, keep_superseded, meta_path,
                                  move_history_aside, periodic_path, restore_training_state,
                                  resume_point, save_training_state)
from training.data import load_dataset
from training.distributed import (StopSignals, all_reduce_mean, any_process, barrier, collective,
                                  init_distributed)
from training.images import save_grid, save_npz, to_uint8
from training.logs import RunLogger, read_log
from training.losses import get_loss_fn
from training.optim import get_optimizer, optimize_step
from training.pipeline import BatchOrder, augment, get_images, mix_seed, shard_slice
from training.sampling import draw_samples

# Stream keys for mix_seed: one independent random stream per purpose.
_STEP, _DROPOUT, _EVAL, _SNAPSHOT = 1, 2, 3, 4


def _written_dirs(workdir):
    """The folders a training run writes: the workdir, the checkpoint folders and the snapshot
    sample folders."""
    out = [workdir, os.path.join(workdir, PERIODIC_DIR), os.path.dirname(meta_path(workdir))]
    samples = os.path.join(workdir, "samples")
    if os.path.isdir(samples):
        out += [e.path for e in os.scandir(samples) if e.is_dir()]
    return out


def _complete_checkpoint(workdir, path, step, logger):
    """Recreate what a kill between saving checkpoint `path` (at `step`) and its sidecar or log
    record left missing: the sidecar, and for a periodic checkpoint its log record."""
    ensure_sidecar(path, step)
    if os.path.dirname(os.path.abspath(path)) != os.path.abspath(os.path.join(workdir,
                                                                              PERIODIC_DIR)):
        return
    logged = any(r.get("event") == "checkpoint" and r.get("step") == step
                 for r in read_log(logger.path) if isinstance(r, dict)) \
        if os.path.isfile(logger.path) else False
    if not logged:
        logger.log({"event": "checkpoint", "path": path}, step=step)


def _quiet(*args, **kwargs):
    """Non-zero ranks: discovery warnings are rank 0's to print."""


def _generator(device, seed):
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _every(step, freq):
    return freq is not None and freq > 0 and step % freq == 0


def build_state(config, device, batch=None):
    """Model (seeded by config.seed, identical on every process), EMA and optimizer (fused
    Adam on CUDA). First, a network and training state that cannot fit in the device's memory
    (weights, gradients, EMA, Adam's two moments, and the activations of `batch` images, default
    config.training.batch_size) is refused naming the field (`networks.sizes`)."""
    check_model_config(config, device=device, copies=5, grad=True,
                       batch=int(config.training.batch_size) if batch is None else batch,
                       batch_field="training.batch_size", what="training this network")
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
          stop_after=None, log=print, lock=True, restart=False):
    """Train (or resume) as `config` says, writing into `workdir`. Returns a summary dict.

    stop_after: return after this many steps of this call (the run stays resumable).
    restart: start from step 0, moving the workdir's history (log, checkpoints, samples) into
    `<workdir>/history-<time>` first (`training.checkpoints.move_history_aside`). Without it a
    workdir whose history has no readable checkpoint is refused (TrainingHistoryError naming
    the unreadable files) before anything is written. The config's values are checked first
    (`configs.check_values`: one ValueError naming every field that cannot be right).
    lock: hold the workdir's lock (`sde_base.fileio.WorkdirLock`) for the run, so a second run
    on the same workdir fails at once naming this one's pid and host. Under DDP rank 0 holds
    it (the ranks of one run share the workdir) and every rank stops if rank 0 cannot get it.
    `config.training.dist_timeout` (seconds, default `training.distributed.DEFAULT_TIMEOUT`)
    bounds every collective wait, so a stalled or dead rank ends the others."""
    check_values(config)
    info = info or init_distributed(device=device,
                                    timeout=config.training.get("dist_timeout", None))
    workdir_lock = WorkdirLock(workdir, what="train") if lock and info.is_main else None
    error = None
    if workdir_lock is not None:
        try:
            workdir_lock.acquire()
        except WorkdirLockedError as e:
            error = e
    if any_process(error is not None, info):
        if error is not None:
            raise error
        raise WorkdirLockedError(workdir, {"pid": "(see rank 0)", "host": "(see rank 0)"})
    try:
        return _train(config, workdir, info, data_dir, progress, stop_after, log, restart)
    finally:
        if workdir_lock is not None:
            workdir_lock.release()


def _train(config, workdir, info, data_dir, progress, stop_after, log, restart=False):

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

    options = RuntimeOptions.from_config(config)
    model, ema, optimizer = build_state(config, device, batch=local // accum)
    scaler = torch.amp.GradScaler(device.type) if options.precision == "fp16" else None
    sde = get_sde(config)
    loss_fn = get_loss_fn(config, sde)
    train_ds = load_dataset(config, "train", data_dir=data_dir)
    order = BatchOrder(len(train_ds), B, seed)

    if info.is_main:
        for path in remove_stale_temps(*_written_dirs(workdir)):
            log(f"removed {path}, left by a writer that died")
        moved = move_history_aside(workdir) if restart else None
        if moved is not None:
            log(f"restarting from step 0: the earlier history of {workdir} is in {moved}")
    barrier(info)
    # Before anything is written: a history whose checkpoints are all unreadable is refused.
    resumed_from = resume_point(workdir, warn=None if info.is_main else _quiet)

    step = 0
    interval_loss = torch.zeros((), device=device)
    interval_n = 0
    if resumed_from is not None:
        step, extra = restore_training_state(resumed_from, model, ema, optimizer,
                                             map_location=device)
        if "data_order" in extra:
            order.load_state_dict(extra["data_order"])
        if scaler is not None and "grad_scaler" in extra:
            scaler.load_state_dict(extra["grad_scaler"])
        if "log_interval" in extra:  # the loss summed since the last log record
            interval_loss = extra["log_interval"]["loss"].to(device).reshape(())
            interval_n = int(extra["log_interval"]["n"])
        if info.is_main:
            log(f"resuming from {resumed_from} at step {step}")
    if info.is_main:  # only now that the config, the data and the state have been checked
        os.makedirs(os.path.join(workdir, PERIODIC_DIR), exist_ok=True)
        os.makedirs(os.path.dirname(meta_path(workdir)), exist_ok=True)
    # Records of steps after the resumed one came from a run that died before saving them.
    logger = RunLogger(workdir, enabled=info.is_main, start_step=step)
    if resumed_from is not None and info.is_main:
        _complete_checkpoint(workdir, resumed_from, step, logger)
    barrier(info)

    net = wrap_for_training(model, options, info)

    def checkpoint_extra():
        # Called on every rank (a collective): the loss since the last log record, averaged
        # over the processes, so a resumed run logs the same mean as an uninterrupted one.
        pending = all_reduce_mean(interval_loss, info).detach().to("cpu", copy=True)
        out = {"data_order": order.state_dict(),
               "log_interval": {"loss": pending, "n": interval_n}}
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
    t_interval = time.time()
    last_loss, status = float("nan"), "done"
    log_freq = int(tr.get("log_freq", 50))

    stop_signals = StopSignals(grace=float(tr.get("stop_grace", 10.0)), rank=info.rank)
    with stop_signals as stop, fast_math(options, device):
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
            with collective(info, f"the gradient all-reduce of step {step}"):
                for a in range(accum):
                    part = slice(a * chunk, (a + 1) * chunk)
                    sync = a == accum - 1 or not info.distributed
                    ctx = net.no_sync() if not sync else contextlib.nullcontext()
                    with ctx:
                        loss = loss_fn(net, x[part], {k: v[part] for k, v in noise.items()})
                        loss = loss / accum
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

            # The periodic checkpoint (and its log record) before the meta one: a run killed
            # between the two resumes from the older meta checkpoint and redoes both.
            if _every(step, tr.get("snapshot_freq", 0)) or step == n_iters:
                k = -(-step // tr.snapshot_freq) if tr.get("snapshot_freq", 0) > 0 else step
                extra = checkpoint_extra()
                if info.is_main:
                    kept = keep_superseded(periodic_path(workdir, k), step)
                    if kept is not None:
                        logger.log({"event": "kept", "path": kept,
                                    "why": f"{periodic_path(workdir, k)} is now step {step}"},
                                   step=step)
                    save_training_state(periodic_path(workdir, k), model, config, ema, optimizer,
                                        step, extra)
                    logger.log({"event": "checkpoint", "path": periodic_path(workdir, k)},
                               step=step)
                    if tr.get("snapshot_sampling", False):
                        snapshot_samples(model, ema, sde, config, workdir, step, device,
                                         mix_seed(seed, _SNAPSHOT, step))
                barrier(info)
            if _every(step, tr.get("snapshot_freq_for_preemption", 0)) or step == n_iters:
                extra = checkpoint_extra()
                if info.is_main:
                    save_training_state(meta_path(workdir), model, config, ema, optimizer, step,
                                        extra)

    if status != "done":
        extra = checkpoint_extra()
        if info.is_main:
            save_training_state(meta_path(workdir), model, config, ema, optimizer, step, extra)
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
