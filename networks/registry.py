"""Name registry of score-network classes (`config.model.name` -> class)."""

_MODELS = {}


def register_model(cls=None, *, name=None):
    """Class decorator: register `cls` under `name` (default: the class name)."""

    def _register(c):
        key = c.__name__ if name is None else name
        if key in _MODELS:
            raise ValueError(f"model name {key!r} is already registered")
        _MODELS[key] = c
        return c

    return _register if cls is None else _register(cls)


def get_model_class(name):
    """The class registered as `name`; a KeyError lists the known names otherwise."""
    try:
        return _MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model name {name!r}; known: {sorted(_MODELS)}") from None


def model_names():
    return sorted(_MODELS)
