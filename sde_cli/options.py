"""What every command shares: the parser style, the common flags (spelled ``--kebab-case``; the
old ``--snake_case`` spellings stay accepted), the config and checkpoint lookup, the device rule,
the thread rule and the checks made before any long work."""

import argparse
import os
import re
import socket

import torch

import sde_lib
import solvers
from solvers.declared import option_table, takers

# --sde takes every registered SDE name (sde_lib.sde_names()) and the short aliases ve/vp/subvp;
# the short name picks the built-in digits config.
SHORT_SDE = {"vesde": "ve", "vpsde": "vp", "subvpsde": "subvp"}
SDE_NAMES = {**{n: n for n in sde_lib.sde_names()}, **{v: k for k, v in SHORT_SDE.items()}}
BUILTIN = "builtin/digits_{sde}"


class CLIError(Exception):
    """An expected failure (bad flag value, missing file, ...): printed as one ``error:`` line."""


# ----------------------------------------------------------------------------- parsing

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


def new_parser(prog, description):
    """An argparse parser in the house style: no abbreviations, defaults shown in help."""
    return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
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
            elif i + 1 < len(argv):
                overrides.append(f"{key}={argv[i + 1]}")
                i += 1
            else:
                raise CLIError(f"{a} needs a value (--config.a.b=value)")
        else:
            rest.append(a)
        i += 1
    return rest, overrides


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {value}")
    return value


def add_run_flags(parser, *, config_required=False):
    """Config, SDE, workdir, seed, device, data, threads, progress: every command's flags."""
    g = parser.add_argument_group("config and run")
    flag(g, "config", required=config_required,
         help="config name (e.g. ve/cifar10_ncsnpp_continuous, builtin/digits_ve) or config "
         "file; --config.a.b=value overrides one field. Default: the built-in digits config of "
         "--sde, or the config stored in the checkpoint")
    flag(g, "sde", choices=sorted({SHORT_SDE.get(n, n) for n in SDE_NAMES.values()}),
         type=lambda s: SHORT_SDE.get(SDE_NAMES.get(s, s), s),
         help="SDE (sets config.training.sde; without --config picks builtin/digits_<sde>)")
    flag(g, "workdir", help="folder of checkpoints, logs and outputs "
         "(default runs/<config name>)")
    flag(g, "seed", type=int, help="random seed (default config.seed)")
    flag(g, "device", help="cpu, cuda, cuda:1, ... (default config.device: 'auto' = cuda when "
         "available, else cpu)")
    flag(g, "data-dir", help="folder holding the dataset files")
    flag(g, "threads", type=positive_int, help="CPU threads for torch (default: 1 for the "
         "built-in digits models, else one per free core; OMP_NUM_THREADS is honoured)")
    flag(g, "quick", action="store_true",
         help="a seconds-long smoke run (few steps, few samples, few sampler steps)")
    flag(g, "no-progress", dest="progress", action="store_false", help="no progress bars")
    flag(g, "debug", action="store_true", help="show the traceback of an error")


def registry_names():
    """(samplers, predictors, correctors): the names the sampling registries hold."""
    return solvers.SAMPLERS.names(), solvers.PREDICTORS.names(), solvers.CORRECTORS.names()


def _parser(option):
    """argparse's `type` for a declared option: its parse, with the error argparse prints."""

    def parse(text):
        try:
            return option.parse(text)
        except (ValueError, KeyError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = option.name
    return parse


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
        flag(g, name.replace("_", "-"), type=_parser(option), **extra,
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
    flag(g, "num-samples", aliases=("-n",), type=positive_int, default=n_default,
         help="number of samples")
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
    return name, _parser(table[name])(value)


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


# ----------------------------------------------------------------------------- config

def config_name(args):
    return args.config or BUILTIN.format(sde=args.sde or "ve")


def load_run_config(args):
    """The config of `args`: --config (or the built-in digits config of --sde), then --sde,
    --sampler and --seed, then the --config.x.y=value overrides, then --quick."""
    import configs
    config = configs.load_config(config_name(args))
    return finish_config(config, args)


def finish_config(config, args):
    """Apply --sde, --sampler, --seed, the --config overrides and --quick to `config`."""
    import configs
    if getattr(args, "sde", None):
        config.training.sde = SDE_NAMES[args.sde]
    if getattr(args, "sampler", None):
        config.sampling.method = args.sampler
    if args.seed is not None:
        config.seed = args.seed
    if args.config_overrides:
        config = configs.load_config(config, args.config_overrides)
    if args.quick:
        quick(config)
    if int(config.training.get("n_iters", 1)) < 1:
        raise CLIError(f"config.training.n_iters must be positive, got {config.training.n_iters}"
                       f" (--config.training.n_iters=N)")
    return config


def quick(config):
    """Shrink a config to a seconds-long smoke run (--quick)."""
    tr = config.training
    tr.n_iters = min(int(tr.n_iters), 20)
    tr.batch_size = min(int(tr.batch_size), 16)
    tr.log_freq, tr.eval_freq = 5, 10
    tr.snapshot_freq = tr.snapshot_freq_for_preemption = 10
    tr.snapshot_sampling = False
    config.optim.warmup = min(int(config.optim.warmup), 5)
    config.sampling.steps = 25  # VP/sub-VP DDPM betas beta_max / steps stay below 1
    return config


def default_workdir(args):
    """--workdir, else runs/<config name with '/' -> '_'> (e.g. runs/builtin_digits_ve)."""
    if args.workdir:
        return args.workdir
    name = os.path.splitext(config_name(args).replace("\\", "/"))[0].strip("./")
    if name.startswith("configs/"):
        name = name[len("configs/"):]
    return os.path.join("runs", re.sub(r"[^A-Za-z0-9_.-]+", "_", name))


def find_checkpoint(args):
    """--checkpoint, else the newest readable checkpoint of the workdir."""
    from training.checkpoints import latest_checkpoint
    path = getattr(args, "checkpoint", None)
    if path is None:
        workdir = default_workdir(args)
        path = latest_checkpoint(workdir)
        if path is None:
            raise CLIError(f"no checkpoint in {workdir} (looked for checkpoints-meta/"
                           f"checkpoint.pth and checkpoints/checkpoint_*.pth); train first, or "
                           f"pass --checkpoint or --workdir")
    elif not os.path.isfile(path):
        raise CLIError(f"checkpoint {path!r} does not exist")
    return path


def config_for_checkpoint(args, path):
    """--config/--sde when given, else the config stored in the (toolkit) checkpoint; then the
    command-line settings (`finish_config`)."""
    if args.config or args.sde:
        return load_run_config(args)
    from networks import read_checkpoint
    from networks.checkpoint import stored_config
    stored = stored_config(read_checkpoint(path))
    if stored is None:
        raise CLIError(f"{path} holds no config (an original score_sde_pytorch checkpoint?); "
                       f"pass --config with the config it was trained with")
    return finish_config(stored, args)


def load_model(path, config, device):
    """The EMA network of a checkpoint on `device`, in eval mode; a config mismatch says how to
    fix it from the command line."""
    from networks import CheckpointError, load_checkpoint
    try:
        model = load_checkpoint(path, config, ema=True, map_location="cpu")
    except CheckpointError as e:
        if "another model config" in str(e):
            msg = str(e).split(" (pass check_config")[0]
            raise CLIError(f"{msg}; drop --config to use the checkpoint's own config, or set the "
                           f"differing fields with --config.model.<field>=<value>") from None
        raise
    return model.to(device).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- machine

def resolve_device(args, config=None):
    """--device, else config.device, through `configs.resolve_device` ('auto' -> cuda when
    available); a device that is not there is an error now, not after the work."""
    import configs
    name = args.device or (config.get("device", "auto") if config is not None else "auto")
    try:
        device = torch.device(configs.resolve_device(name))
    except (RuntimeError, TypeError) as e:
        raise CLIError(f"--device {name!r} is not a device: {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name}: no CUDA device is available (torch "
                           f"{torch.__version__}, CUDA build: {torch.version.cuda is not None}); "
                           f"use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device {name}: MPS is not available")
    return device


def physical_cores():
    """Physical cores of this process's CPU set (Linux /proc/cpuinfo; else logical CPUs)."""
    try:
        usable = os.sched_getaffinity(0)
    except AttributeError:
        usable = set(range(os.cpu_count() or 1))
    try:
        cores, cpu, phys = set(), None, "0"
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu = int(value)
                elif key == "physical id":
                    phys = value
                elif key == "core id" and cpu in usable:
                    cores.add((phys, value))
        if cores:
            return len(cores)
    except (OSError, ValueError):
        pass
    return len(usable)


def choose_threads(args, config, device):
    """Set torch's CPU thread count and say why: --threads; else OMP_NUM_THREADS; else 1 for
    the built-in digits models (too small to gain from more, and a busy machine loses tenfold
    to oversubscription); else one per physical core not already busy (load average)."""
    if args.threads:
        n, why = args.threads, "--threads"
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():
        n, why = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    elif str(config.data.get("dataset", "")).upper() == "DIGITS":
        n, why = 1, "small model; --threads N to change"
    else:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        cores = physical_cores()
        n = max(1, min(cores, int(round(cores - load))))
        why = f"{cores} physical cores, load {load:.1f}; --threads N to change"
    n = max(1, int(n))
    torch.set_num_threads(n)
    if device.type == "cpu":
        print(f"threads: {n} ({why})")
    return n


def environment(device):
    import platform
    return {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "machine": platform.machine(),
            "host": socket.gethostname(), "cpu_count": os.cpu_count()}


def check_writable(folder):
    """Create `folder` if needed and make sure a file can be written there, before the work."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test.{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise CLIError(f"cannot write to {folder!r}: {e.strerror or e}") from None
    return folder


def unique_stem(folder, stem, suffixes):
    """`stem`, or `stem_2`, `stem_3`, ... so that no file `<stem><suffix>` in `folder` is
    overwritten."""
    candidate, k = stem, 1
    while any(os.path.exists(os.path.join(folder, candidate + s)) for s in suffixes):
        k += 1
        candidate = f"{stem}_{k}"
    return candidate


def workdir_lock(folder, what=None):
    """Hold the one-writer lock of `folder` (`sde_lib.fileio.WorkdirLock`) for this command;
    another live run holding it is an error naming its pid and host. Holding it, remove the
    temporary files dead writers left in `folder`."""
    from sde_lib.fileio import WorkdirLock, WorkdirLockedError, remove_stale_temps
    check_writable(folder)
    try:
        lock = WorkdirLock(folder, what=what).acquire()
    except WorkdirLockedError as e:
        raise CLIError(str(e)) from None
    remove_stale_temps(folder)
    return lock
