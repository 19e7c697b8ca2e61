"""Score models in the Hugging Face diffusers format, as the toolkit's own networks and SDEs.

    model, sde, info = networks.from_diffusers('google/ncsnpp-celebahq-256')  # or a folder
    score_fn = networks.get_score_fn(sde, model, continuous=info.continuous)
    networks.to_diffusers(model, config, 'out/unet')       # the reverse, where representable

Two families of `diffusers.UNet2DModel` map onto networks the toolkit already has:

  diffusers blocks                                   toolkit network, SDE, score convention
  Skip*/AttnSkip* blocks, 'fourier' embedding        `ncsnpp` (NCSN++: BigGAN residual blocks,
    (ScoreSdeVeScheduler; google/ncsnpp-*)           FIR resampling, output_skip / input_skip
                                                     pyramids, 1/sqrt(2) skip rescaling),
                                                     VESDE(sigma_min, sigma_max, N), continuous:
                                                     the net takes sigma(t), returns the score
  Down/AttnDown/Up/AttnUp blocks, 'positional'       `ddpm` (attention after every up-path block,
    (DDPMScheduler, linear betas; google/ddpm-*)     `model.attn_every_up_block`), discrete VPSDE
                                                     with beta_i = beta_start..beta_end: the net
                                                     takes the integer step i = (N-1) t, predicts
                                                     the noise; score = -net / sqrt(1 - abar_i)

Every weight is placed by a written name mapping (`weight_map`), derived from the two
architectures: the toolkit's `all_modules` list is walked in construction order beside the
diffusers block that holds each layer. A NIN layer (W [in, out]) is the transpose of a
diffusers Linear / 1x1 convolution ([out, in]). Missing, unknown or mis-shaped weights, and any
diffusers setting the toolkit network does not compute (several attention heads, other group
counts or epsilons, class conditioning, ...), are errors naming them; nothing loads partially.

Weights are read from `.safetensors`, or from `.bin` with `torch.load(weights_only=True)`:
never an arbitrary pickle. diffusers itself is needed only for a `UNet2DModel` instance;
a hub id needs `huggingface_hub` (the `[diffusers]` extra).
"""

import json
import math
import os
import re
from dataclasses import dataclass, field

import torch

from networks.checkpoint import CheckpointError, _listed, load_model_state
from networks.registry import get_model_class
from networks.runtime import unwrap_model

WEIGHT_FILES = ('diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.bin')
CONFIG_FILE = 'config.json'
SCHEDULER_FILE = 'scheduler_config.json'

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

# Scheduler defaults (diffusers' ScoreSdeVeScheduler, DDPMScheduler, ScoreSdeVpScheduler).
SCORE_SDE_VE_DEFAULTS = {'num_train_timesteps': 2000, 'snr': 0.15, 'sigma_min': 0.01,
                         'sigma_max': 1348.0, 'sampling_eps': 1e-5, 'correct_steps': 1}
DDPM_DEFAULTS = {'num_train_timesteps': 1000, 'beta_start': 0.0001, 'beta_end': 0.02,
                 'beta_schedule': 'linear', 'trained_betas': None, 'prediction_type': 'epsilon'}
SCORE_SDE_VP_DEFAULTS = {'num_train_timesteps': 2000, 'beta_min': 0.1, 'beta_max': 20.0,
                         'sampling_eps': 1e-3}

_NCSNPP_DOWN = {'SkipDownBlock2D': False, 'AttnSkipDownBlock2D': True}
_NCSNPP_UP = {'SkipUpBlock2D': False, 'AttnSkipUpBlock2D': True}
_DDPM_DOWN = {'DownBlock2D': False, 'AttnDownBlock2D': True}
_DDPM_UP = {'UpBlock2D': False, 'AttnUpBlock2D': True}
_SQRT2 = math.sqrt(2.0)
_FIR_KERNEL = [1, 3, 3, 1]  # the only FIR kernel diffusers' skip blocks use
_HUB_ID = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$')


class DiffusersError(CheckpointError):
    """A diffusers model or scheduler that cannot be read, or that the toolkit cannot represent."""


@dataclass
class DiffusersInfo:
    """What `from_diffusers` derived: `config` (a full toolkit ConfigDict: model, data, training,
    sampling), `family` ('ncsnpp' or 'ddpm'), `continuous` (the flag for `get_score_fn`),
    `convention` (in words), `source`, the diffusers `unet_config` and `scheduler_config` as
    read, and `notes` (defaults that were assumed)."""
    config: object
    family: str
    continuous: bool
    convention: str
    source: str
    unet_config: dict
    scheduler_config: dict = None
    notes: list = field(default_factory=list)


# ----------------------------------------------------------------------------- reading sources

def _read_json(path):
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DiffusersError(f"cannot read {path!r}: {e}") from None


def read_weights(folder):
    """The state dict of a diffusers model folder: `diffusion_pytorch_model.safetensors`, else
    `diffusion_pytorch_model.bin` read with weights_only=True (never an arbitrary pickle)."""
    st, bin_ = (os.path.join(folder, n) for n in WEIGHT_FILES)
    if os.path.isfile(st):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise DiffusersError(f"{st!r} needs the safetensors package: pip install "
                                 f"'score-sde-toolkit[diffusers]'") from None
        try:
            return load_file(st, device='cpu')
        except Exception as e:  # safetensors raises its own error types
            raise DiffusersError(f"cannot read {st!r}: {e}") from None
    if os.path.isfile(bin_):
        try:
            state = torch.load(bin_, map_location='cpu', weights_only=True)
        except Exception as e:
            raise DiffusersError(f"cannot read {bin_!r} as plain tensors (weights_only=True; "
                                 f"arbitrary pickles are never loaded): "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                 ) from None
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise DiffusersError(f"{bin_!r} is not a state dict of tensors")
        return state
    present = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    raise DiffusersError(f"no weights in {folder!r}: expected {WEIGHT_FILES[0]} or "
                         f"{WEIGHT_FILES[1]}; the folder holds {present}")


def _read_model_folder(folder):
    cfg_path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise DiffusersError(f"{folder!r} is not a diffusers model folder: no {CONFIG_FILE} "
                             f"(a pipeline folder has unet/{CONFIG_FILE})")
    cfg = _read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise DiffusersError(f"{cfg_path!r} does not hold a JSON object")
    name = cfg.get('_class_name', 'UNet2DModel')
    if name != 'UNet2DModel':
        raise DiffusersError(f"{cfg_path!r} describes a {name}; only UNet2DModel maps onto the "
                             f"toolkit's networks")
    return cfg, read_weights(folder)


def _scheduler_near(folder):
    """The scheduler config next to a model folder: FOLDER/scheduler_config.json, or the
    pipeline's ../scheduler/scheduler_config.json when FOLDER is its unet/."""
    for path in (os.path.join(folder, SCHEDULER_FILE),
                 os.path.join(os.path.dirname(os.path.abspath(folder)), 'scheduler',
                              SCHEDULER_FILE)):
        if os.path.isfile(path):
            return _read_json(path), path
    return None, None


def _read_folder(folder):
    """(unet config, state dict, scheduler config or None, where the scheduler came from)."""
    if os.path.isfile(os.path.join(folder, 'unet', CONFIG_FILE)):
        cfg, state = _read_model_folder(os.path.join(folder, 'unet'))
        sched_path = os.path.join(folder, 'scheduler', SCHEDULER_FILE)
        if os.path.isfile(sched_path):
            return cfg, state, _read_json(sched_path), sched_path
        return cfg, state, None, None
    cfg, state = _read_model_folder(folder)
    sched, path = _scheduler_near(folder)
    return cfg, state, sched, path


def _download(repo_id):
    """A local snapshot folder of hub model `repo_id`: its JSON configs, then the weights of
    the model folder only (unet/ of a pipeline, else the root), safetensors when published."""
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError:
        raise DiffusersError(f"{repo_id!r} is neither a folder nor loadable: a hub id needs "
                             f"huggingface_hub (pip install 'score-sde-toolkit[diffusers]')"
                             ) from None

    def fail(e):
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        return DiffusersError(
            f"{repo_id!r} is not a local folder, and the hub model of that id cannot be "
            f"fetched ({type(e).__name__}: {detail}). Offline, it "
            f"must already be in the Hugging Face cache; otherwise download it where there is "
            f"network (`huggingface-cli download {repo_id} --local-dir DIR`) and pass DIR")

    try:
        folder = snapshot_download(repo_id, allow_patterns=['*.json'])
    except Exception as e:  # offline, not found, gated, ...: one clear message
        raise fail(e) from None
    sub = 'unet' if os.path.isfile(os.path.join(folder, 'unet', CONFIG_FILE)) else None
    errors = []
    for name in WEIGHT_FILES:
        try:
            hf_hub_download(repo_id, name, subfolder=sub,
                            revision=os.path.basename(os.path.normpath(folder)))
            return folder
        except Exception as e:  # not published in this format, or not cached offline
            errors.append(e)
    raise fail(errors[-1]) from None


def _resolve(source, scheduler):
    """(unet config dict, state dict, scheduler config or None, description, notes)."""
    notes = []
    sched_cfg = _scheduler_config(scheduler) if scheduler is not None else None
    if hasattr(source, 'unet') and hasattr(source, 'scheduler'):  # a diffusers pipeline
        if sched_cfg is None:
            sched_cfg = _scheduler_config(source.scheduler)
        source = source.unet
    if isinstance(source, torch.nn.Module):
        if type(source).__name__ != 'UNet2DModel' or not hasattr(source, 'config'):
            raise DiffusersError(f"from_diffusers takes a diffusers UNet2DModel, a folder or a "
                                 f"hub id, not a {type(source).__name__}")
        return dict(source.config), source.state_dict(), sched_cfg, \
            f"{type(source).__name__} instance", notes
    if not isinstance(source, (str, os.PathLike)):
        raise DiffusersError(f"from_diffusers source must be a folder, a hub id or a "
                             f"UNet2DModel, not {type(source).__name__}")
    path = os.fspath(source)
    if os.path.isdir(path):
        cfg, state, found, where = _read_folder(path)
        desc = path
    elif os.path.exists(path):
        raise DiffusersError(f"{path!r} is a file; give the diffusers model or pipeline folder "
                             f"that holds {CONFIG_FILE} and the weights")
    elif _HUB_ID.match(path):
        folder = _download(path)
        cfg, state, found, where = _read_folder(folder)
        desc = f"hub:{path}"
    else:
        raise DiffusersError(f"{path!r}: no such folder, and not a hub id (owner/name)")
    if sched_cfg is None and found is not None:
        sched_cfg = found
        notes.append(f"scheduler config from {where}")
    return cfg, state, sched_cfg, desc, notes


def _scheduler_config(scheduler):
    """A scheduler config dict from a dict, a scheduler_config.json path or folder, or a
    diffusers scheduler instance."""
    if isinstance(scheduler, dict):
        return dict(scheduler)
    if isinstance(scheduler, (str, os.PathLike)):
        path = os.fspath(scheduler)
        if os.path.isdir(path):
            path = os.path.join(path, SCHEDULER_FILE)
        if not os.path.isfile(path):
            raise DiffusersError(f"no scheduler config at {path!r}")
        return _read_json(path)
    cfg = getattr(scheduler, 'config', None)
    if cfg is None:
        raise DiffusersError(f"cannot read a scheduler config from a {type(scheduler).__name__}")
    out = dict(cfg)
    out.setdefault('_class_name', type(scheduler).__name__)
    return out


# ----------------------------------------------------------------------------- config mapping

def _full_unet_config(cfg):
    full = dict(UNET_DEFAULTS)
    full.update({k: v for k, v in cfg.items() if not k.startswith('_')})
    for k in ('down_block_types', 'up_block_types', 'block_out_channels'):
        full[k] = list(full[k])
    return full


def _groups(c):
    """NCSN++'s GroupNorm group count."""
    return min(c // 4, 32)


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
    attn_chans = [c for c, a in zip(chans, attn) if a] + [chans[-1]]
    need(head is None or all(int(head) == c for c in attn_chans),
         f"attention_head_dim {head} gives several attention heads on {attn_chans} channels "
         f"(the toolkit's attention is single-head)")
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
        for i, (c, a) in enumerate(zip(chans, attn)):
            if a:  # skip blocks' attention uses 32 groups whatever the width
                need(_groups(c) == 32, f"attention at level {i} on {c} channels: diffusers "
                                       f"normalises it with 32 groups, NCSN++ with {_groups(c)} "
                                       f"(needs >= 128 channels)")
                prev = chans[min(i + 1, levels - 1)]
                for j in range(int(cfg['layers_per_block']) + 1):
                    res_in = prev if j == 0 else c
                    skip = chans[i - 1] if (j == int(cfg['layers_per_block']) and i > 0) else c
                    # AttnSkipUpBlock2D computes min(res_in + skip // 4, 32) groups
                    need(min(res_in + skip // 4, 32) == _groups(res_in + skip),
                         f"AttnSkipUpBlock2D at level {i}: resnet {j} GroupNorm groups differ "
                         f"from NCSN++'s for {res_in + skip} channels")
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


def sde_from_scheduler(scheduler_config, family):
    """(SDE, continuous, notes) from a diffusers scheduler config. ScoreSdeVeScheduler ->
    VESDE(sigma_min, sigma_max, N = num_train_timesteps), continuous; DDPM-style schedulers with
    linear betas -> the discrete VPSDE whose beta_i run from beta_start to beta_end
    (beta_min = N beta_start, beta_max = N beta_end); ScoreSdeVpScheduler -> continuous VPSDE.
    With no scheduler the family's diffusers defaults are used and noted."""
    from sde_lib import VESDE, VPSDE
    notes = []
    if scheduler_config is None:
        name = 'ScoreSdeVeScheduler' if family == 'ncsnpp' else 'DDPMScheduler'
        notes.append(f"no scheduler config found: {name}'s defaults assumed")
        scheduler_config = {'_class_name': name}
    name = scheduler_config.get('_class_name')
    if name is None:  # guess from the fields
        name = 'ScoreSdeVeScheduler' if 'sigma_max' in scheduler_config else (
            'ScoreSdeVpScheduler' if 'beta_max' in scheduler_config else 'DDPMScheduler')
    if name == 'ScoreSdeVeScheduler':
        s = {**SCORE_SDE_VE_DEFAULTS, **scheduler_config}
        if family != 'ncsnpp':
            raise DiffusersError(f"a {name} with a DDPM network: the toolkit maps VE models "
                                 f"with NCSN++ skip blocks only")
        return VESDE(sigma_min=float(s['sigma_min']), sigma_max=float(s['sigma_max']),
                     N=int(s['num_train_timesteps'])), True, notes
    if name == 'ScoreSdeVpScheduler':
        s = {**SCORE_SDE_VP_DEFAULTS, **scheduler_config}
        if family != 'ddpm':
            raise DiffusersError(f"a {name} with an NCSN++ (fourier) network is not mapped")
        return VPSDE(beta_min=float(s['beta_min']), beta_max=float(s['beta_max']),
                     N=int(s['num_train_timesteps'])), True, notes
    if 'beta_start' in scheduler_config or name == 'DDPMScheduler':
        s = {**DDPM_DEFAULTS, **scheduler_config}
        problems = []
        if s['beta_schedule'] != 'linear':
            problems.append(f"beta_schedule {s['beta_schedule']!r} (the VP SDE's discrete "
                            f"betas are linear)")
        if s['trained_betas'] is not None:
            problems.append("trained_betas (an explicit beta list)")
        if s.get('prediction_type', 'epsilon') != 'epsilon':
            problems.append(f"prediction_type {s['prediction_type']!r} (the toolkit's VP "
                            f"convention is noise prediction, 'epsilon')")
        if family != 'ddpm':
            problems.append("an NCSN++ (fourier, sigma-conditioned) network with a beta schedule")
        if problems:
            raise DiffusersError(f"{name} settings that do not map to a VP SDE: "
                                 + '; '.join(problems))
        n = int(s['num_train_timesteps'])
        return VPSDE(beta_min=float(s['beta_start']) * n, beta_max=float(s['beta_end']) * n,
                     N=n), False, notes
    raise DiffusersError(f"scheduler {name!r} does not map to an SDE of the toolkit (known: "
                         f"ScoreSdeVeScheduler, ScoreSdeVpScheduler, DDPMScheduler and "
                         f"schedulers with linear beta_start/beta_end)")


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


# ----------------------------------------------------------------------------- weight mapping

# Per layer kind: toolkit parameter (relative to the layer) -> (diffusers names relative to the
# diffusers layer, first = the current name, then older spellings; transform).
_SAME = None
_RESNET = {
    'GroupNorm_0.weight': (('norm1.weight',), _SAME), 'GroupNorm_0.bias': (('norm1.bias',), _SAME),
    'Conv_0.weight': (('conv1.weight',), _SAME), 'Conv_0.bias': (('conv1.bias',), _SAME),
    'Dense_0.weight': (('time_emb_proj.weight',), _SAME),
    'Dense_0.bias': (('time_emb_proj.bias',), _SAME),
    'GroupNorm_1.weight': (('norm2.weight',), _SAME), 'GroupNorm_1.bias': (('norm2.bias',), _SAME),
    'Conv_1.weight': (('conv2.weight',), _SAME), 'Conv_1.bias': (('conv2.bias',), _SAME),
    'Conv_2.weight': (('conv_shortcut.weight',), _SAME),
    'Conv_2.bias': (('conv_shortcut.bias',), _SAME),
    'NIN_0.W': (('conv_shortcut.weight',), 'nin_conv'), 'NIN_0.b': (('conv_shortcut.bias',), _SAME),
}
_ATTN = {'GroupNorm_0.weight': (('group_norm.weight',), _SAME),
         'GroupNorm_0.bias': (('group_norm.bias',), _SAME)}
for _i, (_new, _old) in enumerate((('to_q', 'query'), ('to_k', 'key'), ('to_v', 'value'),
                                   ('to_out.0', 'proj_attn'))):
    _ATTN[f'NIN_{_i}.W'] = ((f'{_new}.weight', f'{_old}.weight'), 'nin_linear')
    _ATTN[f'NIN_{_i}.b'] = ((f'{_new}.bias', f'{_old}.bias'), _SAME)
_KINDS = {
    'fourier': {'W': (('weight', 'W'), _SAME)},
    'plain': {'weight': (('weight',), _SAME), 'bias': (('bias',), _SAME)},
    'combine': {'Conv_0.weight': (('weight',), _SAME), 'Conv_0.bias': (('bias',), _SAME)},
    'resample': {'Conv_0.weight': (('conv.weight', 'op.weight'), _SAME),
                 'Conv_0.bias': (('conv.bias', 'op.bias'), _SAME)},
    'resnet': _RESNET,
    'attn': _ATTN,
}


def _layer_plan(family, levels, num_res_blocks, attn):
    """[(diffusers prefix, kind)] for each entry of the toolkit network's `all_modules`, in its
    construction order (networks/ncsnpp.py, networks/ddpm.py)."""
    plan = [('time_proj', 'fourier')] if family == 'ncsnpp' else []
    plan += [('time_embedding.linear_1', 'plain'), ('time_embedding.linear_2', 'plain'),
             ('conv_in', 'plain')]
    for i in range(levels):
        for j in range(num_res_blocks):
            plan.append((f'down_blocks.{i}.resnets.{j}', 'resnet'))
            if attn[i]:
                plan.append((f'down_blocks.{i}.attentions.{j}', 'attn'))
        if i != levels - 1:
            if family == 'ncsnpp':  # BigGAN down block, then the input pyramid's 1x1 combine
                plan += [(f'down_blocks.{i}.resnet_down', 'resnet'),
                         (f'down_blocks.{i}.skip_conv', 'combine')]
            else:
                plan.append((f'down_blocks.{i}.downsamplers.0', 'resample'))
    plan += [('mid_block.resnets.0', 'resnet'), ('mid_block.attentions.0', 'attn'),
             ('mid_block.resnets.1', 'resnet')]
    for i in reversed(range(levels)):
        u = levels - 1 - i
        for j in range(num_res_blocks + 1):
            plan.append((f'up_blocks.{u}.resnets.{j}', 'resnet'))
            if family == 'ddpm' and attn[i]:  # DDPM attends after every up block
                plan.append((f'up_blocks.{u}.attentions.{j}', 'attn'))
        if family == 'ncsnpp':
            if attn[i]:
                plan.append((f'up_blocks.{u}.attentions.0', 'attn'))
            # output pyramid: GroupNorm + 3x3 conv to the image channels at every level; at the
            # top level they are the network's final conv_norm_out / conv_out
            if i != 0:
                plan += [(f'up_blocks.{u}.skip_norm', 'plain'),
                         (f'up_blocks.{u}.skip_conv', 'plain'),
                         (f'up_blocks.{u}.resnet_up', 'resnet')]
            else:
                plan += [('conv_norm_out', 'plain'), ('conv_out', 'plain')]
        elif i != 0:
            plan.append((f'up_blocks.{u}.upsamplers.0', 'resample'))
    if family == 'ddpm':
        plan += [('conv_norm_out', 'plain'), ('conv_out', 'plain')]
    return plan


def weight_map(model, family, levels, num_res_blocks, attn):
    """[(toolkit key, diffusers names (current first), transform)] for every parameter of
    `model` (its `all_modules` in construction order). Buffers (sigmas, FIR kernels) are the
    network's own and are not mapped."""
    plan = _layer_plan(family, levels, num_res_blocks, attn)
    if len(plan) != len(model.all_modules):
        raise RuntimeError(f"internal: {len(plan)} diffusers layers planned for "
                           f"{len(model.all_modules)} toolkit layers")
    out = []
    for key, _ in model.named_parameters():
        m = re.match(r'all_modules\.(\d+)\.(.+)$', key)
        if m is None:
            raise RuntimeError(f"internal: parameter {key!r} outside all_modules")
        prefix, kind = plan[int(m.group(1))]
        try:
            names, transform = _KINDS[kind][m.group(2)]
        except KeyError:
            raise RuntimeError(f"internal: no diffusers name for {key!r} (a {kind} layer at "
                               f"{prefix})") from None
        out.append((key, tuple(f'{prefix}.{n}' for n in names), transform))
    return out


def _to_toolkit(t, transform):
    if transform == 'nin_conv':  # 1x1 conv [out, in, 1, 1] -> NIN W [in, out]
        if t.dim() != 4 or t.shape[2:] != (1, 1):
            return None
        return t[:, :, 0, 0].t().contiguous()
    if transform == 'nin_linear':  # Linear [out, in] (or a 1x1 conv) -> NIN W [in, out]
        if t.dim() == 4 and t.shape[2:] == (1, 1):
            t = t[:, :, 0, 0]
        return t.t().contiguous() if t.dim() == 2 else None
    return t


def _to_diffusers(t, transform):
    if transform == 'nin_conv':
        return t.t().contiguous()[:, :, None, None]
    if transform == 'nin_linear':
        return t.t().contiguous()
    return t.contiguous()


def map_state(model, state, entries, what):
    """The toolkit state dict for `model` from diffusers `state`; a DiffusersError names every
    missing, unknown and mis-shaped weight."""
    expected = model.state_dict()
    out = dict(expected)  # buffers stay the network's own
    missing, shapes, used = [], [], set()
    for key, names, transform in entries:
        present = [n for n in names if n in state]
        if not present:
            missing.append(names[0])
            continue
        used.update(present)
        t = _to_toolkit(state[present[0]], transform)
        if t is None or t.shape != expected[key].shape:
            got = tuple(state[present[0]].shape)
            shapes.append(f"{present[0]} {got} (toolkit {key} needs "
                          f"{tuple(expected[key].shape)}{' transposed' if transform else ''})")
            continue
        for other in present[1:]:
            if not torch.equal(state[other], state[present[0]]):
                shapes.append(f"{other} differs from {present[0]}")
        out[key] = t.to(expected[key].dtype)
    unknown = [k for k in state if k not in used]
    problems = [f"{kind} weights: {_listed(names)}" for kind, names in
                (('missing', missing), ('unknown', unknown), ('mis-shaped', shapes)) if names]
    if problems:
        raise DiffusersError(f"{what} does not fit the {type(model).__name__} derived from its "
                             f"config: " + '; '.join(problems))
    return out


# ----------------------------------------------------------------------------- public API

def _convention(family, continuous):
    if family == 'ncsnpp':
        return ("VE, continuous: the network takes sigma(t) and returns the score "
                "(its output is divided by sigma inside)")
    if continuous:
        return ("VP, continuous: the network takes 999 t and predicts the noise; "
                "score = -net / std(t)")
    return ("VP, discrete: the network takes the integer step i = (N - 1) t and predicts the "
            "noise; score = -net / sqrt(1 - alphabar_i)")


def from_diffusers(source, scheduler=None, device='cpu'):
    """(model, sde, info) from a diffusers UNet2DModel: `source` is a model folder
    (config.json + diffusion_pytorch_model.safetensors or .bin), a pipeline folder (unet/ +
    scheduler/), a `diffusers.UNet2DModel` (or pipeline) instance, or a hub id such as
    'google/ncsnpp-celebahq-256' (needs huggingface_hub; offline it must be cached).
    `scheduler`: a scheduler config (dict, scheduler_config.json, folder or instance) for a
    source that has none. `model` is the toolkit's network in eval mode on `device`;
    `get_score_fn(sde, model, continuous=info.continuous)` gives its score.
    Raises DiffusersError for what cannot be read or represented, naming it."""
    unet_cfg, state, sched_cfg, desc, notes = _resolve(source, scheduler)
    cfg = _full_unet_config(unet_cfg)
    family, levels, attn, _ = _architecture(cfg)
    sde, continuous, more = sde_from_scheduler(sched_cfg, family)
    notes += more
    config = toolkit_config(unet_cfg, sde, continuous, sched_cfg)
    _name_dataset(config, desc, notes)
    model = get_model_class(config.model.name)(config)
    entries = weight_map(model, family, levels, int(cfg['layers_per_block']), attn)
    mapped = map_state(model, state, entries, f"diffusers model {desc!r}")
    load_model_state(model, mapped, f"diffusers model {desc!r}")
    model.eval().to(device)
    info = DiffusersInfo(config=config, family=family, continuous=continuous,
                         convention=_convention(family, continuous), source=desc,
                         unet_config=dict(unet_cfg), scheduler_config=sched_cfg, notes=notes)
    return model, sde, info


def load_for_sampling(source, device='cpu', scheduler=None):
    """(model, sde, config) for the command line's `--diffusers DIR_OR_ID`: the network in eval
    mode on `device`, its SDE, and a full toolkit config (data.image_size, num_channels,
    centered; training.continuous; sampling defaults) to drive sampling, likelihood, inpainting
    and colorization."""
    model, sde, info = from_diffusers(source, scheduler=scheduler, device=device)
    return model, sde, info.config


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


def scheduler_config(config):
    """The diffusers scheduler config dict of a toolkit config's SDE (VE ->
    ScoreSdeVeScheduler, discrete VP -> DDPMScheduler), or a DiffusersError."""
    m, sde = config.model, str(config.training.sde).lower()
    n = int(m.num_scales)
    if sde == 'vesde':
        return {'_class_name': 'ScoreSdeVeScheduler', 'num_train_timesteps': n,
                'sigma_min': float(m.sigma_min), 'sigma_max': float(m.sigma_max),
                'snr': float(config.sampling.snr), 'sampling_eps': 1e-5,
                'correct_steps': int(config.sampling.n_steps_each)}
    if sde == 'vpsde' and not config.training.continuous:
        return {'_class_name': 'DDPMScheduler', 'num_train_timesteps': n,
                'beta_start': float(m.beta_min) / n, 'beta_end': float(m.beta_max) / n,
                'beta_schedule': 'linear', 'trained_betas': None, 'prediction_type': 'epsilon',
                'variance_type': 'fixed_small', 'clip_sample': True}
    if sde == 'vpsde':
        return {'_class_name': 'ScoreSdeVpScheduler', 'num_train_timesteps': n,
                'beta_min': float(m.beta_min), 'beta_max': float(m.beta_max),
                'sampling_eps': 1e-3}
    raise DiffusersError(f"diffusers has no scheduler for the {config.training.sde!r} SDE")


def to_diffusers(model, config, directory, pipeline=False):
    """Write `model` (built from toolkit `config`) as a diffusers UNet2DModel folder:
    config.json + diffusion_pytorch_model.safetensors, each written atomically. With
    pipeline=True, write unet/ and scheduler/ (the SDE as a diffusers scheduler) instead.
    Raises DiffusersError naming each feature diffusers cannot represent. Returns the folder
    that `diffusers.UNet2DModel.from_pretrained` reads."""
    from safetensors.torch import save as st_save

    from sde_lib.fileio import write_bytes, write_json
    unet_cfg = diffusers_config(config)
    sched_cfg = scheduler_config(config) if pipeline else None
    cfg = _full_unet_config(unet_cfg)
    family, levels, attn, _ = _architecture(cfg)
    net = unwrap_model(model)
    entries = weight_map(net, family, levels, int(cfg['layers_per_block']), attn)
    params = dict(net.named_parameters())
    state = {names[0]: _to_diffusers(params[key].detach().cpu(), transform)
             for key, names, transform in entries}
    directory = os.fspath(directory)
    unet_dir = os.path.join(directory, 'unet') if pipeline else directory
    write_bytes(os.path.join(unet_dir, WEIGHT_FILES[0]), st_save(state))
    write_json(os.path.join(unet_dir, CONFIG_FILE), unet_cfg)
    if pipeline:
        write_json(os.path.join(directory, 'scheduler', SCHEDULER_FILE), sched_cfg)
        pipe = 'ScoreSdeVePipeline' if family == 'ncsnpp' else 'DDPMPipeline'
        write_json(os.path.join(directory, 'model_index.json'),
                   {'_class_name': pipe, 'unet': ['diffusers', 'UNet2DModel'],
                    'scheduler': ['diffusers', sched_cfg['_class_name']]})
    return unet_dir


__all__ = ['from_diffusers', 'to_diffusers', 'load_for_sampling', 'DiffusersError',
           'DiffusersInfo', 'diffusers_config', 'scheduler_config', 'sde_from_scheduler',
           'toolkit_config', 'weight_map', 'read_weights']
