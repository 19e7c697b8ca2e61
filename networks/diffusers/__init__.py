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
diffusers Linear / 1x1 convolution ([out, in]). NCSN++ layouts with several attention heads
(`attention_head_dim`) or narrow levels, where diffusers' skip blocks count GroupNorm groups
otherwise, become `model.attention_head_dim` and `model.group_rule = 'diffusers'`. Missing,
unknown or mis-shaped weights, and any diffusers setting the toolkit network does not compute
(heads in DDPM blocks, other epsilons, class conditioning, ...), are errors naming them; nothing
loads partially. Sizes and values of config.json and the scheduler config are checked before
anything is allocated (`networks.sizes`).

Weights are read from `.safetensors`, or from `.bin` with `torch.load(weights_only=True)`:
never an arbitrary pickle. diffusers itself is needed only for a `UNet2DModel` instance;
a hub id needs `huggingface_hub` (the `[diffusers]` extra).

The package: `files` (reading folders, instances and the hub), `architecture` (which configs
map, and config translation both ways), `weights` (the weight-name map), `scheduler`
(schedulers as SDEs and back).
"""

import os

from networks.checkpoint import load_model_state
from networks.diffusers.architecture import (_architecture, _full_unet_config, _name_dataset,
                                             check_unet_values, diffusers_config,
                                             toolkit_config)
from networks.diffusers.errors import DiffusersError, DiffusersInfo
from networks.diffusers.files import (CONFIG_FILE, SCHEDULER_FILE, WEIGHT_FILES, _resolve,
                                      read_weights)
from networks.diffusers.scheduler import (_convention, scheduler_config,
                                          sde_from_scheduler)
from networks.diffusers.weights import _to_diffusers, map_state, weight_map
from networks.registry import create_model
from networks.sizes import ModelConfigError, check_against_weights, state_count
from networks.runtime import unwrap_model


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
    check_unet_values(cfg)  # values and sizes, before anything is derived or allocated
    family, levels, attn, _ = _architecture(cfg)
    sde, continuous, more = sde_from_scheduler(sched_cfg, family)
    notes += more
    config = toolkit_config(unet_cfg, sde, continuous, sched_cfg)
    _name_dataset(config, desc, notes)
    try:  # the weights file must fill the network before it is built
        check_against_weights(config, state_count(state), f"diffusers model {desc!r}")
    except ModelConfigError as e:
        raise DiffusersError(str(e)) from None
    model = create_model(config, device='cpu')
    entries = weight_map(model, family, levels, int(cfg['layers_per_block']), attn)
    mapped, cast = map_state(model, state, entries, f"diffusers model {desc!r}")
    notes += cast
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


def to_diffusers(model, config, directory, pipeline=False):
    """Write `model` (built from toolkit `config`) as a diffusers UNet2DModel folder:
    config.json + diffusion_pytorch_model.safetensors, each written atomically. With
    pipeline=True, write unet/ and scheduler/ (the SDE as a diffusers scheduler) instead.
    Raises DiffusersError naming each feature diffusers cannot represent. Returns the folder
    that `diffusers.UNet2DModel.from_pretrained` reads."""
    from safetensors.torch import save as st_save

    from sde_base.fileio import write_bytes, write_json
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
