"""The command line: ``python -m sde_lib.run [COMMAND] [options] [--config.a.b=value ...]``.

With no command it runs the main job: train a small score model on the built-in offline
default (scikit-learn's 8x8 digits), sample it, and write a PNG grid and a JSON summary:

    python -m sde_lib.run --sde ve --sampler pc        # also --sde vp | subvp

Commands (``python -m sde_lib.run COMMAND --help`` lists each one's options):

    main        train, then sample (the default)
    train       train or resume (``--workdir`` of a stopped run continues where it stopped)
    sample      sample a checkpoint: PNG grid + .npz (--sampler, --predictor, --corrector,
                --steps, --snr, --checkpoint, ...)
    eval        evaluation losses (and bits/dim, samples) of the workdir's checkpoints
    likelihood  bits/dim of a data split under a checkpoint
    advise      NCSNv2 noise-schedule advisor (``sde_lib.advisor``)
    inpaint     inpaint images of a split with a checkpoint (before/after PNG grids)
    colorize    colorize grey versions of images of a split
    conditional class-conditional sampling with a noise-conditional classifier

The original's flag form ``--mode train|eval`` is accepted too. ``--config`` takes a config name
(``ve/cifar10_ncsnpp_continuous``, ``builtin/digits_ve``) or a file; ``--config.x.y=value``
overrides single fields. Multi-GPU / multi-node: ``torchrun --nproc_per_node=K -m sde_lib.run
train ...``.

Adding a command: put a `Command` (or a plain ``main(argv) -> int``) in its own module and add
one line to `COMMANDS` naming it; it is imported only when used.
"""

import argparse
import dataclasses
import importlib
import sys
from typing import Callable

SDE_NAMES = {"ve": "vesde", "vp": "vpsde", "subvp": "subvpsde",
             "vesde": "vesde", "vpsde": "vpsde", "subvpsde": "subvpsde"}
DEFAULT_COMMAND = "main"


@dataclasses.dataclass
class Command:
    """A subcommand: `add_arguments(parser)` declares its options, `run(args) -> int` runs it.
    `args.config_overrides` holds the ``--config.x.y=value`` items."""
    help: str
    add_arguments: Callable
    run: Callable


# name -> (module, attribute): a `Command`, or a function main(argv) that parses its own options.
COMMANDS = {
    "main": ("training.commands", "MAIN"),
    "train": ("training.commands", "TRAIN"),
    "sample": ("training.commands", "SAMPLE"),
    "eval": ("training.commands", "EVAL"),
    "likelihood": ("training.commands", "LIKELIHOOD"),
    "advise": ("sde_lib.advisor", "main"),
    "inpaint": ("sde_lib.controllable", "INPAINT"),
    "colorize": ("sde_lib.controllable", "COLORIZE"),
    "conditional": ("sde_lib.controllable", "CONDITIONAL"),
}


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
                raise SystemExit(f"error: {a} needs a value (--config.a.b=value)")
        else:
            rest.append(a)
        i += 1
    return rest, overrides


def add_common_arguments(parser):
    """Options every training/sampling command shares."""
    g = parser.add_argument_group("config and run")
    g.add_argument("--config", help="config name (e.g. ve/cifar10_ncsnpp_continuous, "
                   "builtin/digits_ve) or path to a config file; default: the built-in digits "
                   "config of --sde")
    g.add_argument("--sde", choices=sorted(SDE_NAMES), metavar="{ve,vp,subvp}",
                   help="SDE: ve, vp or subvp (sets "
                   "config.training.sde; without --config picks builtin/digits_<sde>)")
    g.add_argument("--workdir", help="folder for checkpoints, logs and samples "
                   "(default: runs/<config name>)")
    g.add_argument("--seed", type=int, help="overrides config.seed")
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    g.add_argument("--data_dir", "--data-dir", dest="data_dir",
                   help="folder holding the dataset files")
    g.add_argument("--quick", action="store_true",
                   help="a seconds-long smoke run (few steps, few samples, few sampler steps)")
    g.add_argument("--no_progress", "--no-progress", dest="progress", action="store_false",
                   help="no progress bars")


def add_sampler_arguments(parser, n_default=64):
    g = parser.add_argument_group("sampling")
    g.add_argument("--sampler", help="sampler: pc, ode, or a fast one (see solvers); "
                   "default config.sampling.method")
    g.add_argument("--predictor", help="PC predictor (reverse_diffusion, euler_maruyama, "
                   "ancestral_sampling, none)")
    g.add_argument("--corrector", help="PC corrector (langevin, ald, none)")
    g.add_argument("--steps", type=int, help="number of sampler steps (default: the SDE's N)")
    g.add_argument("--snr", type=float, help="corrector signal-to-noise ratio")
    g.add_argument("--n_corrector_steps", "--n-corrector-steps", type=int,
                   dest="n_corrector_steps", help="corrector steps per noise level")
    g.add_argument("--eps", type=float, help="last sampling time (default: the SDE's)")
    g.add_argument("--no_denoise", "--no-denoise", dest="denoise", action="store_false",
                   default=None, help="skip the final noise-free denoising step")
    g.add_argument("--num_samples", "--num-samples", "-n", type=int, default=n_default,
                   dest="num_samples", help=f"number of samples (default {n_default})")
    g.add_argument("--sample_batch", "--sample-batch", type=int, dest="sample_batch",
                   help="samples drawn per batch (default: all at once)")


def _resolve(name):
    if name not in COMMANDS:
        raise SystemExit(f"error: unknown command {name!r}; known: {', '.join(COMMANDS)}")
    module, attr = COMMANDS[name]
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise SystemExit(f"error: command {name!r} is not available ({module}.{attr}: {e})")


def _pick_command(argv):
    """(command, remaining argv): a leading command name, else --mode NAME, else the default."""
    if argv and argv[0] in COMMANDS:
        return argv[0], argv[1:]
    for i, a in enumerate(argv):
        if a == "--mode" and i + 1 < len(argv):
            return argv[i + 1].lower(), argv[:i] + argv[i + 2:]
        if a.startswith("--mode="):
            return a.split("=", 1)[1].lower(), argv[:i] + argv[i + 1:]
    if argv and not argv[0].startswith("-"):
        raise SystemExit(f"error: unknown command {argv[0]!r}; known: {', '.join(COMMANDS)}")
    return DEFAULT_COMMAND, argv


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    name, argv = _pick_command(argv)
    target = _resolve(name)
    if not (hasattr(target, "add_arguments") and hasattr(target, "run")):  # a main(argv)
        return int(target(argv) or 0)
    argv, overrides = split_config_overrides(argv)
    parser = argparse.ArgumentParser(prog=f"python -m sde_lib.run {name}", description=target.help)
    target.add_arguments(parser)
    args = parser.parse_args(argv)
    args.config_overrides = overrides
    args.command = name
    return int(target.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
