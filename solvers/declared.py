"""Declared options: a sampler (or a corrector) is registered once with the options it takes,
each with its type, default and one-line help, and everything else reads that record:
`solvers.sample` (which options exist, their defaults, the steps and grid it resolves, the
options it reports), the command line's flags, help and checks, and the options written into
every output's JSON.

    @register_sampler("my_sampler", steps=12, grid="logsnr", options=(
        Option("order", int, 2, "the solver's order", choices=(1, 2)),))
    def my_sampler(score_fn, sde, x, *, eps, denoise, generator, progress, callback,
                   steps, grid, order):
        ...

The function itself names its options without defaults: the declaration holds them, and the
registered object (a `Sampler`, callable like the function) fills them in. A sampler's function
always receives the protocol keywords (eps, denoise, generator, progress, callback) and every
declared option, with steps and grid resolved. An option it does not take is an error naming the
sampler and the options it does take.
"""

import dataclasses
import functools

import torch

from sde_base.registry import Registry
from sde_base.values import count, positive_float, positive_int  # noqa: F401 (option types)
from solvers.grids import GRIDS, time_grid

SAMPLERS = Registry("sampler")

# What `sample` gives every sampler, with the values a direct call gets when they are left out.
PROTOCOL = {"eps": None, "denoise": True, "generator": None, "progress": False, "callback": None}

SDE_N = "the SDE's N"   # a default step count: one step per discretisation level of the SDE


def parse_bool(text):
    """'true'/'false' (also 1/0, yes/no, on/off) as a bool."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean (true/false): {text!r}")


@dataclasses.dataclass(frozen=True)
class Option:
    """One option: name; type (a parser of its command-line text: str, bool, float, or one of
    positive_int, count, positive_float, grids.time_grid; None: a Python value only, such as a
    dict or a hook); default; one-line help; allowed values (`choices`: a tuple or a name
    registry); `flag`: the command line has a flag of its own for it (--name), else it is set
    with --sampler-option NAME=VALUE; `hook`: a function called during sampling (never
    recorded)."""

    name: str
    type: type
    default: object
    help: str
    choices: object = None
    flag: bool = False
    hook: bool = False

    def parse(self, text):
        """The value of the command-line text `text`."""
        if self.type is None:
            raise ValueError(f"option {self.name} cannot be set from the command line")
        try:
            value = parse_bool(text) if self.type is bool else self.type(text)
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None
        self.check(value, "the command line")
        return value

    def check(self, value, owner):
        """Raise a ValueError naming `owner` when `value` is not one of the choices (a registry's
        own error, naming the known names, for a name registry)."""
        if isinstance(self.choices, Registry) and isinstance(value, str):
            self.choices.get(value)
        elif (self.choices is not None and isinstance(value, (str, int))
              and value not in self.choices):
            raise ValueError(f"{owner}: {self.name} must be one of "
                             f"{', '.join(map(str, self.choices))}, got {value!r}")
        return value


def recordable(value):
    """`value` as JSON data (tensors as nested lists, tuples as lists)."""
    if torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [recordable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): recordable(v) for k, v in value.items()}
    return value


class Declared:
    """A registered function with its declared options (`kind` 'sampler', 'corrector', ...).
    Calling it calls the function with the declared defaults filled in."""

    def __init__(self, kind, name, fn, options=()):
        self.kind, self.name, self.fn = kind, name, fn
        self.options = {}
        for o in options:
            if o.name in self.options or o.name in PROTOCOL:
                raise ValueError(f"{kind} {name!r}: option {o.name!r} is declared twice or is a "
                                 f"keyword every {kind} receives")
            self.options[o.name] = o
        functools.update_wrapper(self, fn)

    def defaults(self):
        return {k: o.default for k, o in self.options.items()}

    def check(self, given):
        """`given` (a dict of options), with a ValueError naming this function and the options
        it takes for any other name, and for values outside an option's choices."""
        unknown = sorted(k for k in given if k not in self.options)
        if unknown:
            raise ValueError(f"{self.kind} {self.name!r} does not take {', '.join(unknown)}; its "
                             f"options: {', '.join(self.options) or '(none)'}")
        for k, v in given.items():
            self.options[k].check(v, f"{self.kind} {self.name!r}")
        return given

    def complete(self, given):
        """The declared defaults updated with `given` (checked)."""
        return {**self.defaults(), **self.check(given)}

    def __call__(self, *args, **kwargs):
        mine = {k: v for k, v in kwargs.items() if k in self.options}
        rest = {k: v for k, v in kwargs.items() if k not in self.options}
        return self.fn(*args, **rest, **self.complete(mine))

    def __repr__(self):
        return f"<{self.kind} {self.name!r}: {', '.join(self.options) or 'no options'}>"


def check_declared(fn, given, kind):
    """`given` (a dict, or None for none) checked against the options `fn` declares (a plain
    function declares none), as a dict."""
    given = dict(given or {})
    if isinstance(fn, Declared):
        return fn.check(given)
    if given:
        raise ValueError(f"{kind} {getattr(fn, '__name__', fn)!r} does not take "
                         f"{', '.join(sorted(given))}; its options: (none)")
    return given


def register_declared(registry, kind, name, fn=None, *, options=(), replace=False):
    """Register `fn` with its declared options in `registry` (usable as a decorator); returns
    the `Declared`, called like `fn` with the declared defaults filled in."""

    def add(fn):
        return registry.register(name, Declared(kind, name, fn, options), replace=replace)

    return add if fn is None else add(fn)


class Sampler(Declared):
    """A sampler: its function, its default steps (an int, `SDE_N`, or None when it takes no step
    count) and grid (a grid's name, or None when it takes none), and its options (`steps`, and
    `grid`, `rho`, `grid_options` among them when it takes them)."""

    def __init__(self, name, fn, options=(), steps=None, grid=None):
        implied = []
        if steps is not None:
            implied.append(Option("steps", positive_int, None,
                                  "number of steps (default: the sampler's own)", flag=True))
        if grid is not None:
            implied += [
                Option("grid", time_grid, grid, "time grid: a grid's name, or explicit times, "
                       "largest first, which then set the steps", choices=GRIDS, flag=True),
                Option("rho", positive_float, None, "rho of the karras grids (None: the grid's "
                       "own, 7 for karras, 2 for karras_t)"),
                Option("grid_options", None, None, "other options of a named grid (a dict)")]
        super().__init__("sampler", name, fn, tuple(implied) + tuple(options))
        self.default_steps, self.default_grid = steps, grid

    def resolve(self, sde, given):
        """Every option of a run with `given`: the declared defaults, then `given` (checked), with
        steps set (the default, or the number of intervals of an explicit grid)."""
        opts = self.complete(given)
        if opts.get("steps", 0) is None:
            grid = opts.get("grid")
            n = _explicit_steps(grid) if grid is not None and not isinstance(grid, str) else None
            opts["steps"] = (n if n is not None else
                             int(sde.N) if self.default_steps == SDE_N else self.default_steps)
        return opts

    def record(self, opts):
        """The options of a run as JSON data, hooks left out: enough to run it again."""
        return {k: recordable(v) for k, v in opts.items()
                if not (k in self.options and self.options[k].hook)}

    def __call__(self, score_fn, sde, x, **kwargs):
        protocol = {k: kwargs.pop(k, v) for k, v in PROTOCOL.items()}
        return self.fn(score_fn, sde, x, **protocol, **self.resolve(sde, kwargs))


def _explicit_steps(grid):
    """The number of intervals of an explicit grid (None when it is not a 1-D sequence: the
    grid's own check then says what is wrong)."""
    try:
        t = torch.as_tensor(grid)
    except (TypeError, ValueError, RuntimeError):
        return None
    return t.numel() - 1 if t.dim() == 1 else None


def register_sampler(name, fn=None, *, options=(), steps=None, grid=None, replace=False):
    """Declare and register a sampler (usable as a decorator): `fn(score_fn, sde, x, *, eps,
    denoise, generator, progress, callback, **options)` carries x = x(T) down to eps. Returns the
    `Sampler`, which is called like `fn` with the declared defaults filled in."""

    def add(fn):
        return SAMPLERS.register(name, Sampler(name, fn, options, steps, grid), replace=replace)

    return add if fn is None else add(fn)


def get_sampler(name):
    """The `Sampler` registered as `name`; a `Sampler` as it is; a plain function as a sampler
    that takes no options."""
    found = SAMPLERS.get(name)
    if isinstance(found, Sampler):
        return found
    return Sampler(getattr(found, "__name__", repr(found)), found)


def option_table():
    """{option name: Option} over every registered sampler, for the command line: an option
    several samplers take must be declared with the same type by each."""
    table = {}
    for name in SAMPLERS.names():
        for o in get_sampler(name).options.values():
            seen = table.setdefault(o.name, o)
            if seen.type is not o.type or seen.flag != o.flag:
                raise ValueError(f"option {o.name!r} is declared with type "
                                 f"{getattr(o.type, '__name__', o.type)} by sampler {name!r} but "
                                 f"{getattr(seen.type, '__name__', seen.type)} by another")
    return table


def takers(option):
    """{sampler name: its default} for the samplers that take `option`."""
    out = {}
    for name in SAMPLERS.names():
        s = get_sampler(name)
        if option in s.options:
            out[name] = (s.default_steps if option == "steps" else s.options[option].default)
    return out
