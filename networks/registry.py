"""Name registry of score-network classes (`config.model.name` -> class), on the toolkit's one
registry class `sde_lib.registry.Registry`."""

from sde_lib.registry import Registry

MODELS = Registry("model")


def register_model(cls=None, *, name=None):
    """Class decorator: register `cls` under `name` (default: the class name)."""

    def _register(c):
        return MODELS.register(c.__name__ if name is None else name, c)

    return _register if cls is None else _register(cls)


def get_model_class(name):
    """The class registered as `name`; an error (KeyError and ValueError) lists the known names
    otherwise."""
    return MODELS.get(name)


def model_names():
    return MODELS.names()
