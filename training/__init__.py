"""Training: losses and objectives, optimiser, data, the training loop, checkpoints.

    from training import losses, data
    loss = losses.dsm_loss(score_fn, sde, batch, generator=g)      # Eq. (7)
    ds = data.load_dataset(config, "train")                        # (image [C,H,W] in [0,1], label)

Modules: `losses` (DSM / SMLD / DDPM), `objectives` (the registry of score-matching objectives:
DSM, sliced and exact score matching), `optim` (Adam, warm-up, clipping), `data` (datasets),
`pipeline` (resumable sharded batch order, flips, dequantization), `train` (the loop),
`checkpoints`, `distributed` (torchrun/DDP), `logs`, `images`, `sampling`, `classifier`. The
command-line jobs are in `sde_cli`.
"""

# Every objective registers itself (a decorator) when its module is imported; importing them
# here means `training.objectives.get_objective('dsm')` works whatever was imported first.
from training import losses, objectives  # noqa: F401
