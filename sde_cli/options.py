"""What every command shares: the parser style, the common flags (spelled ``--kebab-case``; the
old ``--snake_case`` spellings stay accepted), the config and checkpoint lookup, the device rule,
the thread rule and the checks made before any long work."""

import argparse
import contextlib
import difflib
import os
import re
import socket

import torch

import sde_lib
import solvers
from solvers.declared import SDE_N, option_table, takers

# --sde takes every registered SDE name (sde_lib.sde_names()) and the short aliases ve/vp/subvp;
# the short name picks the built-in digits config.
SHORT_SDE = {"vesde": "ve", "vpsde": "vp", "subvpsde": "subvp"}
SDE_NAMES = {**{n: n for n in sde_lib.sde_names()}, **{v: k for k, v in SHORT_SDE.items()}}
BUILTIN = "builtin/digits_{sde}"
CONFIG_HELP = ("config name (e.g. ve/cifar10_ncsnpp_continuous, builtin/digits_ve, "
               "builtin/mnist_ve) or file: a .json file (as the toolkit writes them) is only "
               "parsed; a .py file is Python and is EXECUTED, like the original's ml_collections "
               "configs, so run only .py configs you trust. --config.a.b=value overrides one "
               "field. Default: the built-in digits config of --sde, or the config stored in "
               "the checkpoint")
DATA_DIR_HELP = ("datasets folder: each dataset in its own sub-folder (<dir>/mnist, "
                 "<dir>/cifar10, where downloads go), or its files in <dir> itself (default "
                 "~/.cache/score-sde for downloads, ./data for the other datasets)")


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


def finish_config(config, args, fixed_by=None):
    """Apply --sde, --sampler, --seed, the --config overrides and --quick to `config`, then
    check its values (`configs.check_values`). `fixed_by` (a checkpoint or model the config
    came from): the fields that fix what the weights mean may not change (`check_meaning`)."""
    import configs
    base = config
    config = config.copy_and_resolve_references()
    if getattr(args, "sde", None):
        config.training.sde = SDE_NAMES[args.sde]
    if getattr(args, "sampler", None):
        config.sampling.method = args.sampler
    if args.seed is not None:
        config.seed = args.seed
    if args.config_overrides:
        config = configs.load_config(config, args.config_overrides)
    if args.quick:
        quick(config, args)
    try:
        configs.check_values(config)
    except ValueError as e:
        raise CLIError(f"{e} (--config.<field>=<value> sets it)") from None
    if fixed_by is not None:
        check_meaning(base, config, args, fixed_by)
    return config


MEANING_FIELDS = ("training.sde", "training.continuous", "model.*", "data.centered",
                  "data.image_size", "data.num_channels")


def meaning_differences(fixed, config):
    """[(field, value in `fixed`, value in `config`)] for the fields on which `config`
    contradicts `fixed`, the config the weights were trained with (`MEANING_FIELDS`): the SDE
    (`training.sde`, its parameters in `model.*`), continuous or discrete noise labels
    (`training.continuous`, `model.num_scales`), the network (`model.*`) and the data's
    centring and shape. A field missing on one side is `MISSING` there."""
    from configs import to_plain
    out = []
    for pattern in MEANING_FIELDS:
        section, field = pattern.split(".")
        a = to_plain(fixed.get(section, None) or {})
        b = to_plain(config.get(section, None) or {})
        for key in (sorted(set(a) | set(b)) if field == "*" else [field]):
            va, vb = a.get(key, MISSING), b.get(key, MISSING)
            if isinstance(va, str) and isinstance(vb, str) and key == "sde":
                va, vb = va.lower(), vb.lower()
            if va != vb:
                out.append((f"{section}.{key}", va, vb))
    return out


class _Missing:
    def __repr__(self):
        return "(not set)"


MISSING = _Missing()


def _asked_by(field, args):
    """Which flag set `field` on the command line."""
    for item in getattr(args, "config_overrides", None) or ():
        key = item.split("=", 1)[0].lstrip("+")
        if key == field:
            return f"--config.{item}"
    if field == "training.sde" and getattr(args, "sde", None):
        return f"--sde {args.sde}"
    if getattr(args, "config", None):
        return f"--config {args.config}"
    return "the command line"


def check_meaning(fixed, config, args, source):
    """Refuse a config that contradicts what the weights of `source` mean (an SDE, network or
    data scaling other than the one they were trained with gives noise, silently): one line
    naming each field, the trained value and the asked one."""
    diffs = meaning_differences(fixed, config)
    if diffs:
        shown = "; ".join(f"{field} is {a!r} there but {_asked_by(field, args)} asks for {b!r}"
                          for field, a, b in diffs[:6])
        more = f" (and {len(diffs) - 6} more)" if len(diffs) > 6 else ""
        raise CLIError(f"{source} was trained with another config, which fixes what its "
                       f"weights mean: {shown}{more}; drop the flag, or --config to use the "
                       f"checkpoint's own config")


QUICK_STEPS = 25  # PC steps under --quick
QUICK_SAMPLES = 16  # default sample count under --quick


class Default(int):
    """A flag's default count, told apart from the same number given on the command line (so
    --quick can shrink the default and keep a number the user asked for)."""


def quick(config, args=None):
    """Shrink a config (and the default sample count of `args`) to a seconds-long smoke run
    (--quick): never more work than without it. The PC sampler, whose default is one step per
    discretisation level (hundreds), takes QUICK_STEPS steps (VP/sub-VP DDPM betas
    beta_max / steps stay below 1); the fast samplers keep their own smaller defaults."""
    tr = config.training
    tr.n_iters = min(int(tr.n_iters), 20)
    tr.batch_size = min(int(tr.batch_size), 16)
    tr.log_freq, tr.eval_freq = 5, 10
    tr.snapshot_freq = tr.snapshot_freq_for_preemption = 10
    tr.snapshot_sampling = False
    config.optim.warmup = min(int(config.optim.warmup), 5)
    method = str(config.sampling.get("method", "pc")).lower()
    if method in solvers.SAMPLERS and solvers.get_sampler(method).default_steps == SDE_N:
        steps = config.sampling.get("steps", None)
        config.sampling.steps = min(int(steps), QUICK_STEPS) if steps else QUICK_STEPS
    if "eval" in config and "num_samples" in config.eval:
        config.eval.num_samples = min(int(config.eval.num_samples), QUICK_SAMPLES)
    if args is not None and isinstance(getattr(args, "num_samples", None), Default):
        args.num_samples = Default(min(args.num_samples, QUICK_SAMPLES))
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
    """--checkpoint, else the newest readable checkpoint of the workdir; a --config name is
    checked first (a misspelt name is named as such, not taken for a missing checkpoint)."""
    from training.checkpoints import latest_checkpoint
    if getattr(args, "config", None):
        import configs
        configs.load_config(args.config)
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


def checkpoint_config(path):
    """The config stored in a toolkit checkpoint, or None (an original score_sde_pytorch one)."""
    from networks import read_checkpoint
    from networks.checkpoint import stored_config
    return stored_config(read_checkpoint(path))


def config_for_checkpoint(args, path):
    """The config to use the checkpoint `path` with: --config when given, else the config
    stored in the (toolkit) checkpoint; then the command-line settings (`finish_config`). The
    stored config fixes what the weights mean: a setting that contradicts it is refused."""
    import configs
    stored = checkpoint_config(path)
    if args.config:
        base = configs.load_config(args.config)
    elif stored is not None:
        base = stored
    else:
        raise CLIError(f"{path} holds no config (an original score_sde_pytorch checkpoint?); "
                       f"pass --config with the config it was trained with")
    config = finish_config(base, args)
    if stored is not None:
        check_meaning(stored, config, args, f"checkpoint {path}")
    return config


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
    """Set torch's CPU thread count and say why: --threads; else OMP_NUM_THREADS; else one per
    physical core not already busy (`free_cores`), for every model. Torch's default (one per
    logical CPU, whatever the load) oversubscribes a busy machine and loses up to tenfold;
    on a busy machine this gives 1."""
    if args.threads:
        n, why = args.threads, "--threads"
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():
        n, why = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        n, cores, load = free_cores()
        why = f"{cores} physical cores, load {load:.1f}; --threads N to change"
    n = max(1, int(n))
    torch.set_num_threads(n)
    if device.type == "cpu":
        print(f"threads: {n} ({why})")
    return n


def free_cores():
    """(free, cores, load): the physical cores of this process's CPU set not busy by the
    1-minute load average (at least 1), the cores, the load."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = physical_cores()
    return max(1, min(cores, int(round(cores - load)))), cores, load


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


@contextlib.contextmanager
def undo_failed_start(folder):
    """Leave no skeleton behind a start that fails: on an exception inside the block, the empty
    folders it created in `folder` are removed, and so are its lock file and `folder` itself
    when the block created `folder` and left nothing else in it. Files are never removed, so
    nothing a run wrote (checkpoints, logs: its history) is lost. Rank 0 only under torchrun."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    created = not os.path.exists(folder)
    before = set() if created else set(os.listdir(folder))
    try:
        yield
    except BaseException:
        _remove_skeleton(folder, created, before)
        raise


def _remove_skeleton(folder, created, before):
    from sde_lib.fileio import WorkdirLock
    try:
        new = set(os.listdir(folder)) - before
    except OSError:
        return
    for name in sorted(new):
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            for root, _, _ in sorted(os.walk(path), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(root)  # only succeeds on an empty folder
    if created and os.listdir(folder) == [WorkdirLock.NAME]:
        # Still locked by this process: removing the file first, then the folder, lets no
        # other run in between (a run that opened it meanwhile was refused the lock).
        with contextlib.suppress(OSError):
            os.remove(os.path.join(folder, WorkdirLock.NAME))
    if created:
        with contextlib.suppress(OSError):
            os.rmdir(folder)
