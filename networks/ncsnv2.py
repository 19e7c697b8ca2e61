"""NCSN (Song & Ermon 2019) and NCSNv2 (Song & Ermon 2020): RefineNet score networks
conditioned on a discrete noise level y in {0, ..., num_scales - 1} (index into the descending
noise levels sigma_max = sigma_0 > ... > sigma_{L-1} = sigma_min).

  * NCSN ('ncsn'): every normalisation is conditional on y (conditional IN++, one embedding row
    per noise level); the output is the score s(x, sigma_y) itself.
  * NCSNv2 ('ncsnv2_64', 'ncsnv2_128', 'ncsnv2_256'; also 'ncsnv2', 'ncsnv2_deeper',
    'ncsnv2_deepest', the names of the NCSNv2 paper's code): unconditional network whose output
    is divided by sigma_y (Technique 3 of NCSNv2), so s(x, sigma) = net(x) / sigma.

All variants share one encoder/decoder shape, given as a table of stages: an encoder stage is two
residual blocks (`res<k>`), its decoder partner a RefineBlock (`refine<k>`) fusing the stage
output with the coarser decoder output. Names and registration order match score_sde_pytorch
(see `ncsn_layers` for the two fixes that make its NCSN/NCSNv2 networks run at all).

Inputs: images in [0, 1] (mapped to [-1, 1] inside unless `config.data.centered`) or [-1, 1];
noise levels y as integer indices, as the discrete VE score function gives them
(`networks.get_score_fn(sde, model, continuous=False)`).
"""

import torch
import torch.nn as nn

from networks.ncsn_layers import RefineBlock, ResidualBlock
from networks.normalization import get_normalization
from networks.registry import register_model
from networks.utils import get_act, get_sigmas

# One row per encoder stage, from fine to coarse:
#   (encoder name, decoder name, output channels / nf, resample of the first block, dilation).
# Decoder blocks are registered in the order of `decoder_order` (the original's attribute order,
# which fixes the parameter order an EMA's `shadow_params` follows).
_STAGES_64 = (('res1', 'refine4', 1, None, 1),
              ('res2', 'refine3', 2, 'down', 1),
              ('res3', 'refine2', 2, 'down', 2),
              ('res4', 'refine1', 2, 'down', 4))
_STAGES_128 = (('res1', 'refine5', 1, None, 1),
               ('res2', 'refine4', 2, 'down', 1),
               ('res3', 'refine3', 2, 'down', 1),
               ('res4', 'refine2', 4, 'down', 2),
               ('res5', 'refine1', 4, 'down', 4))
_STAGES_256 = (('res1', 'refine5', 1, None, 1),
               ('res2', 'refine4', 2, 'down', 1),
               ('res3', 'refine3', 2, 'down', 1),
               ('res31', 'refine31', 2, 'down', 1),
               ('res4', 'refine2', 4, 'down', 2),
               ('res5', 'refine1', 4, 'down', 4))


class RefineNet(nn.Module):
    """begin_conv -> encoder stages -> RefineBlocks (coarse to fine) -> normalizer -> act ->
    end_conv. Subclasses set `stages`, `decoder_order` and `conditional`."""

    stages = _STAGES_64
    decoder_order = ('refine1', 'refine2', 'refine3', 'refine4')
    conditional = False

    def __init__(self, config):
        super().__init__()
        self.centered = bool(config.data.centered)
        self.num_scales = int(config.model.num_scales)
        channels = int(config.data.num_channels)
        self.nf = nf = int(config.model.nf)
        self.act = act = get_act(config)
        norm = get_normalization(config, conditional=self.conditional)
        if not self.conditional:
            # sigma_i, descending, float64 as in the original's state dict.
            self.register_buffer('sigmas', torch.tensor(get_sigmas(config)))

        self.begin_conv = nn.Conv2d(channels, nf, 3, stride=1, padding=1)
        self.normalizer = norm(nf)
        self.end_conv = nn.Conv2d(nf, channels, 3, stride=1, padding=1)

        in_ch = nf
        widths = []
        for enc, _, mult, resample, dilation in self.stages:
            out_ch = mult * nf
            setattr(self, enc, nn.ModuleList([
                ResidualBlock(in_ch, out_ch, norm, resample=resample, act=act, dilation=dilation),
                ResidualBlock(out_ch, out_ch, norm, resample=None, act=act, dilation=dilation)]))
            widths.append(out_ch)
            in_ch = out_ch

        # Decoder block of stage i: inputs [stage i output, decoder output from stage i+1]
        # (just the first for the coarsest stage); output width that of stage i-1 (nf for i = 0).
        refine = {}
        last = len(self.stages) - 1
        for i, (_, dec, _, _, _) in enumerate(self.stages):
            width = widths[i]
            refine[dec] = RefineBlock([width] if i == last else [width, width],
                                      widths[i - 1] if i > 0 else nf, act=act,
                                      start=(i == last), end=(i == 0),
                                      norm=norm if self.conditional else None,
                                      pool='avg' if self.conditional else 'max')
        if sorted(refine) != sorted(self.decoder_order):
            raise AssertionError(f"decoder_order {self.decoder_order} does not name the stages' "
                                 f"decoder blocks {sorted(refine)}")
        for dec in self.decoder_order:
            setattr(self, dec, refine[dec])

    def _check_labels(self, x, y):
        if not torch.is_tensor(y) or y.dim() != 1 or y.shape[0] != x.shape[0]:
            got = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
            raise ValueError(f"{type(self).__name__} takes noise-level indices y of shape [B] = "
                             f"[{x.shape[0]}], got {got}")
        if torch.is_floating_point(y) or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"{type(self).__name__} takes integer noise-level indices in "
                            f"[0, {self.num_scales - 1}], got a {y.dtype} tensor; it is a discrete "
                            f"VE model: use get_score_fn(sde, model, continuous=False)")

    def forward(self, x, y):
        self._check_labels(x, y)
        cond = y if self.conditional else None
        h = x if self.centered else 2 * x - 1.
        h = self.begin_conv(h)
        skips = []
        for enc, *_ in self.stages:
            for block in getattr(self, enc):
                h = block(h, cond)
            skips.append(h)
        ref = None
        for (_, dec, *_), skip in zip(reversed(self.stages), reversed(skips)):
            inputs = [skip] if ref is None else [skip, ref]
            ref = getattr(self, dec)(inputs, skip.shape[2:], cond)
        h = self.normalizer(ref) if cond is None else self.normalizer(ref, cond)
        h = self.end_conv(self.act(h))
        if self.conditional:
            return h
        used_sigmas = self.sigmas[y].to(h.dtype)
        return h / used_sigmas.view(-1, *([1] * (h.dim() - 1)))


@register_model(name='ncsn')
class NCSN(RefineNet):
    """NCSN (v1): the 4-stage RefineNet, noise-conditional IN++ everywhere; outputs the score."""

    conditional = True


@register_model(name='ncsnv2')
@register_model(name='ncsnv2_64')
class NCSNv2(RefineNet):
    """NCSNv2 for images up to 64px (CIFAR-10, CelebA 64): 4 stages, output / sigma_y."""


@register_model(name='ncsnv2_deeper')
@register_model(name='ncsnv2_128')
class NCSNv2_128(RefineNet):
    """NCSNv2 for 96-128px images (LSUN 128, 'NCSNv2Deeper'): 5 stages up to 4 nf channels."""

    stages = _STAGES_128
    decoder_order = ('refine1', 'refine2', 'refine3', 'refine4', 'refine5')


@register_model(name='ncsnv2_deepest')
@register_model(name='ncsnv2_256')
class NCSNv2_256(RefineNet):
    """NCSNv2 for up to 256px images ('NCSNv2Deepest'): 6 stages (an extra 'res31')."""

    stages = _STAGES_256
    decoder_order = ('refine1', 'refine2', 'refine3', 'refine31', 'refine4', 'refine5')
