"""The toolkit checkpoint in the safetensors format: weights without pickle.

A `.safetensors` checkpoint holds the same things as the toolkit's `.pth` checkpoint except the
optimizer state (it is for sharing and sampling, not for resuming):

    tensors    'model/<state-dict key>'      the network's state dict
               'ema/<i>'                     EMA shadow parameters, in parameters() order
    metadata   'format'   'sde_toolkit/1'    (strings only, as safetensors requires)
               'config'   config JSON text (configs.config_to_json), or ''
               'step'     the training step, as text
               'ema'      JSON {"decay", "num_updates", "count"}, or 'null'
               'extra'    JSON of the plain `extra` data

`decode` returns the dict `networks.checkpoint.read_checkpoint` returns for a `.pth` file, so
loading is the same code path for both. Reading uses `safetensors.safe_open` only: no pickle.
"""

import json

import torch

MAGIC_LIMIT = 100 * 1024 * 1024  # a header larger than this is not a checkpoint header


def looks_like_safetensors(head):
    """True when the first bytes of a file are a safetensors header: an 8-byte little-endian
    header length followed by a JSON object."""
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], 'little')
    return 2 <= n <= MAGIC_LIMIT and head[8:9] == b'{'


def _module():
    try:
        import safetensors.torch as st
        from safetensors import safe_open
    except ImportError:
        raise ImportError("safetensors checkpoints need the safetensors package: pip install "
                          "'score-sde-toolkit[diffusers]' (or pip install safetensors)") from None
    return st, safe_open


def encode(ckpt):
    """The bytes of a safetensors file for a toolkit checkpoint dict (see the module
    docstring). Raises ValueError for an optimizer state or non-JSON `extra`."""
    st, _ = _module()
    if ckpt.get('optimizer') is not None:
        raise ValueError("a safetensors checkpoint holds weights, not optimizer state: save "
                         "without optimizer=..., or use a .pth path to resume training later")
    tensors = {f'model/{k}': v.detach().cpu().contiguous().clone()
               for k, v in ckpt['model'].items()}
    ema = ckpt.get('ema')
    ema_meta = None
    if ema is not None:
        shadow = list(ema['shadow_params'])
        tensors.update({f'ema/{i}': s.detach().cpu().contiguous().clone()
                        for i, s in enumerate(shadow)})
        ema_meta = {'decay': float(ema['decay']), 'num_updates': ema['num_updates'],
                    'count': len(shadow)}
    try:
        extra = json.dumps(ckpt.get('extra') or {})
    except TypeError as e:
        raise ValueError(f"extra must be JSON data (numbers, strings, lists, dicts) in a "
                         f"safetensors checkpoint: {e}") from None
    metadata = {'format': str(ckpt['format']), 'config': ckpt.get('config') or '',
                'step': str(int(ckpt.get('step', 0))), 'ema': json.dumps(ema_meta),
                'extra': extra}
    return st.save(tensors, metadata=metadata)


def read_metadata(path):
    """The metadata strings of safetensors file `path`, read from its header alone (no tensor
    is read). Raises ValueError for a file that is not a readable safetensors file."""
    _, safe_open = _module()
    try:
        with safe_open(path, framework='pt', device='cpu') as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for corrupt files
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"not a readable safetensors file ({detail})") from None


def stored_step(metadata):
    """The training step recorded in a toolkit safetensors checkpoint's metadata."""
    try:
        return int(metadata.get('step', '0'))
    except ValueError:
        raise ValueError(f"unreadable step {metadata.get('step')!r} in the metadata") from None


def decode(path, map_location='cpu'):
    """The toolkit checkpoint dict of safetensors file `path`. Raises ValueError when the file
    is not a readable toolkit safetensors checkpoint (naming what is wrong)."""
    _, safe_open = _module()
    try:
        with safe_open(path, framework='pt', device='cpu') as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"not a readable safetensors file ({detail})") from None
    if 'format' not in metadata:
        raise ValueError("a safetensors file without the toolkit's metadata (format, config, "
                         "step); a diffusers model folder loads with networks.from_diffusers")
    model = {k[len('model/'):]: v for k, v in tensors.items() if k.startswith('model/')}
    if not model:
        raise ValueError("no 'model/...' tensors")
    try:
        ema_meta = json.loads(metadata.get('ema', 'null'))
        extra = json.loads(metadata.get('extra', '{}'))
        step = stored_step(metadata)
    except ValueError as e:
        raise ValueError(f"unreadable metadata: {e}") from None
    ema = None
    if ema_meta is not None:
        count = int(ema_meta['count'])
        missing = [f'ema/{i}' for i in range(count) if f'ema/{i}' not in tensors]
        if missing:
            raise ValueError(f"EMA tensors missing: {', '.join(missing[:12])}")
        ema = {'decay': ema_meta['decay'], 'num_updates': ema_meta['num_updates'],
               'shadow_params': [tensors[f'ema/{i}'] for i in range(count)]}
    unknown = [k for k in tensors if not k.startswith(('model/', 'ema/'))]
    if unknown:
        raise ValueError(f"unknown tensors: {', '.join(unknown[:12])}")
    if isinstance(map_location, (str, torch.device)) and str(map_location) != 'cpu':
        model = {k: v.to(map_location) for k, v in model.items()}
        if ema is not None:
            ema['shadow_params'] = [s.to(map_location) for s in ema['shadow_params']]
    return {'format': metadata['format'], 'config': metadata.get('config') or None,
            'model': model, 'ema': ema, 'optimizer': None, 'step': step, 'extra': extra}
