"""Training: losses, optimiser, data, the training loop, and the command-line jobs.

    from training import losses, data
    loss = losses.dsm_loss(score_fn, sde, batch, generator=g)      # Eq. (7)
    ds = data.load_dataset(config, "train")                        # (image [C,H,W] in [0,1], label)

Modules: `losses` (DSM / SMLD / DDPM), `optim` (Adam, warm-up, clipping), `data` (datasets),
`pipeline` (resumable sharded batch order, flips, dequantization), `train` (the loop),
`checkpoints`, `distributed` (torchrun/DDP), `logs`, `images`, `sampling`, `commands` (the CLI
jobs behind ``python -m sde_lib.run``).
"""
