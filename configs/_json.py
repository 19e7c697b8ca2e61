"""JSON form of a config that round-trips exactly.

JSON has no tuple, so `config_to_json` writes tuples as lists and records where they were
under the top-level key "__tuples__" (a list of paths, each a list of keys and list
indices). Everything else is plain JSON, readable by any tool. Only plain values are allowed
(bool, int, float, str, None, lists/tuples of them, nested sections); anything else, such as a
torch.device, is an error naming its key.
"""

import json

import ml_collections

TUPLES_KEY = '__tuples__'
_SCALARS = (bool, int, float, str, type(None))


def _dotted(path):
    out = ''
    for part in path:
        out += f'[{part}]' if isinstance(part, int) else (f'.{part}' if out else str(part))
    return out or '<root>'


def to_plain(value, path=(), tuples=None):
    """`value` as JSON-ready dicts/lists/scalars; tuple paths are appended to `tuples`."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"config key {key!r} at {_dotted(path)} is not a string")
            out[key] = to_plain(item, path + (key,), tuples)
        return out
    if isinstance(value, (list, tuple)):
        if isinstance(value, tuple) and tuples is not None:
            tuples.append(list(path))
        return [to_plain(item, path + (i,), tuples) for i, item in enumerate(value)]
    if isinstance(value, _SCALARS):
        return value
    raise TypeError(f"config value {_dotted(path)} = {value!r} is a {type(value).__name__}; "
                    f"configs hold plain values only (bool, int, float, str, None, lists, tuples)")


def config_to_json(config, indent=2):
    """The config as JSON text (sorted keys); `config_from_json` gives back an equal config,
    tuples included."""
    tuples = []
    plain = to_plain(config, (), tuples)
    if TUPLES_KEY in plain:
        raise ValueError(f"a config may not use the reserved key {TUPLES_KEY!r}")
    if tuples:
        plain[TUPLES_KEY] = tuples
    return json.dumps(plain, indent=indent, sort_keys=True)


def _restore_tuple(tree, path):
    node = tree
    try:
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = tuple(node[path[-1]])
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"{TUPLES_KEY} names {path!r}, which is not a list in this JSON") from None


def config_from_json(text):
    """A ConfigDict from `config_to_json` text (or a plain JSON object, lists staying lists).
    Also accepts bytes or an already-parsed dict."""
    if isinstance(text, (str, bytes, bytearray)):
        try:
            tree = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config JSON does not parse: {e}") from None
    elif isinstance(text, dict):
        tree = json.loads(json.dumps(text))  # a private deep copy
    else:
        raise TypeError(f"config_from_json takes JSON text or a dict, got {type(text).__name__}")
    if not isinstance(tree, dict):
        raise ValueError(f"config JSON must be an object, got {type(tree).__name__}")
    paths = tree.pop(TUPLES_KEY, [])
    if not isinstance(paths, list) or not all(isinstance(p, list) and p for p in paths):
        raise ValueError(f"{TUPLES_KEY} must be a list of non-empty key paths")
    for path in sorted(paths, key=len, reverse=True):  # inner tuples before the outer ones
        _restore_tuple(tree, path)
    return ml_collections.ConfigDict(tree)
