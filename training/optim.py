"""The optimiser of the original: Adam with linear learning-rate warm-up and gradient clipping."""

import torch


def get_optimizer(config, params, **adam_kwargs):
    """Adam(lr, betas=(beta1, 0.999), eps, weight_decay) from `config.optim`; `adam_kwargs`
    (e.g. fused=True on CUDA) go to torch.optim.Adam."""
    o = config.optim
    name = str(o.get("optimizer", "Adam"))
    if name.lower() != "adam":
        raise ValueError(f"config.optim.optimizer = {name!r} is not supported; use 'Adam'")
    return torch.optim.Adam(params, lr=o.lr, betas=(o.beta1, 0.999), eps=o.eps,
                            weight_decay=o.weight_decay, **adam_kwargs)


def warmup_lr(step, lr, warmup):
    """lr * min(step / warmup, 1); constant lr when warmup <= 0."""
    return lr * min(step / warmup, 1.0) if warmup > 0 else lr


def optimize_step(optimizer, params, step, *, lr, warmup=0, grad_clip=-1.0, scaler=None):
    """One update after backward(): set the warm-up lr for `step`, clip the global gradient norm
    to `grad_clip` (disabled when negative), take the step. With a torch.amp.GradScaler (fp16)
    the gradients are unscaled before clipping and a step with inf/nan gradients is skipped.
    Returns (lr, grad_norm or None)."""
    rate = warmup_lr(step, lr, warmup)
    if warmup > 0:
        for group in optimizer.param_groups:
            group["lr"] = rate
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = None
    if grad_clip >= 0:
        norm = torch.nn.utils.clip_grad_norm_(list(params), max_norm=grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return rate, norm


def optimize_fn_from_config(config):
    """`optimize_step` with lr, warmup and grad_clip bound from `config.optim`."""
    o = config.optim

    def optimize_fn(optimizer, params, step):
        return optimize_step(optimizer, params, step, lr=o.lr, warmup=o.warmup,
                             grad_clip=o.grad_clip)

    return optimize_fn
