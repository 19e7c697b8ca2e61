"""Reading a diffusers UNet2DModel and its scheduler config: from a model or pipeline folder,
a diffusers instance, or a hub id (downloaded with huggingface_hub). Weights come from
`.safetensors`, or from `.bin` with `torch.load(weights_only=True)`: never an arbitrary pickle."""

import json
import os
import re

import torch

from networks.checkpoint import torch_load_detail
from networks.diffusers.errors import DiffusersError

WEIGHT_FILES = ('diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.bin')
CONFIG_FILE = 'config.json'
SCHEDULER_FILE = 'scheduler_config.json'

_HUB_ID = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$')


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
                                 f"{torch_load_detail(e)}") from None
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
