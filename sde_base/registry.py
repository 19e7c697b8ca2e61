"""Name registries: a user adds a predictor, corrector, sampler or time grid by name without
touching the code that looks it up.

    from solvers import register_predictor

    @register_predictor("my_predictor")
    def my_predictor(score_fn, sde, x, t, *, probability_flow=False, generator=None):
        ...
        return x, x_mean
"""


class UnknownNameError(KeyError, ValueError):
    """A lookup of a name nobody registered. Both a KeyError (a missing key) and a ValueError (a
    bad setting), so callers may catch either."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class Registry:
    """A mapping name -> callable whose lookups fail with the list of known names."""

    def __init__(self, kind):
        self.kind = kind
        self._items = {}

    def register(self, name, obj=None, *, replace=False):
        """Register `obj` under `name`; without `obj`, return a decorator."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def add(obj):
            if not callable(obj):
                raise TypeError(f"a {self.kind} must be callable, got {type(obj).__name__}")
            if name in self._items and not replace:
                raise ValueError(f"a {self.kind} named {name!r} is already registered; "
                                 f"pass replace=True to override it")
            self._items[name] = obj
            return obj

        return add if obj is None else add(obj)

    def get(self, name):
        """The callable registered as `name` (a callable is returned as is)."""
        if callable(name):
            return name
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: "
                                   f"{', '.join(self.names())}") from None

    def names(self):
        return sorted(self._items)

    def __contains__(self, name):
        return name in self._items

    def __iter__(self):
        return iter(self.names())

    def __len__(self):
        return len(self._items)

    def __repr__(self):
        return f"Registry({self.kind!r}: {self.names()})"
