"""Command-line style overrides of config fields, with the config's types kept.

An override is 'a.b=value' text (as from `--config.a.b=value`) or a {'a.b': value} item.
Text is parsed by the type of the field it replaces, as ml_collections' config_flags does:
bool ('true'/'false'/'1'/'0'/'yes'/'no'), int, float, str (taken as it is), tuple/list
(a Python literal; a single value gives a 1-tuple). A Python value must fit the field's type
(an int is taken for a float field, a list for a tuple field and back).

Keys must exist in the config, except the toolkit's optional fields (`OPTIONAL_FIELDS`,
read with a default where absent) and keys written with a leading '+' ('+data.note=x'),
which add a new field. Anything else is an error naming the key and the nearest names.
"""

import ast
import difflib
from collections.abc import Mapping

import ml_collections

# Fields the toolkit reads with a default when the config lacks them: (type, meaning).
OPTIONAL_FIELDS = {
    'data.path': (str, "folder or .npz file of the 'FOLDER' / 'NPZ' datasets"),
    'data.data_dir': (str, 'folder searched for the dataset files'),
    'data.download': (bool, 'download CIFAR10 / MNIST when their files are missing (True)'),
    'model.attn_every_up_block': (bool, 'DDPM: attention after every up-path block, as the '
                                        'original DDPM and diffusers (False: once per level)'),
    'model.attention_head_dim': (int, 'NCSN++: channels per attention head (None: one head)'),
    'model.group_rule': (str, "NCSN++ GroupNorm groups: 'ncsnpp' (min(C // 4, 32)) or "
                              "'diffusers' (its skip blocks' rule)"),
    'training.objective': (str, "training objective: 'dsm' (default), 'ssm', 'ssm_vr', 'exact_sm'"),
    'training.ssm_n_particles': (int, 'projections per sample of sliced score matching (1)'),
    'training.ssm_noise_type': (str, "projections of sliced score matching ('rademacher')"),
    'training.eps': (float, "smallest training time t (default: the SDE's, 1e-5)"),
    'training.grad_accum': (int, 'micro-batches accumulated per optimizer step (1)'),
    'training.snapshot_samples': (int, 'samples drawn at each snapshot (min(batch_size, 64))'),
    'sampling.steps': (int, 'number of sampler steps (default: model.num_scales)'),
}

_TRUE = {'true', '1', 'yes', 'y', 'on'}
_FALSE = {'false', '0', 'no', 'n', 'off'}


def _fail(key, message):
    raise ValueError(f"config override {key!r}: {message}")


def _parse_text(key, text, kind):
    """Override text -> a value of type `kind` (None: any Python literal, else the text)."""
    text = text.strip()
    if kind is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        _fail(key, f"expected a bool (true/false), got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            _fail(key, f"expected an int, got {text!r}")
    if kind is float:
        try:
            return float(text)
        except ValueError:
            _fail(key, f"expected a float, got {text!r}")
    if kind is str:
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if kind in (tuple, list):
            _fail(key, f"expected a {kind.__name__} literal such as (1, 2), got {text!r}")
        return text
    if kind in (tuple, list):
        return kind(value) if isinstance(value, (tuple, list)) else kind([value])
    return value


def _check_value(key, value, kind):
    """A Python value checked against (and converted to) the field type `kind`."""
    if kind is None:
        return value
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind in (tuple, list):
        ok = isinstance(value, (tuple, list))
        value = kind(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        _fail(key, f"the field is of type {kind.__name__}, "
                   f"got {value!r} of type {type(value).__name__}")
    return value


def _items(overrides):
    """(key, value, is_text) triples from a mapping, one 'a.b=v' string or a list of them."""
    if overrides is None:
        return []
    if isinstance(overrides, (Mapping, ml_collections.ConfigDict)):
        out = []
        for key, value in overrides.items():
            if isinstance(value, (Mapping, ml_collections.ConfigDict)):
                out += [(f'{key}.{k}', v, t) for k, v, t in _items(value)]
            else:
                out.append((str(key), value, False))
        return out
    if isinstance(overrides, str):
        overrides = [overrides]
    out = []
    for item in overrides:
        if not isinstance(item, str) or '=' not in item:
            raise ValueError(f"config override {item!r} is not of the form a.b=value")
        key, text = item.split('=', 1)
        key = key.strip()
        for prefix in ('--config.', 'config.'):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out.append((key, text, True))
    return out


def _field_names(section):
    return sorted(section.keys()) if isinstance(section, ml_collections.ConfigDict) else []


def _unknown(key, section, name, where):
    names = _field_names(section)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ''
    optional = ', '.join(sorted(OPTIONAL_FIELDS))
    _fail(key, f"no field {name!r} in {where or 'the config'}{hint} (fields there: "
               f"{', '.join(names) or 'none'}). Optional toolkit fields: {optional}; "
               f"write '+{key}=...' to add a new field")


def _set(config, key, value, is_text):
    add = key.startswith('+')
    key = key[1:] if add else key
    parts = key.split('.')
    if not key or not all(parts):
        raise ValueError(f"config override key {key!r} is malformed")
    section = config
    for i, part in enumerate(parts[:-1]):
        where = '.'.join(parts[:i])
        if part not in section:
            if not add:
                _unknown(key, section, part, where)
            section[part] = ml_collections.ConfigDict()
        section = section[part]
        if not isinstance(section, ml_collections.ConfigDict):
            _fail(key, f"{'.'.join(parts[:i + 1])!r} is a value, not a section")
    leaf = parts[-1]
    if leaf in section:
        current = section[leaf]
        if isinstance(current, ml_collections.ConfigDict):
            _fail(key, "this is a section; override its fields (e.g. "
                       f"{key}.{next(iter(sorted(current.keys())), 'x')}=...)")
        kind = None if current is None else type(current)
    elif key in OPTIONAL_FIELDS:
        kind = OPTIONAL_FIELDS[key][0]
    elif add:
        kind = None
    else:
        _unknown(key, section, leaf, '.'.join(parts[:-1]))
    section[leaf] = _parse_text(key, value, kind) if is_text else _check_value(key, value, kind)


def apply_overrides(config, overrides):
    """A copy of `config` with `overrides` applied ({'model.nf': 16} or ['model.nf=16', ...]);
    `config` itself is left unchanged. Raises ValueError naming a bad key or value."""
    out = config.copy_and_resolve_references()
    for key, value, is_text in _items(overrides):
        _set(out, key, value, is_text)
    return out
