"""Config names: every `get_config()` module in this package, named by its path relative to
the package without '.py' ('ve/cifar10_ncsnpp_continuous', 'vp/ddpm/cifar10', ...).
Files named default_* (shared defaults) and _* (helpers) are not configs."""

import copy
import difflib
import importlib
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

import ml_collections

from configs._json import config_from_json, config_to_json
from configs._overrides import apply_overrides
from configs._runtime import RUNTIME_DEFAULTS, runtime_defaults

PACKAGE_DIR = Path(__file__).resolve().parent


def config_names():
    """Sorted names of all configs (the original release's and the toolkit's built-in ones)."""
    names = []
    for path in PACKAGE_DIR.rglob('*.py'):
        rel = path.relative_to(PACKAGE_DIR)
        if rel.name.startswith('default_') or any(p.startswith(('_', '.')) for p in rel.parts):
            continue
        names.append(rel.with_suffix('').as_posix())
    return sorted(names)


def _as_name(text):
    """'configs/ve/x.py', './ve/x.py', 've\\x' -> 've/x'."""
    name = text.strip().replace('\\', '/')
    if name.endswith('.py'):
        name = name[:-3]
    while name.startswith('./'):
        name = name[2:]
    if name.startswith('configs/'):
        name = name[len('configs/'):]
    return name


def _unknown_name(text, names):
    name = _as_name(text)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    base = name.rsplit('/', 1)[-1]
    close += [n for n in names if base and n.endswith('/' + base) and n not in close]
    hint = f" Did you mean: {', '.join(close)}?" if close else ''
    return ValueError(f"unknown config {text!r} (neither a config name nor an existing .py file)."
                      f"{hint} Available: {', '.join(names)}")


def _from_file(path):
    """Run a config file by path (as ml_collections' --config does) and call its get_config()."""
    path = Path(path).resolve()
    module_name = '_config_file_' + ''.join(c if c.isalnum() else '_' for c in str(path))
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, 'get_config', None)):
        raise ValueError(f"config file {str(path)!r} defines no get_config()")
    return module.get_config()


def finish(config, where='config'):
    """The toolkit's normal form of a loaded config: a ConfigDict whose `device` is a plain
    string (a torch.device from an original config file becomes e.g. 'cuda:0') and which has
    every `runtime` setting (missing ones get their defaults). Changes `config` in place."""
    if isinstance(config, Mapping) and not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(dict(config))
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"{where} gave a {type(config).__name__}, "
                         f"not an ml_collections.ConfigDict")
    device = config.get('device', None)
    if device is not None and not isinstance(device, str):
        with config.ignore_type():
            config.device = str(device)
    if 'runtime' not in config:
        config.runtime = runtime_defaults()
    else:
        for key, value in RUNTIME_DEFAULTS:
            if key not in config.runtime:
                config.runtime[key] = value
    return config


def get_config(name):
    """The config called `name` ('ve/cifar10_ncsnpp_continuous', 'vp/ddpm/cifar10_continuous',
    with or without '.py' or a leading 'configs/'), or the config of any .py file by path.
    A fresh ConfigDict each call. Unknown names raise ValueError listing close names."""
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"config name must be a string or path, got {type(name).__name__}")
    text = os.fspath(name)
    names = config_names()
    if text.endswith('.py') and os.path.isfile(text):
        return finish(_from_file(text), where=f"{text}: get_config()")
    key = _as_name(text)
    if key not in names:
        raise _unknown_name(text, names)
    module = importlib.import_module('configs.' + key.replace('/', '.'))
    return finish(module.get_config(), where=f"config {key!r}")


def load_config(source, overrides=None):
    """A config from a name or .py file (`get_config`), a .json file (`save_config`), a
    ConfigDict or a dict (copied), with `overrides` applied ({'model.nf': 16} or
    ['model.nf=16', ...]; see `apply_overrides`)."""
    if isinstance(source, ml_collections.ConfigDict):
        config = source.copy_and_resolve_references()
    elif isinstance(source, Mapping):
        config = ml_collections.ConfigDict(copy.deepcopy(dict(source)))
    elif isinstance(source, (str, os.PathLike)) and os.fspath(source).endswith('.json'):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file {path!r} does not exist")
        with open(path, encoding='utf-8') as f:
            config = config_from_json(f.read())
    else:
        config = get_config(source)
    return apply_overrides(finish(config), overrides)


def save_config(config, path):
    """Write `config_to_json(config)` to `path` atomically (`sde_base.fileio.write_text`)."""
    from sde_base.fileio import write_text
    return write_text(os.fspath(path), config_to_json(config) + '\n')
