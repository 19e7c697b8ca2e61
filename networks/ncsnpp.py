"""NCSN++ and DDPM++ (Song et al. 2021, "Score-Based Generative Modeling through SDEs", App. H):
one U-Net family, selected by `config.model`.

All layers live in one `nn.ModuleList` named `all_modules`, built and consumed in the same order as
in score_sde_pytorch, so its checkpoints load with strict key/shape checking.

Time conditioning (`forward(x, time_cond)`):
  * embedding_type 'fourier' (continuous VE models): `time_cond` is the noise scale sigma [B]; the
    embedding is of log sigma, and with `scale_by_sigma` the output is divided by sigma.
  * embedding_type 'positional': `time_cond` is a time label [B] (VP/sub-VP: 999 * t, or a discrete
    index); with `scale_by_sigma` the output is divided by `sigmas[time_cond.long()]`.

Two optional fields cover the layouts diffusers' NCSN++ blocks build: `model.attention_head_dim`
(None: one attention head, as the original; d: C / d heads of d channels in every attention
layer) and `model.group_rule` ('ncsnpp': min(C // 4, 32) GroupNorm groups everywhere;
'diffusers': as diffusers' skip blocks, 32 groups in the attention of attention levels and
min(h + skip // 4, 32) in the first GroupNorm of their up-path blocks; the two agree from 128
channels on).
"""

import torch
import torch.nn as nn

from networks import layers, layerspp
from networks.registry import register_model
from networks.utils import get_act, get_sigmas

_PROGRESSIVE = ('none', 'output_skip', 'residual')
_PROGRESSIVE_INPUT = ('none', 'input_skip', 'residual')
_EMBEDDINGS = ('fourier', 'positional')
_COMBINE = ('sum', 'cat')
_RESBLOCKS = ('ddpm', 'biggan')
_GROUP_RULES = ('ncsnpp', 'diffusers')


def _choice(value, allowed, field):
    v = str(value).lower()
    if v not in allowed:
        raise ValueError(f"config.model.{field} must be one of {allowed}, got {value!r}")
    return v


def check_unused_switches(model_cfg):
    """The original accepts `conv_size`, `attention_type` and `normalization` but always builds
    3x3 convolutions, DDPM attention and GroupNorm: refuse other values instead of ignoring them."""
    if int(model_cfg.get('conv_size', 3)) != 3:
        raise ValueError(f"config.model.conv_size={model_cfg.conv_size}: only 3 is supported "
                         "(the original always uses 3x3 convolutions)")
    if str(model_cfg.get('attention_type', 'ddpm')).lower() != 'ddpm':
        raise ValueError(f"config.model.attention_type={model_cfg.attention_type!r}: only 'ddpm' "
                         "is supported")
    if str(model_cfg.get('normalization', 'GroupNorm')).lower() != 'groupnorm':
        raise ValueError(f"config.model.normalization={model_cfg.normalization!r}: this network "
                         "uses GroupNorm only")


def checked_inputs(net, x, time_cond):
    """x [B, C, H, W] checked against `net.num_channels`, and `time_cond` as a [B] tensor on x's
    device (a scalar is broadcast over the batch)."""
    if x.dim() != 4 or x.shape[1] != net.num_channels:
        raise ValueError(f"{type(net).__name__} expects x of shape [B, {net.num_channels}, H, W], "
                         f"got {tuple(x.shape)}")
    time_cond = torch.as_tensor(time_cond, device=x.device)
    if time_cond.dim() == 0:
        time_cond = time_cond.expand(x.shape[0])
    if time_cond.shape != (x.shape[0],):
        raise ValueError(f"time_cond must have shape [B] = [{x.shape[0]}], got "
                         f"{tuple(time_cond.shape)}")
    return time_cond


def unet_settings(net, config):
    """Set the attributes NCSN++ and DDPM share (activation, the `sigmas` buffer, widths,
    resolutions, switches) on `net`; returns `config.model`."""
    m = config.model
    check_unused_switches(m)
    net.act = get_act(config)
    net.register_buffer('sigmas', torch.tensor(get_sigmas(config)))
    net.nf = int(m.nf)
    net.ch_mult = tuple(m.ch_mult)
    net.num_res_blocks = int(m.num_res_blocks)
    net.attn_resolutions = tuple(m.attn_resolutions)
    net.num_resolutions = len(net.ch_mult)
    net.all_resolutions = [config.data.image_size // (2 ** i) for i in range(net.num_resolutions)]
    net.attn_at_level = [r in net.attn_resolutions for r in net.all_resolutions]
    net.conditional = bool(m.conditional)
    net.centered = bool(config.data.centered)
    net.scale_by_sigma = bool(m.scale_by_sigma)
    net.num_channels = int(config.data.num_channels)
    return m


# The U-Net skeleton NCSN++ and DDPM share: build (`add_*`, appending to the module list and the
# stack of skip widths) and run (`run_*`, consuming the module iterator in the same order).

def add_down_blocks(modules, hs_c, in_ch, out_ch, n_blocks, resnet_block, attn_block=None):
    """`n_blocks` ResNet blocks of one down-path level, each followed by `attn_block` when given;
    every output width is pushed on `hs_c` for the skip connections. Returns the width."""
    for _ in range(n_blocks):
        modules.append(resnet_block(in_ch, out_ch))
        in_ch = out_ch
        if attn_block is not None:
            modules.append(attn_block(in_ch))
        hs_c.append(in_ch)
    return in_ch


def add_up_blocks(modules, hs_c, in_ch, out_ch, n_blocks, resnet_block, attn_block=None,
                  in_groups=None):
    """`n_blocks` + 1 ResNet blocks of one up-path level on [h, skip] (widths popped from `hs_c`),
    each followed by `attn_block` when given; `in_groups(h width, skip width)` gives the first
    GroupNorm's group count when set. Returns the width."""
    for _ in range(n_blocks + 1):
        skip = hs_c.pop()
        extra = {} if in_groups is None else {'in_groups': in_groups(in_ch, skip)}
        modules.append(resnet_block(in_ch + skip, out_ch, **extra))
        in_ch = out_ch
        if attn_block is not None:
            modules.append(attn_block(in_ch))
    return in_ch


def run_down_blocks(mods, hs, temb, n_blocks, attention):
    """Forward of `add_down_blocks`: each output is pushed on `hs`; returns the last."""
    for _ in range(n_blocks):
        h = next(mods)(hs[-1], temb)
        if attention:
            h = next(mods)(h)
        hs.append(h)
    return h


def run_bottleneck(mods, h, temb):
    """ResNet block, attention, ResNet block at the lowest resolution."""
    h = next(mods)(h, temb)
    h = next(mods)(h)
    return next(mods)(h, temb)


def run_up_blocks(mods, h, hs, temb, n_blocks, attention):
    """Forward of `add_up_blocks`: each block takes [h, hs.pop()] along the channels."""
    for _ in range(n_blocks + 1):
        h = next(mods)(torch.cat([h, hs.pop()], dim=1), temb)
        if attention:
            h = next(mods)(h)
    return h


@register_model(name='ncsnpp')
class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ U-Net. `NCSNpp(config)` reads `config.model`, `config.data` and
    `config.training.continuous`; `forward(x [B, C, H, W], time_cond [B]) -> [B, C, H, W]`."""

    def __init__(self, config):
        super().__init__()
        m = unet_settings(self, config)
        act, nf, ch_mult = self.act, self.nf, self.ch_mult
        num_res_blocks, num_resolutions = self.num_res_blocks, self.num_resolutions
        conditional, channels = self.conditional, self.num_channels
        fir, fir_kernel = bool(m.fir), tuple(m.fir_kernel)
        self.skip_rescale = skip_rescale = bool(m.skip_rescale)
        self.resblock_type = resblock_type = _choice(m.resblock_type, _RESBLOCKS, 'resblock_type')
        self.progressive = progressive = _choice(m.progressive, _PROGRESSIVE, 'progressive')
        self.progressive_input = progressive_input = _choice(
            m.progressive_input, _PROGRESSIVE_INPUT, 'progressive_input')
        self.embedding_type = embedding_type = _choice(m.embedding_type, _EMBEDDINGS, 'embedding_type')
        combine_method = _choice(m.progressive_combine, _COMBINE, 'progressive_combine')
        init_scale = m.init_scale
        dropout = m.dropout
        resamp_with_conv = bool(m.resamp_with_conv)
        temb_dim = 4 * nf

        modules = []
        # Noise-level / time embedding.
        if embedding_type == 'fourier':
            if not config.training.continuous:
                raise ValueError("embedding_type 'fourier' needs continuous training "
                                 "(config.training.continuous=True); use 'positional'")
            modules.append(layerspp.GaussianFourierProjection(embedding_size=nf, scale=m.fourier_scale))
            embed_dim = 2 * nf
        else:
            embed_dim = nf
        if conditional:
            modules.append(layers.dense(embed_dim, temb_dim))
            modules.append(layers.dense(temb_dim, temb_dim))

        head_dim = m.get('attention_head_dim', None)
        diffusers_groups = _choice(m.get('group_rule', 'ncsnpp'), _GROUP_RULES,
                                   'group_rule') == 'diffusers'

        def attn_block(ch, level=True):
            if head_dim is not None and (int(head_dim) < 1 or ch % int(head_dim)):
                raise ValueError(f"config.model.attention_head_dim = {head_dim} does not divide "
                                 f"the {ch} channels of an attention layer")
            # diffusers' AttnSkip*Block2D normalise with 32 groups; its mid block as NCSN++
            return layerspp.AttnBlockpp(channels=ch, init_scale=init_scale, skip_rescale=skip_rescale,
                                        heads=1 if head_dim is None else ch // int(head_dim),
                                        groups=32 if diffusers_groups and level else None)

        def resnet_block(in_ch, out_ch=None, up=False, down=False, in_groups=None):
            if resblock_type == 'ddpm':
                return layerspp.ResnetBlockDDPMpp(act=act, in_ch=in_ch, out_ch=out_ch, temb_dim=temb_dim,
                                                  dropout=dropout, init_scale=init_scale,
                                                  skip_rescale=skip_rescale, in_groups=in_groups)
            return layerspp.ResnetBlockBigGANpp(act=act, in_ch=in_ch, out_ch=out_ch, temb_dim=temb_dim,
                                                up=up, down=down, dropout=dropout, fir=fir,
                                                fir_kernel=fir_kernel, init_scale=init_scale,
                                                skip_rescale=skip_rescale, in_groups=in_groups)

        def up_groups(level):
            """diffusers' AttnSkipUpBlock2D: min(h + skip // 4, 32) groups (its precedence)."""
            if diffusers_groups and self.attn_at_level[level]:
                return lambda h_ch, skip_ch: min(h_ch + skip_ch // 4, 32)
            return None

        def end_conv(in_ch, out_ch, **kw):
            return [layerspp.group_norm(in_ch), layerspp.conv3x3(in_ch, out_ch, **kw)]

        if progressive == 'output_skip':
            self.pyramid_upsample = layerspp.Upsample(fir=fir, fir_kernel=fir_kernel, with_conv=False)
        if progressive_input == 'input_skip':
            self.pyramid_downsample = layerspp.Downsample(fir=fir, fir_kernel=fir_kernel, with_conv=False)

        # Downsampling path.
        modules.append(layerspp.conv3x3(channels, nf))
        hs_c = [nf]
        in_ch = nf
        input_pyramid_ch = channels
        for i_level in range(num_resolutions):
            in_ch = add_down_blocks(modules, hs_c, in_ch, nf * ch_mult[i_level], num_res_blocks,
                                    resnet_block, attn_block if self.attn_at_level[i_level] else None)
            if i_level != num_resolutions - 1:
                if resblock_type == 'ddpm':
                    modules.append(layerspp.Downsample(in_ch=in_ch, with_conv=resamp_with_conv,
                                                       fir=fir, fir_kernel=fir_kernel))
                else:
                    modules.append(resnet_block(in_ch, down=True))
                if progressive_input == 'input_skip':
                    modules.append(layerspp.Combine(dim1=input_pyramid_ch, dim2=in_ch,
                                                    method=combine_method))
                    if combine_method == 'cat':
                        in_ch *= 2
                elif progressive_input == 'residual':
                    modules.append(layerspp.Downsample(in_ch=input_pyramid_ch, out_ch=in_ch,
                                                       with_conv=True, fir=fir, fir_kernel=fir_kernel))
                    input_pyramid_ch = in_ch
                hs_c.append(in_ch)

        # Bottleneck.
        in_ch = hs_c[-1]
        modules += [resnet_block(in_ch), attn_block(in_ch, level=False), resnet_block(in_ch)]

        # Upsampling path.
        pyramid_ch = 0
        for i_level in reversed(range(num_resolutions)):
            in_ch = add_up_blocks(modules, hs_c, in_ch, nf * ch_mult[i_level], num_res_blocks,
                                  resnet_block, in_groups=up_groups(i_level))
            if self.attn_at_level[i_level]:
                modules.append(attn_block(in_ch))
            if progressive != 'none':
                if i_level == num_resolutions - 1:  # start of the output pyramid
                    if progressive == 'output_skip':
                        modules += end_conv(in_ch, channels, init_scale=init_scale)
                        pyramid_ch = channels
                    else:
                        modules += end_conv(in_ch, in_ch, bias=True)
                        pyramid_ch = in_ch
                elif progressive == 'output_skip':
                    modules += end_conv(in_ch, channels, bias=True, init_scale=init_scale)
                    pyramid_ch = channels
                else:
                    modules.append(layerspp.Upsample(in_ch=pyramid_ch, out_ch=in_ch, with_conv=True,
                                                     fir=fir, fir_kernel=fir_kernel))
                    pyramid_ch = in_ch
            if i_level != 0:
                if resblock_type == 'ddpm':
                    modules.append(layerspp.Upsample(in_ch=in_ch, with_conv=resamp_with_conv,
                                                     fir=fir, fir_kernel=fir_kernel))
                else:
                    modules.append(resnet_block(in_ch, up=True))
        assert not hs_c

        if progressive != 'output_skip':
            modules += end_conv(in_ch, channels, init_scale=init_scale)

        self.all_modules = nn.ModuleList(modules)

    def _embed(self, time_cond, mods):
        """Time embedding [B, 4 nf] (or None when unconditional) and the sigmas that divide the output."""
        if self.embedding_type == 'fourier':
            used_sigmas = time_cond
            temb = next(mods)(torch.log(time_cond.float()))
        else:
            used_sigmas = None
            if self.scale_by_sigma:
                used_sigmas = self.sigmas[time_cond.long()]
            temb = layers.get_timestep_embedding(time_cond, self.nf)
        if not self.conditional:
            return None, used_sigmas
        dense0, dense1 = next(mods), next(mods)
        temb = dense0(temb.to(dense0.weight.dtype))
        temb = dense1(self.act(temb))
        return temb, used_sigmas

    def forward(self, x, time_cond):
        time_cond = checked_inputs(self, x, time_cond)
        mods = iter(self.all_modules)
        temb, used_sigmas = self._embed(time_cond, mods)

        if not self.centered:
            x = 2 * x - 1.  # data in [0, 1] -> [-1, 1]

        # Downsampling path.
        input_pyramid = x if self.progressive_input != 'none' else None
        hs = [next(mods)(x)]
        for i_level in range(self.num_resolutions):
            run_down_blocks(mods, hs, temb, self.num_res_blocks, self.attn_at_level[i_level])
            if i_level != self.num_resolutions - 1:
                if self.resblock_type == 'ddpm':
                    h = next(mods)(hs[-1])
                else:
                    h = next(mods)(hs[-1], temb)
                if self.progressive_input == 'input_skip':
                    input_pyramid = self.pyramid_downsample(input_pyramid)
                    h = next(mods)(input_pyramid, h)
                elif self.progressive_input == 'residual':
                    input_pyramid = layerspp.residual_sum(next(mods)(input_pyramid), h, self.skip_rescale)
                    h = input_pyramid
                hs.append(h)

        h = run_bottleneck(mods, hs[-1], temb)

        # Upsampling path.
        pyramid = None
        for i_level in reversed(range(self.num_resolutions)):
            h = run_up_blocks(mods, h, hs, temb, self.num_res_blocks, attention=False)
            if self.attn_at_level[i_level]:
                h = next(mods)(h)
            if self.progressive != 'none':
                if i_level == self.num_resolutions - 1:
                    norm, conv = next(mods), next(mods)
                    pyramid = conv(self.act(norm(h)))
                elif self.progressive == 'output_skip':
                    norm, conv = next(mods), next(mods)
                    pyramid = self.pyramid_upsample(pyramid) + conv(self.act(norm(h)))
                else:
                    pyramid = layerspp.residual_sum(next(mods)(pyramid), h, self.skip_rescale)
                    h = pyramid
            if i_level != 0:
                if self.resblock_type == 'ddpm':
                    h = next(mods)(h)
                else:
                    h = next(mods)(h, temb)
        assert not hs

        if self.progressive == 'output_skip':
            h = pyramid
        else:
            norm, conv = next(mods), next(mods)
            h = conv(self.act(norm(h)))
        if next(mods, None) is not None:
            raise RuntimeError("NCSNpp.forward did not use every module; construction and forward disagree")

        if self.scale_by_sigma:
            h = h / used_sigmas.to(h.dtype).reshape(-1, 1, 1, 1)
        return h
