"""The DDPM U-Net (Ho et al. 2020, `diffusion_tf/models/unet.py`).

Layers live in one `nn.ModuleList` named `all_modules`, built and consumed in the same order as in
score_sde_pytorch, so its checkpoints load with strict key/shape checking.

Time conditioning (`forward(x, labels)`): `labels` [B] are time labels fed to the sinusoidal
embedding (VP/sub-VP continuous: 999 * t; discrete: the integer step). With `scale_by_sigma` (the
VE `cifar10_ddpm` config) the output is divided by `sigmas[labels.long()]`.
"""

import torch
import torch.nn as nn

from networks import layers
from networks.ncsnpp import (add_down_blocks, add_up_blocks, run_bottleneck, run_down_blocks,
                             run_up_blocks, checked_inputs, unet_settings)
from networks.registry import register_model


@register_model(name='ddpm')
class DDPM(nn.Module):
    """DDPM U-Net. `DDPM(config)` reads `config.model` and `config.data`;
    `forward(x [B, C, H, W], labels [B]) -> [B, C, H, W]`. Channel counts (nf * ch_mult) must be
    multiples of 32 (GroupNorm with 32 groups)."""

    def __init__(self, config):
        super().__init__()
        m = unet_settings(self, config)
        nf, ch_mult, num_resolutions = self.nf, self.ch_mult, self.num_resolutions
        n_blocks = self.num_res_blocks
        resamp_with_conv = bool(m.resamp_with_conv)
        # Original DDPM (diffusion_tf, and diffusers' AttnUpBlock2D) attends after every up-path
        # residual block; score_sde_pytorch once per level. `model.attn_every_up_block` picks the former.
        self.attn_every_up_block = bool(m.get('attn_every_up_block', False))
        bad = [nf * c for c in (1,) + ch_mult if (nf * c) % 32]
        if bad:
            raise ValueError(f"DDPM needs channel counts divisible by 32 (GroupNorm(32)); nf={nf}, "
                             f"ch_mult={ch_mult} give {bad}")

        def resnet_block(in_ch, out_ch=None):
            return layers.ResnetBlockDDPM(act=self.act, in_ch=in_ch, out_ch=out_ch, temb_dim=4 * nf,
                                          dropout=m.dropout)

        def attn_block(ch):
            return layers.AttnBlock(channels=ch)

        modules = []
        if self.conditional:
            modules += [layers.dense(nf, 4 * nf), layers.dense(4 * nf, 4 * nf)]

        # Downsampling path.
        modules.append(layers.ddpm_conv3x3(self.num_channels, nf))
        hs_c = [nf]
        in_ch = nf
        for i_level in range(num_resolutions):
            in_ch = add_down_blocks(modules, hs_c, in_ch, nf * ch_mult[i_level], n_blocks,
                                    resnet_block, attn_block if self.attn_at_level[i_level] else None)
            if i_level != num_resolutions - 1:
                modules.append(layers.Downsample(channels=in_ch, with_conv=resamp_with_conv))
                hs_c.append(in_ch)

        # Bottleneck.
        in_ch = hs_c[-1]
        modules += [resnet_block(in_ch), attn_block(in_ch), resnet_block(in_ch)]

        # Upsampling path.
        for i_level in reversed(range(num_resolutions)):
            every, once = self._up_attention(i_level)
            in_ch = add_up_blocks(modules, hs_c, in_ch, nf * ch_mult[i_level], n_blocks,
                                  resnet_block, attn_block if every else None)
            if once:
                modules.append(attn_block(in_ch))
            if i_level != 0:
                modules.append(layers.Upsample(channels=in_ch, with_conv=resamp_with_conv))
        assert not hs_c

        modules.append(nn.GroupNorm(num_channels=in_ch, num_groups=32, eps=1e-6))
        modules.append(layers.ddpm_conv3x3(in_ch, self.num_channels, init_scale=0.))
        self.all_modules = nn.ModuleList(modules)

    def _up_attention(self, i_level):
        """(after every up-path block, once after the level): where level `i_level` attends."""
        attend = self.attn_at_level[i_level]
        return attend and self.attn_every_up_block, attend and not self.attn_every_up_block

    def forward(self, x, labels):
        labels = checked_inputs(self, x, labels)
        mods = iter(self.all_modules)
        temb = None
        if self.conditional:
            dense0, dense1 = next(mods), next(mods)
            temb = layers.get_timestep_embedding(labels, self.nf).to(dense0.weight.dtype)
            temb = dense1(self.act(dense0(temb)))

        h = x if self.centered else 2 * x - 1.  # data in [0, 1] -> [-1, 1]

        # Downsampling path.
        hs = [next(mods)(h)]
        for i_level in range(self.num_resolutions):
            run_down_blocks(mods, hs, temb, self.num_res_blocks, self.attn_at_level[i_level])
            if i_level != self.num_resolutions - 1:
                hs.append(next(mods)(hs[-1]))

        h = run_bottleneck(mods, hs[-1], temb)

        # Upsampling path.
        for i_level in reversed(range(self.num_resolutions)):
            every, once = self._up_attention(i_level)
            h = run_up_blocks(mods, h, hs, temb, self.num_res_blocks, every)
            if once:
                h = next(mods)(h)
            if i_level != 0:
                h = next(mods)(h)
        assert not hs

        norm, conv = next(mods), next(mods)
        h = conv(self.act(norm(h)))
        if next(mods, None) is not None:
            raise RuntimeError("DDPM.forward did not use every module; construction and forward disagree")

        if self.scale_by_sigma:
            h = h / self.sigmas[labels.long()].to(h.dtype).reshape(-1, 1, 1, 1)
        return h
