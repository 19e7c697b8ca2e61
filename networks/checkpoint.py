"""Checkpoint files: the original score_sde_pytorch `.pth` and the toolkit's own format.

Both are a dict written by `torch.save`:

    original   {'model': state dict with 'module.'-prefixed keys (DataParallel),
                'ema': {'decay', 'num_updates', 'shadow_params'}, 'optimizer': ..., 'step': int}
    toolkit    {'format': 'sde_toolkit/1', 'config': config JSON text (configs.config_to_json),
                'model': state dict (no prefix), 'ema': EMA state or None,
                'optimizer': optimizer state or None, 'step': int, 'extra': plain data}

A `.safetensors` file (or `save_checkpoint(..., format='safetensors')`) holds the toolkit
checkpoint's weights (model and EMA) with its config, step and extra in the safetensors metadata,
and no optimizer state (networks/safetensors_io.py); it is read without any pickle.

Files are read with `torch.load(weights_only=True)`: tensors and plain containers only, never
arbitrary objects. Loading is strict: a checkpoint that does not fit the config is an error
listing the missing, unexpected and mis-shaped keys, never a partial load. Files are written
atomically (`sde_base.fileio.atomic_write`: a temporary file in the same folder, then
`os.replace`).
"""

import math
import os
import pickle
import re

import torch

from networks.registry import create_model
from networks import safetensors_io
from networks.runtime import unwrap_model
from networks.safetensors_io import looks_like_safetensors
from networks.sizes import check_against_weights, state_count

FORMAT = 'sde_toolkit/1'
_DP_PREFIX = 'module.'
_LIST_LIMIT = 12  # keys listed per kind of mismatch in an error message


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or does not fit the model or config."""


def read_checkpoint(path, map_location='cpu'):
    """The raw dict of a checkpoint file (original or toolkit format), loaded with
    weights_only=True. Raises FileNotFoundError for a missing file and CheckpointError for an
    unreadable one (truncated, corrupt, not a checkpoint, or holding arbitrary objects)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint file {path!r} does not exist")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint path {path!r} is not a file")
    with open(path, 'rb') as f:
        head = f.read(16)
    if path.endswith('.safetensors') or looks_like_safetensors(head):
        return _read_safetensors(path, map_location)
    if not (head.startswith(b'PK\x03\x04') or head[:1] == b'\x80'):  # zip or legacy pickle
        raise CheckpointError(f"{path!r} is not a checkpoint: a PyTorch checkpoint file starts "
                              f"as a zip archive (or a legacy pickle), this one starts with "
                              f"{head!r}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if 'weights only' in str(e).lower():
            raise CheckpointError(
                f"refusing to load checkpoint {path!r}: it holds objects other than tensors and "
                f"plain containers, which are never unpickled here (weights_only=True): "
                f"{torch_load_detail(e)}") from None
        raise CheckpointError(f"checkpoint file {path!r} is corrupt: {torch_load_detail(e)}"
                              ) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, IndexError) as e:
        size = os.path.getsize(path)
        detail = torch_load_detail(e)
        raise CheckpointError(
            f"checkpoint file {path!r} ({size} bytes) cannot be read; it is truncated, corrupt or "
            f"not a PyTorch checkpoint ({type(e).__name__}: {detail})") from None
    if not isinstance(ckpt, dict) or 'model' not in ckpt:
        what = f"a dict with keys {sorted(map(str, ckpt))}" if isinstance(ckpt, dict) else \
            f"a {type(ckpt).__name__}"
        raise CheckpointError(f"checkpoint file {path!r} holds {what}, not a score-model "
                              f"checkpoint (a dict with 'model', 'ema', 'optimizer', 'step')")
    return ckpt


# Lines of PyTorch's weights-only error that advise the unsafe path (loading with
# weights_only=False runs whatever the file's pickle says); never passed on to a user.
_UNSAFE_ADVICE = ('weights_only', 'arbitrary code', 'trusted source', 'documentation of torch.load',
                 'safe_globals', 'allowlist', 'if you trust')


def _without_advice(line):
    """`line` less its sentences that advise the unsafe path (allowlisting the blocked global
    with add_safe_globals comes in the same line as the global's name)."""
    sentences = re.split(r'(?<=\.)\s+', line)
    return ' '.join(x for x in sentences if not any(a in x.lower() for a in _UNSAFE_ADVICE))


def torch_load_detail(e):
    """One line on why `torch.load(..., weights_only=True)` failed: the blocked global or the
    first line of the error, without PyTorch's advice to retry with weights_only=False or to
    allowlist the global."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    safe = [x for x in (_without_advice(line) for line in lines) if x]
    blocked = [line for line in safe if 'GLOBAL' in line or 'Unsupported' in line]
    if blocked or safe:
        return (blocked or safe)[0]
    if lines:  # every line was advice: say only what kind of failure it was
        return 'the file needs objects that are never unpickled here'
    return type(e).__name__


def _read_safetensors(path, map_location):
    """A `.safetensors` toolkit checkpoint as the same dict (networks/safetensors_io.py)."""
    try:
        return safetensors_io.decode(path, map_location)
    except ValueError as e:
        raise CheckpointError(f"checkpoint file {path!r} ({os.path.getsize(path)} bytes) is not "
                              f"a toolkit safetensors checkpoint: {e}") from None


def is_toolkit_checkpoint(ckpt):
    return isinstance(ckpt, dict) and ckpt.get('format') == FORMAT


def model_state(ckpt):
    """The model state dict of a checkpoint dict, without the DataParallel 'module.' prefix."""
    state = ckpt['model']
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint 'model' entry is a {type(state).__name__}, "
                              f"not a state dict")
    if state and all(k.startswith(_DP_PREFIX) for k in state):
        state = {k[len(_DP_PREFIX):]: v for k, v in state.items()}
    return state


def _listed(keys):
    keys = list(keys)
    shown = ', '.join(keys[:_LIST_LIMIT])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _LIST_LIMIT else '')


def state_mismatches(model, state):
    """Messages for where `state` does not fit `model.state_dict()`: missing keys, unexpected
    keys and keys with another shape. Empty when it fits."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})" for k, v in expected.items()
              if k in state and torch.is_tensor(state[k]) and state[k].shape != v.shape]
    not_tensors = [k for k in state if k in expected and not torch.is_tensor(state[k])]
    out = []
    if missing:
        out.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        out.append(f"unexpected keys: {_listed(unexpected)}")
    if shapes:
        out.append(f"mis-shaped keys: {_listed(shapes)}")
    if not_tensors:
        out.append(f"non-tensor values: {_listed(not_tensors)}")
    return out


def dtype_check(named, what='checkpoint'):
    """Check the dtypes of stored tensors against the model's: `named` is [(name, stored
    tensor, model dtype)]. A non-float tensor where the model holds floats is a CheckpointError
    naming it (integer weights are not weights); floats of another precision are cast, and the
    returned notes (one per stored dtype) say so."""
    wrong, cast = [], {}
    for name, t, dtype in named:
        if not (dtype.is_floating_point and torch.is_tensor(t)) or t.dtype == dtype:
            continue
        if not t.dtype.is_floating_point:
            wrong.append(f"{name} ({str(t.dtype).replace('torch.', '')})")
        else:
            cast.setdefault((t.dtype, dtype), []).append(name)
    if wrong:
        raise CheckpointError(f"{what} holds non-float weights where the network's are floats: "
                              f"{_listed(wrong)}")
    return [f"{what}: {len(names)} weights stored as {str(a).replace('torch.', '')} were cast to "
            f"{str(b).replace('torch.', '')} (e.g. {names[0]})" for (a, b), names in cast.items()]


def load_model_state(model, state, what='checkpoint'):
    """Load `state` into `model` strictly; a CheckpointError lists every mismatch and names
    non-float weights. Returns notes on weights cast from another float precision."""
    problems = state_mismatches(model, state)
    if problems:
        raise CheckpointError(f"{what} does not fit the {type(model).__name__} built from the "
                              f"config: " + '; '.join(problems))
    expected = model.state_dict()
    notes = dtype_check([(k, state[k], v.dtype) for k, v in expected.items()], what)
    model.load_state_dict(state, strict=True)
    return notes


def _warn_notes(notes):
    import warnings
    for note in notes:
        warnings.warn(note, CheckpointNote, stacklevel=3)


class CheckpointNote(UserWarning):
    """Something done while loading that the user should know (weights cast to another
    precision)."""


def load_ema_weights(model, ema_state, what='checkpoint'):
    """Copy the EMA shadow parameters into the trainable parameters of `model` (in
    `parameters()` order, as the original's `ema.copy_to`), after checking count and shapes."""
    from networks.ema import shadow_mismatches
    if not isinstance(ema_state, dict) or 'shadow_params' not in ema_state:
        raise CheckpointError(f"{what} has no EMA weights ('ema' with 'shadow_params'); load it "
                              f"with ema=False for the live weights")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    shadow = list(ema_state['shadow_params'])
    if not all(torch.is_tensor(s) for s in shadow):
        raise CheckpointError(f"{what}: EMA shadow_params is not a list of tensors")
    problems = shadow_mismatches(shadow, [p.shape for _, p in named], [n for n, _ in named])
    if problems:
        raise CheckpointError(f"{what}: EMA weights do not fit the {type(model).__name__} built "
                              f"from the config: " + '; '.join(problems))
    notes = dtype_check([(f"EMA {n}", s, p.dtype) for (n, p), s in zip(named, shadow)], what)
    with torch.no_grad():
        for (_, p), s in zip(named, shadow):
            p.copy_(s)
    return notes


# Data fields that change the network (its input transform or its layers), besides config.model.
_MODEL_DATA_FIELDS = ('image_size', 'num_channels', 'centered')


def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, 'to_dict'):
        v = v.to_dict()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
        except (TypeError, ValueError):
            return False
    return a == b


def config_differences(stored, config):
    """['model.nf: checkpoint 16, config 32', ...]: the fields of `config.model` (and the data
    fields the network depends on) whose values differ from those of the stored config."""
    out = []
    sections = [('model', None)] + [('data', f) for f in _MODEL_DATA_FIELDS]
    for section, field in sections:
        a = _plain(stored.get(section, {})) or {}
        b = _plain(config.get(section, {})) or {}
        keys = sorted(set(a) | set(b)) if field is None else [field]
        for k in keys:
            if k not in a and k not in b:
                continue
            if k not in a:
                out.append(f"{section}.{k}: not in the checkpoint's config, config {b[k]!r}")
            elif k not in b:
                out.append(f"{section}.{k}: checkpoint {a[k]!r}, not in the config")
            elif not _same(a[k], b[k]):
                out.append(f"{section}.{k}: checkpoint {a[k]!r}, config {b[k]!r}")
    return out


def stored_config(ckpt):
    """The ConfigDict saved in a toolkit checkpoint dict, or None (original checkpoints)."""
    text = ckpt.get('config') if isinstance(ckpt, dict) else None
    if text is None:
        return None
    import configs
    return configs.config_from_json(text)


def load_checkpoint(path, config, ema=True, map_location='cpu', check_config=True):
    """The network of `config` with the weights of checkpoint `path` (original score_sde_pytorch
    or toolkit format), in eval mode, on `map_location` when that names a device.

    ema=True gives the EMA weights (the ones the papers' numbers use), ema=False the live
    weights. Strict: missing/unexpected/mis-shaped keys or EMA parameters raise CheckpointError
    naming them. For a toolkit checkpoint, its stored config must agree with `config` on the
    model section and data.{image_size, num_channels, centered} (check_config=False skips this)."""
    ckpt = read_checkpoint(path, map_location='cpu')
    what = f"checkpoint {os.fspath(path)!r}"
    if check_config and is_toolkit_checkpoint(ckpt):
        stored = stored_config(ckpt)
        if stored is not None:
            diffs = config_differences(stored, config)
            if diffs:
                raise CheckpointError(f"{what} was saved with another model config: "
                                      + '; '.join(diffs) + " (pass check_config=False to load "
                                      "anyway, still strictly by key and shape)")
    state = model_state(ckpt)
    check_against_weights(config, state_count(state), what)  # before the network is built
    model = create_model(config, device='cpu')
    notes = load_model_state(model, state, what)
    if ema:
        notes += load_ema_weights(model, ckpt.get('ema'), what)
    _warn_notes(notes)
    model.eval()
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model


def load_state(path, model, ema=None, optimizer=None, map_location='cpu'):
    """Resume training: load checkpoint `path` into `model` (live weights), `ema` (an
    ExponentialMovingAverage) and `optimizer` when given, strictly. Tensors are mapped to
    `map_location`. Returns (step, extra) with extra the toolkit checkpoint's 'extra' dict
    ({} for original checkpoints)."""
    what = f"checkpoint {os.fspath(path)!r}"
    ckpt = read_checkpoint(path, map_location=map_location)
    target = unwrap_model(model)
    _warn_notes(load_model_state(target, model_state(ckpt), what))
    if ema is not None:
        if ckpt.get('ema') is None:
            raise CheckpointError(f"{what} holds no EMA state to resume")
        try:
            ema.load_state_dict(ckpt['ema'])
        except ValueError as e:
            raise CheckpointError(f"{what}: {e}") from None
    if optimizer is not None:
        if ckpt.get('optimizer') is None:
            raise CheckpointError(f"{what} holds no optimizer state to resume")
        try:
            optimizer.load_state_dict(ckpt['optimizer'])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{what}: optimizer state does not fit: {e}") from None
    return int(ckpt.get('step', 0)), dict(ckpt.get('extra') or {})


_PLAIN_SCALARS = (bool, int, float, str, bytes, type(None))


def _check_plain(value, where):
    """Raise unless `value` is made of tensors, numbers, strings and lists/tuples/dicts of them
    (what weights_only=True can read back)."""
    if torch.is_tensor(value) or isinstance(value, _PLAIN_SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; use str or int keys")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}; checkpoints hold only tensors, "
                    f"numbers, strings and lists/tuples/dicts of them")


def save_checkpoint(path, model, config, ema=None, optimizer=None, step=0, extra=None,
                    format=None):
    """Write a toolkit checkpoint to `path` atomically (temporary file in the same folder, then
    os.replace). `model` may be wrapped in DataParallel/DDP or torch.compile; `ema` is an
    ExponentialMovingAverage or its state dict; `extra` is plain data (tensors, numbers,
    strings, lists, dicts) stored as it is. `format`: 'torch' (default) or 'safetensors'
    (the default for a `.safetensors` path): model and EMA weights as safetensors with the
    config, step and extra (JSON) in its metadata, no optimizer state (networks/safetensors_io.py)."""
    path = os.fspath(path)
    format = format or ('safetensors' if path.endswith('.safetensors') else 'torch')
    if format not in ('torch', 'safetensors'):
        raise ValueError(f"checkpoint format must be 'torch' or 'safetensors', got {format!r}")
    target = unwrap_model(model)
    ema_state = ema.state_dict() if hasattr(ema, 'state_dict') else ema
    if config is not None:
        import configs
        config_json = configs.config_to_json(config)
    else:
        config_json = None
    ckpt = {
        'format': FORMAT,
        'config': config_json,
        'model': target.state_dict(),
        'ema': ema_state,
        'optimizer': optimizer.state_dict() if optimizer is not None else None,
        'step': int(step),
        'extra': {} if extra is None else extra,
    }
    _check_plain(ckpt['extra'], 'extra')
    _check_plain(ckpt['optimizer'], 'optimizer state')
    _check_plain(ckpt['ema'], 'ema state')
    if format == 'safetensors':
        from sde_base.fileio import write_bytes
        write_bytes(path, safetensors_io.encode(ckpt))
        return path
    from sde_base.fileio import save_torch
    save_torch(ckpt, path)  # temp file, fsync, os.replace, directory fsync
    return path
