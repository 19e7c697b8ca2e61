"""The parser style and the flags every command shares: flags spelled ``--kebab-case`` (the
old ``--snake_case`` spellings stay accepted), parser errors as one line, the run flags, the
sampling flags and the checks of the sampler names they give."""

import argparse
import difflib

from sde_base import values
from sde_cli.errors import CLIError
import sde_lib
import solvers
from solvers.declared import option_table, takers

SHORT_SDE = {"vesde": "ve", "vpsde": "vp", "subvpsde": "subvp"}
SDE_NAMES = {**{n: n for n in sde_lib.sde_names()}, **{v: k for k, v in SHORT_SDE.items()}}
CONFIG_HELP = ("config name (e.g. ve/cifar10_ncsnpp_continuous, builtin/digits_ve, "
               "builtin/mnist_ve) or file: a .json file (as the toolkit writes them) is only "
               "parsed; a .py file is Python and is EXECUTED, like the original's ml_collections "
               "configs, so run only .py configs you trust. --config.a.b=value overrides one "
               "field. Default: the built-in digits config of --sde, or the config stored in "
               "the checkpoint")
DATA_DIR_HELP = ("datasets folder: each dataset in its own sub-folder (<dir>/mnist, "
                 "<dir>/cifar10, where downloads go), or its files in <dir> itself (default "
                 "~/.cache/score-sde for downloads, ./data for the other datasets)")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default after its help when it has a real one (not None/False) and the
    help does not already say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default not in (None, False, True, argparse.SUPPRESS) and "default" not in text
                and action.option_strings):
            text += f" (default {default})"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse with the toolkit's error rule: a bad flag or value is a `CLIError` (one
    ``error:`` line, status 1, like every other expected error) instead of the usage text and
    status 2; a misspelt choice gets the nearest names."""

    def error(self, message):
        raise CLIError(f"{message} ({self.prog} --help lists the flags)")

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            names = [str(c) for c in action.choices]
            close = difflib.get_close_matches(str(value), names, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise argparse.ArgumentError(action, f"unknown name {value!r}{hint} (known: "
                                                 f"{', '.join(names)})")


def new_parser(prog, description):
    """An argparse parser in the house style: no abbreviations, defaults shown in help, errors
    as one line (`_Parser`)."""
    return _Parser(prog=prog, description=description, allow_abbrev=False,
                   formatter_class=_HelpFormatter)


def flag(group, name, *, aliases=(), **kwargs):
    """Add ``--name`` (kebab case) with ``--name_with_underscores`` accepted too, plus
    `aliases`; dest is the snake-case name."""
    dest = kwargs.pop("dest", name.replace("-", "_"))
    names = [f"--{name}"]
    if "-" in name:
        names.append(f"--{name.replace('-', '_')}")
    names += list(aliases)
    return group.add_argument(*names, dest=dest, **kwargs)


def split_config_overrides(argv):
    """Separate ``--config.a.b=value`` / ``--config.a.b value`` items from the other arguments.
    Returns (other_args, ['a.b=value', ...])."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--config."):
            key = a[len("--config."):]
            if "=" in key:
                overrides.append(key)
            elif i + 1 < len(argv) and not _is_flag(argv[i + 1]):
                overrides.append(f"{key}={argv[i + 1]}")
                i += 1
            else:
                raise CLIError(f"{a} needs a value (--config.{key}=value)")
        else:
            rest.append(a)
        i += 1
    return rest, overrides


def _is_flag(text):
    """Whether a command-line item is a flag (``-x``, ``--name``) rather than a value; a
    negative number is a value."""
    if not text.startswith("-") or text == "-":
        return False
    try:
        float(text)
    except ValueError:
        return True
    return False


def flag_type(parse, name=None):
    """`parse` (raising ValueError or KeyError) as an argparse type whose message is the error
    line argparse prints."""
    def parse_flag(text):
        try:
            return parse(text)
        except (ValueError, KeyError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse_flag.__name__ = name or parse.__name__
    return parse_flag


positive_int = flag_type(values.positive_int)
positive_float = flag_type(values.positive_float)


def add_run_flags(parser, *, config_required=False):
    """Config, SDE, workdir, seed, device, data, threads, progress: every command's flags."""
    g = parser.add_argument_group("config and run")
    flag(g, "config", required=config_required, help=CONFIG_HELP)
    flag(g, "sde", choices=sorted({SHORT_SDE.get(n, n) for n in SDE_NAMES.values()}),
         type=lambda s: SHORT_SDE.get(SDE_NAMES.get(s, s), s),
         help="SDE (sets config.training.sde; without --config picks builtin/digits_<sde>)")
    flag(g, "workdir", help="folder of checkpoints, logs and outputs "
         "(default runs/<config name>)")
    flag(g, "seed", type=int, help="random seed (default config.seed)")
    flag(g, "device", help="cpu, cuda, cuda:1, ... (default config.device: 'auto' = cuda when "
         "available, else cpu)")
    flag(g, "data-dir", help=DATA_DIR_HELP)
    flag(g, "threads", type=positive_int, help="CPU threads for torch (default: one per "
         "physical core not busy by the load average, so 1 on a busy machine; "
         "OMP_NUM_THREADS is honoured)")
    flag(g, "quick", action="store_true",
         help="a seconds-long smoke run (few steps, few samples, few sampler steps)")
    flag(g, "no-progress", dest="progress", action="store_false", help="no progress bars")
    flag(g, "debug", action="store_true", help="show the traceback of an error")


def registry_names():
    """(samplers, predictors, correctors): the names the sampling registries hold."""
    return solvers.SAMPLERS.names(), solvers.PREDICTORS.names(), solvers.CORRECTORS.names()


def _taken_by(name):
    """'sampler A (default x), sampler B (default y)' for a help text."""
    return ", ".join(f"{s} (default {d})" for s, d in takers(name).items())


def add_sampler_flags(parser, n_default=64, eps_alias=True):
    """The sampling flags, from the samplers' declarations (solvers.declared): --sampler, a flag
    of its own for each option declared with one (--steps, --grid, --predictor, ...), and
    --sampler-option NAME=VALUE for every other option that has a type. `eps_alias`: --eps also
    names --sample-eps (commands whose only eps is the sampler's); otherwise --eps is refused
    with a message naming the two."""
    table = option_table()
    samplers = solvers.SAMPLERS.names()
    g = parser.add_argument_group("sampling")
    flag(g, "sampler", choices=samplers, metavar="NAME",
         help=f"sampler, one of: {', '.join(samplers)} (default config.sampling.method)")
    for name, option in table.items():
        if not option.flag:
            continue
        extra = {}
        if option.choices is not None and option.type is str:
            extra = dict(choices=list(option.choices), metavar="NAME")
        choices = f", one of: {', '.join(map(str, option.choices))}" if extra else ""
        flag(g, name.replace("_", "-"), type=flag_type(option.parse, option.name), **extra,
             help=f"{option.help}{choices}; taken by {_taken_by(name)}")
    others = [f"{s}: " + ", ".join(f"{o.name} ({o.type.__name__}, default {o.default!r})"
                                  for o in solvers.get_sampler(s).options.values()
                                  if not o.flag and o.type is not None)
              for s in samplers]
    flag(g, "sampler-option", dest="sampler_options", metavar="NAME=VALUE", action="append",
         type=_sampler_option, default=[],
         help="another option of the sampler (repeatable): " + "; ".join(others))
    flag(g, "sample-eps", aliases=("--eps",) if eps_alias else (), type=positive_float,
         help="last sampling time (default the SDE's: 1e-5 VE, 1e-3 VP/sub-VP)")
    if not eps_alias:
        g.add_argument("--eps", action=_Ambiguous, help=argparse.SUPPRESS)
    flag(g, "no-denoise", dest="denoise", action="store_false", default=None,
         help="skip the final noise-free denoising step")
    flag(g, "num-samples", aliases=("-n",), type=positive_int,
         default=None if n_default is None else Default(n_default),
         help=f"number of samples (default {n_default or 'config.eval.num_samples'}; "
         f"at most {QUICK_SAMPLES} with --quick)")
    flag(g, "sample-batch", type=positive_int, help="samples drawn per batch "
         "(default: all at once)")


def _sampler_option(text):
    """NAME=VALUE of --sampler-option as (name, value), the value parsed by the type that the
    samplers taking NAME declare."""
    name, sep, value = text.partition("=")
    table = {k: o for k, o in option_table().items() if not o.flag and o.type is not None}
    if not sep or name not in table:
        raise argparse.ArgumentTypeError(
            f"expected NAME=VALUE with NAME one of {', '.join(sorted(table))}, got {text!r}")
    return name, flag_type(table[name].parse, name)(value)


class _Ambiguous(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error("--eps is ambiguous here: use --sample-eps (the sampler's last time) or "
                     "--likelihood-eps (the likelihood ODE's start time)")


def sampler_overrides(args):
    """The sampling options given on the command line, as `sampling_options` keywords (the
    sampler's name travels in the config: `finish_config` sets config.sampling.method)."""
    given = {name: getattr(args, name, None) for name, o in option_table().items() if o.flag}
    given.update(eps=args.sample_eps, denoise=args.denoise)
    for name, value in getattr(args, "sampler_options", None) or ():
        given[name] = value
    return given


def check_sampling(opts):
    """Fail before any work on a sampler the registry does not hold, or an option (a config's
    or a flag's) the sampler does not take or whose value it does not allow."""
    name = opts.get("sampler")
    if name is not None and not callable(name) and name not in solvers.SAMPLERS:
        raise CLIError(f"unknown sampler {name!r} (config.sampling.method or --sampler); known: "
                       f"{', '.join(solvers.SAMPLERS.names())}")
    spec = solvers.get_sampler(name or "pc")
    try:
        spec.check({k: v for k, v in opts.items() if k not in ("sampler", "eps", "denoise")})
    except ValueError as e:
        raise CLIError(f"{e} (config.sampling or the command line)") from None
    return opts


QUICK_SAMPLES = 16  # default sample count under --quick


class Default(int):
    """A flag's default count, told apart from the same number given on the command line (so
    --quick can shrink the default and keep a number the user asked for)."""
