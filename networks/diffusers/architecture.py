"""Which diffusers UNet2DModel configs the toolkit computes exactly, and the translation between
a diffusers config and a toolkit config (both ways)."""

import math
import os

from networks.diffusers.errors import DiffusersError
from networks.diffusers.scheduler import SCORE_SDE_VE_DEFAULTS

# UNet2DModel's constructor defaults (diffusers 0.2x-0.4x), which apply to keys a config.json
# leaves out.
UNET_DEFAULTS = {
    'sample_size': None, 'in_channels': 3, 'out_channels': 3, 'center_input_sample': False,
    'time_embedding_type': 'positional', 'time_embedding_dim': None, 'freq_shift': 0,
    'flip_sin_to_cos': True,
    'down_block_types': ('DownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D'),
    'mid_block_type': 'UNetMidBlock2D',
    'up_block_types': ('AttnUpBlock2D', 'AttnUpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'),
    'block_out_channels': (224, 448, 672, 896), 'layers_per_block': 2,
    'mid_block_scale_factor': 1, 'downsample_padding': 1, 'downsample_type': 'conv',
    'upsample_type': 'conv', 'dropout': 0.0, 'act_fn': 'silu', 'attention_head_dim': 8,
    'norm_num_groups': 32, 'attn_norm_num_groups': None, 'norm_eps': 1e-5,
    'resnet_time_scale_shift': 'default', 'add_attention': True, 'class_embed_type': None,
    'num_class_embeds': None, 'num_train_timesteps': None,
}

_NCSNPP_DOWN = {'SkipDownBlock2D': False, 'AttnSkipDownBlock2D': True}
_NCSNPP_UP = {'SkipUpBlock2D': False, 'AttnSkipUpBlock2D': True}
_DDPM_DOWN = {'DownBlock2D': False, 'AttnDownBlock2D': True}
_DDPM_UP = {'UpBlock2D': False, 'AttnUpBlock2D': True}
_SQRT2 = math.sqrt(2.0)
_FIR_KERNEL = [1, 3, 3, 1]  # the only FIR kernel diffusers' skip blocks use


def _full_unet_config(cfg):
    full = dict(UNET_DEFAULTS)
    full.update({k: v for k, v in cfg.items() if not k.startswith('_')})
    for k in ('down_block_types', 'up_block_types', 'block_out_channels'):
        full[k] = list(full[k])
    return full


def _fail(where, key, value, reason):
    raise DiffusersError(f"{where}{key} = {value!r}: {reason}")


def _number(cfg, key, where, low=None, high=None, strict_low=False, strict_high=False):
    """cfg[key] as a finite number within the bounds, else a DiffusersError naming it."""
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        _fail(where, key, v, "must be a finite number")
    if low is not None and (v <= low if strict_low else v < low):
        _fail(where, key, v, f"must be {'>' if strict_low else '>='} {low}")
    if high is not None and (v >= high if strict_high else v > high):
        _fail(where, key, v, f"must be {'<' if strict_high else '<='} {high}")


# UNet2DModel keys that size the network -> the toolkit's config fields they become.
SIZE_FIELDS = {'model.ch_mult': 'block_out_channels', 'model.num_res_blocks': 'layers_per_block',
               'data.image_size': 'sample_size', 'data.num_channels': 'in_channels'}


def check_unet_values(cfg, device=None, where='config.json: '):
    """Check the values of a full UNet2DModel config (`_full_unet_config`) before anything is
    derived from them: whole numbers, finite and positive where they must be; then that a
    lower bound on the network's memory fits (`networks.sizes.check_model_config`). A
    DiffusersError names the key."""
    from networks.sizes import ModelConfigError, check_model_config, whole, whole_list
    try:
        chans = whole_list('block_out_channels', cfg['block_out_channels'], where)
        blocks = whole('layers_per_block', cfg['layers_per_block'], 1, where)
        for key in ('in_channels', 'out_channels'):
            whole(key, cfg[key], 1, where)
        size = cfg['sample_size']
        if isinstance(size, (list, tuple)):
            size = whole_list('sample_size', size, where)[0]
        size = whole('sample_size', size, 1, where)
        for key in ('attention_head_dim', 'norm_num_groups', 'attn_norm_num_groups',
                    'time_embedding_dim', 'num_class_embeds'):
            if cfg[key] is not None:
                whole(key, cfg[key], 1, where)
        whole('downsample_padding', cfg['downsample_padding'], 0, where)
    except ModelConfigError as e:
        raise DiffusersError(str(e)) from None
    _number(cfg, 'norm_eps', where, low=0, strict_low=True)
    _number(cfg, 'dropout', where, low=0, high=1, strict_high=True)
    _number(cfg, 'mid_block_scale_factor', where)
    _number(cfg, 'freq_shift', where)
    for key in ('down_block_types', 'up_block_types'):
        if not all(isinstance(b, str) for b in cfg[key]):
            _fail(where, key, cfg[key], "must be a list of block names")
    sizes = {'model': {'nf': 1, 'ch_mult': chans, 'num_res_blocks': blocks},
             'data': {'image_size': size, 'num_channels': int(cfg['in_channels'])}}
    try:
        check_model_config(sizes, device=device, what='the diffusers model')
    except ModelConfigError as e:
        raise DiffusersError(str(e.renamed(SIZE_FIELDS, where, cfg))) from None


def _groups(c):
    """NCSN++'s GroupNorm group count."""
    return min(c // 4, 32)


def _attention_channels(chans, attn):
    """The widths of the attention layers: each attention level's, then the middle's."""
    return [c for c, a in zip(chans, attn) if a] + [chans[-1]]


def group_rules_differ(chans, attn, blocks):
    """The GroupNorm layers where diffusers' skip blocks and NCSN++'s min(C // 4, 32) disagree
    (as 'level i: ...' texts; empty when they agree): the attention of an attention level (32
    groups in diffusers) and the first GroupNorm of its up-path blocks (AttnSkipUpBlock2D:
    min(h + skip // 4, 32)). They agree from 128 channels on."""
    out, levels = [], len(chans)
    for i, (c, a) in enumerate(zip(chans, attn)):
        if not a:
            continue
        if _groups(c) != 32:
            out.append(f"level {i}: attention on {c} channels")
        prev = chans[min(i + 1, levels - 1)]
        for j in sorted({0, 1, blocks} & set(range(blocks + 1))):  # the distinct widths
            h, skip = (prev if j == 0 else c), (chans[i - 1] if (j == blocks and i > 0) else c)
            if min(h + skip // 4, 32) != _groups(h + skip):
                out.append(f"level {i}: up block {j} on {h + skip} channels")
    return out


def _family(cfg):
    down, up = cfg['down_block_types'], cfg['up_block_types']
    if all(b in _NCSNPP_DOWN for b in down) and all(b in _NCSNPP_UP for b in up):
        return 'ncsnpp'
    if all(b in _DDPM_DOWN for b in down) and all(b in _DDPM_UP for b in up):
        return 'ddpm'
    raise DiffusersError(
        f"diffusers blocks down={down}, up={up} are not a family the toolkit maps: NCSN++ uses "
        f"{sorted(_NCSNPP_DOWN)} / {sorted(_NCSNPP_UP)}, DDPM {sorted(_DDPM_DOWN)} / "
        f"{sorted(_DDPM_UP)} (one family throughout)")


def _architecture(cfg):
    """Check that the toolkit computes exactly what diffusers does for this config; returns
    (family, levels, attention per level). Raises DiffusersError listing every problem."""
    family = _family(cfg)
    down_attn_table, up_attn_table = ((_NCSNPP_DOWN, _NCSNPP_UP) if family == 'ncsnpp'
                                      else (_DDPM_DOWN, _DDPM_UP))
    chans = [int(c) for c in cfg['block_out_channels']]
    levels = len(chans)
    problems = []

    def need(ok, text):
        if not ok:
            problems.append(text)

    need(len(cfg['down_block_types']) == levels == len(cfg['up_block_types']),
         f"{len(cfg['down_block_types'])} down blocks, {len(cfg['up_block_types'])} up blocks and "
         f"{levels} block_out_channels must agree")
    if problems:
        raise DiffusersError('; '.join(problems))
    attn = [down_attn_table[b] for b in cfg['down_block_types']]
    up_attn = [up_attn_table[b] for b in reversed(cfg['up_block_types'])]
    need(attn == up_attn, f"attention at levels {attn} on the way down but {up_attn} on the way "
                          f"up; the toolkit's networks attend at the same resolutions both ways")
    nf = chans[0]
    need(all(c % nf == 0 for c in chans), f"block_out_channels {chans} are not multiples of the "
                                          f"first ({nf})")
    size = cfg['sample_size']
    if isinstance(size, (list, tuple)):
        need(len(size) == 2 and size[0] == size[1], f"sample_size {size} is not square")
        size = size[0]
    need(isinstance(size, int) and size > 0 and size % (2 ** (levels - 1)) == 0,
         f"sample_size {size!r} must be an int divisible by 2^{levels - 1}")
    need(cfg['in_channels'] == cfg['out_channels'],
         f"in_channels {cfg['in_channels']} != out_channels {cfg['out_channels']}")
    need(str(cfg['act_fn']).lower() in ('silu', 'swish'), f"act_fn {cfg['act_fn']!r} (the "
                                                          f"toolkit maps silu only)")
    need(cfg['class_embed_type'] is None and cfg['num_class_embeds'] is None,
         "class conditioning (class_embed_type / num_class_embeds)")
    need(cfg['resnet_time_scale_shift'] == 'default',
         f"resnet_time_scale_shift {cfg['resnet_time_scale_shift']!r} (only 'default')")
    need(cfg['time_embedding_dim'] in (None, 4 * nf),
         f"time_embedding_dim {cfg['time_embedding_dim']} (the toolkit uses 4 x {nf})")
    need(cfg['mid_block_type'] == 'UNetMidBlock2D' and cfg['add_attention'],
         f"mid block {cfg['mid_block_type']!r} with add_attention={cfg['add_attention']} "
         f"(the toolkit's is residual, attention, residual)")
    need(math.isclose(float(cfg['norm_eps']), 1e-6, rel_tol=1e-6),
         f"norm_eps {cfg['norm_eps']} (the toolkit's GroupNorm eps is 1e-6)")
    head = cfg['attention_head_dim']
    attn_chans = _attention_channels(chans, attn)
    if family == 'ncsnpp':
        need(head is None or all(c % int(head) == 0 for c in attn_chans),
             f"attention_head_dim {head} does not divide the {attn_chans} channels of the "
             f"attention layers")
    else:
        need(head is None or all(int(head) == c for c in attn_chans),
             f"attention_head_dim {head} gives several attention heads on {attn_chans} channels "
             f"(the toolkit's DDPM attention is single-head)")
    need(cfg['attn_norm_num_groups'] is None or cfg['attn_norm_num_groups'] == (
        cfg['norm_num_groups'] or _groups(chans[-1])), "attn_norm_num_groups differs from the "
                                                      "mid block's GroupNorm")
    if family == 'ncsnpp':
        need(cfg['time_embedding_type'] == 'fourier',
             f"time_embedding_type {cfg['time_embedding_type']!r} with skip blocks (NCSN++ "
             f"maps with 'fourier')")
        need(cfg['in_channels'] == 3, f"in_channels {cfg['in_channels']} (diffusers' skip "
                                      f"blocks are built for 3 channels)")
        need(math.isclose(float(cfg['mid_block_scale_factor']), _SQRT2, rel_tol=1e-6),
             f"mid_block_scale_factor {cfg['mid_block_scale_factor']} (skip blocks rescale by "
             f"sqrt(2); the toolkit rescales every residual sum alike)")
        g = cfg['norm_num_groups']
        need(g is None or (g == _groups(nf) and g == _groups(chans[-1])),
             f"norm_num_groups {g} (NCSN++ uses min(C // 4, 32) groups)")
    else:
        need(cfg['time_embedding_type'] == 'positional',
             f"time_embedding_type {cfg['time_embedding_type']!r} with DDPM blocks")
        need(not cfg['flip_sin_to_cos'] and int(cfg['freq_shift']) == 1,
             f"flip_sin_to_cos={cfg['flip_sin_to_cos']}, freq_shift={cfg['freq_shift']} (the "
             f"DDPM embedding is [sin, cos] with freq_shift 1)")
        need(cfg['norm_num_groups'] == 32, f"norm_num_groups {cfg['norm_num_groups']} (DDPM "
                                           f"uses 32)")
        need(all(c % 32 == 0 for c in chans), f"block_out_channels {chans} must be multiples "
                                              f"of 32")
        need(float(cfg['mid_block_scale_factor']) == 1.0,
             f"mid_block_scale_factor {cfg['mid_block_scale_factor']} (DDPM uses 1)")
        need(cfg['downsample_type'] == 'conv' and cfg['upsample_type'] == 'conv',
             f"downsample_type {cfg['downsample_type']!r}, upsample_type "
             f"{cfg['upsample_type']!r} (DDPM resamples with convolutions)")
        need(int(cfg['downsample_padding']) == 0,
             f"downsample_padding {cfg['downsample_padding']} (DDPM pads 'SAME': 0)")
    if problems:
        raise DiffusersError("the toolkit cannot represent this diffusers UNet2DModel: "
                             + '; '.join(problems))
    return family, levels, attn, int(size)


def toolkit_config(unet_config, sde, continuous, scheduler_config=None):
    """The toolkit ConfigDict (model, data, training, sampling) of a diffusers UNet2DModel
    config and its SDE. The NCSN++ one starts from 've/celebahq_256_ncsnpp_continuous', the
    DDPM one from 'vp/ddpm/cifar10'; only what the diffusers config decides is changed."""
    import configs
    cfg = _full_unet_config(unet_config)
    family, levels, attn, size = _architecture(cfg)
    base = 've/celebahq_256_ncsnpp_continuous' if family == 'ncsnpp' else 'vp/ddpm/cifar10'
    config = configs.get_config(base)
    with config.ignore_type():
        _fill_config(config, cfg, family, levels, attn, size, sde, continuous, scheduler_config)
    return config


def _fill_config(config, cfg, family, levels, attn, size, sde, continuous, scheduler_config):
    chans = [int(c) for c in cfg['block_out_channels']]
    nf = chans[0]
    m = config.model
    m.nf = nf
    m.ch_mult = tuple(c // nf for c in chans)
    m.num_res_blocks = int(cfg['layers_per_block'])
    m.attn_resolutions = tuple(size // 2 ** i for i in range(levels) if attn[i])
    m.dropout = float(cfg['dropout'])
    m.nonlinearity = 'swish'
    m.conditional = True
    m.resamp_with_conv = True
    m.num_scales = int(sde.N)
    if family == 'ncsnpp':
        m.name = 'ncsnpp'
        head = cfg['attention_head_dim']
        if head is not None and any(c != int(head) for c in _attention_channels(chans, attn)):
            m.attention_head_dim = int(head)  # several heads somewhere
        if group_rules_differ(chans, attn, m.num_res_blocks):
            m.group_rule = 'diffusers'
        m.fir, m.fir_kernel = True, list(_FIR_KERNEL)
        m.skip_rescale = True
        m.resblock_type = 'biggan'
        m.progressive, m.progressive_input, m.progressive_combine = 'output_skip', \
            'input_skip', 'sum'
        m.embedding_type = 'fourier'
        m.scale_by_sigma = True
        m.sigma_min, m.sigma_max = float(sde.sigma_min), float(sde.sigma_max)
        config.training.sde = 'vesde'
        s = {**SCORE_SDE_VE_DEFAULTS, **(scheduler_config or {})}
        config.sampling.snr = float(s['snr'])
        config.sampling.n_steps_each = int(s['correct_steps'])
    else:
        m.name = 'ddpm'
        m.scale_by_sigma = False
        m.attn_every_up_block = True
        m.beta_min, m.beta_max = float(sde.beta_0), float(sde.beta_1)
        config.training.sde = 'vpsde'
    config.training.continuous = bool(continuous)
    config.data.image_size = size
    config.data.num_channels = int(cfg['in_channels'])
    # diffusers' center_input_sample maps [0, 1] data to [-1, 1] inside the net, as the
    # toolkit's networks do when data.centered is False.
    config.data.centered = not bool(cfg['center_input_sample'])


# Hosted model names -> the dataset they were trained on (config.data.dataset, LSUN category).
_HUB_DATASETS = (('cifar10', 'CIFAR10', None), ('celebahq', 'CelebAHQ', None),
                 ('ffhq', 'FFHQ', None), ('church', 'LSUN', 'church_outdoor'),
                 ('bedroom', 'LSUN', 'bedroom'))


def _name_dataset(config, desc, notes):
    """Set config.data.dataset from the model's name (google/ddpm-cifar10-32 -> CIFAR10),
    else note that it is the base config's guess."""
    name = os.path.basename(str(desc).rstrip('/\\')).lower()
    for key, dataset, category in _HUB_DATASETS:
        if key in name:
            with config.ignore_type():
                config.data.dataset = dataset
                if category:
                    config.data.category = category
            return
    if (config.data.image_size, config.data.num_channels) == (32, 3):
        config.data.dataset = 'CIFAR10'
    notes.append(f"config.data.dataset = {config.data.dataset!r} is a guess; set it (and "
                 f"config.data.path) before evaluating on data")


def diffusers_config(config):
    """The diffusers UNet2DModel config (a dict for config.json) of a toolkit config, or a
    DiffusersError listing each feature diffusers cannot represent."""
    m, d = config.model, config.data
    name = str(m.name).lower()
    problems = []

    def need(ok, text):
        if not ok:
            problems.append(text)

    need(name in ('ncsnpp', 'ddpm'), f"model.name {m.name!r} (diffusers' UNet2DModel holds "
                                     f"NCSN++ and DDPM only)")
    if problems:
        raise DiffusersError("diffusers cannot represent this model: " + '; '.join(problems))
    nf, ch_mult = int(m.nf), [int(c) for c in m.ch_mult]
    chans = [nf * c for c in ch_mult]
    levels, size = len(chans), int(d.image_size)
    attn = [size // 2 ** i in tuple(m.attn_resolutions) for i in range(levels)]
    need(bool(m.conditional), "an unconditional network (model.conditional=False)")
    need(str(m.nonlinearity).lower() == 'swish', f"nonlinearity {m.nonlinearity!r} (diffusers "
                                                 f"maps silu/swish)")
    need(int(m.get('conv_size', 3)) == 3, "conv_size other than 3")
    out = {'_class_name': 'UNet2DModel', 'sample_size': size,
           'in_channels': int(d.num_channels), 'out_channels': int(d.num_channels),
           'center_input_sample': not bool(d.centered), 'block_out_channels': chans,
           'layers_per_block': int(m.num_res_blocks), 'dropout': float(m.dropout),
           'act_fn': 'silu', 'attention_head_dim': None, 'norm_eps': 1e-6,
           'resnet_time_scale_shift': 'default', 'add_attention': True,
           'mid_block_type': 'UNetMidBlock2D', 'class_embed_type': None,
           'num_class_embeds': None, 'time_embedding_dim': None}
    if name == 'ncsnpp':
        head = m.get('attention_head_dim', None)
        out['attention_head_dim'] = None if head is None else int(head)
        differ = group_rules_differ(chans, attn, int(m.num_res_blocks))
        need(str(m.get('group_rule', 'ncsnpp')).lower() == 'diffusers' or not differ,
             f"GroupNorm groups that diffusers' skip blocks count otherwise ({'; '.join(differ)}; "
             f"NCSN++'s rule is min(C // 4, 32), diffusers' agrees from 128 channels on: build "
             f"with model.group_rule='diffusers')")
        need(str(m.get('group_rule', 'ncsnpp')).lower() in ('ncsnpp', 'diffusers'),
             f"group_rule {m.get('group_rule')!r}")
        need(str(m.embedding_type).lower() == 'fourier', f"embedding_type "
             f"{m.embedding_type!r} (diffusers' NCSN++ blocks take the fourier embedding)")
        need(bool(m.scale_by_sigma), "scale_by_sigma=False (diffusers divides by sigma)")
        need(str(m.resblock_type).lower() == 'biggan', f"resblock_type {m.resblock_type!r}")
        need(bool(m.fir) and [int(k) for k in m.fir_kernel] == _FIR_KERNEL,
             f"fir={m.fir}, fir_kernel={list(m.fir_kernel)} (diffusers: FIR [1, 3, 3, 1])")
        need(str(m.progressive).lower() == 'output_skip', f"progressive {m.progressive!r} "
                                                          f"(diffusers: output_skip)")
        need(str(m.progressive_input).lower() == 'input_skip',
             f"progressive_input {m.progressive_input!r} (diffusers: input_skip)")
        need(str(m.progressive_combine).lower() == 'sum',
             f"progressive_combine {m.progressive_combine!r} (diffusers: sum)")
        need(bool(m.skip_rescale), "skip_rescale=False (diffusers' skip blocks rescale)")
        need(int(d.num_channels) == 3, f"{d.num_channels} image channels (diffusers' skip "
                                       f"blocks are built for 3)")
        need(bool(config.training.continuous), "discrete training (the fourier embedding is "
                                               "continuous)")
        out.update(time_embedding_type='fourier', flip_sin_to_cos=True, freq_shift=1,
                   mid_block_scale_factor=_SQRT2, norm_num_groups=None,
                   down_block_types=['AttnSkipDownBlock2D' if a else 'SkipDownBlock2D'
                                     for a in attn],
                   up_block_types=['AttnSkipUpBlock2D' if a else 'SkipUpBlock2D'
                                   for a in reversed(attn)],
                   downsample_padding=1)
    else:
        need(not bool(m.scale_by_sigma), "scale_by_sigma=True (a VE DDPM; diffusers' DDPM "
                                         "output is not divided)")
        need(bool(m.resamp_with_conv), "resamp_with_conv=False")
        need(bool(m.get('attn_every_up_block', False)) or not any(attn),
             "attention once per up level (score_sde's DDPM layout; diffusers' AttnUpBlock2D "
             "attends after every up block: model.attn_every_up_block=True)")
        out.update(time_embedding_type='positional', flip_sin_to_cos=False, freq_shift=1,
                   mid_block_scale_factor=1, norm_num_groups=32, downsample_padding=0,
                   downsample_type='conv', upsample_type='conv',
                   down_block_types=['AttnDownBlock2D' if a else 'DownBlock2D' for a in attn],
                   up_block_types=['AttnUpBlock2D' if a else 'UpBlock2D'
                                   for a in reversed(attn)])
    if problems:
        raise DiffusersError("diffusers cannot represent this model: " + '; '.join(problems))
    try:
        _architecture(_full_unet_config(out))
    except DiffusersError as e:
        raise DiffusersError(f"diffusers cannot represent this model exactly: {e}") from None
    return out
