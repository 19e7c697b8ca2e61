"""The dispatcher: ``python -m sde_lib.run [COMMAND] [options] [--config.a.b=value ...]``.

With no command it runs the main job: train a small score model on the built-in offline
default (scikit-learn's 8x8 digits), sample it, and write a PNG grid and a JSON summary:

    python -m sde_lib.run --sde ve --sampler pc        # also --sde vp | subvp

Commands (``python -m sde_lib.run COMMAND --help`` lists each one's options):

    main        train, then sample (the default)
    train       train or resume (a stopped run's --workdir continues where it stopped)
    sample      sample a checkpoint: PNG grid, .npz and .json
    eval        the original's sweep over checkpoints: test loss, bits/dim, FID (resumable)
    likelihood  bits/dim of a data split under a checkpoint
    advise      NCSNv2 noise-schedule advisor
    inpaint     inpaint images of a split with a checkpoint (before/after PNG grids)
    colorize    colorize grey versions of images of a split
    conditional class-conditional sampling with a noise-conditional classifier
    metrics     reference statistics once; FID/KID/precision/recall of samples against them

The original's ``--mode train|eval`` is accepted too. Expected errors (unknown config, bad value,
missing or corrupt checkpoint or data, I/O) print one ``error: ...`` line and exit with status 1;
``--debug`` shows the traceback. Multi-GPU / multi-node: ``torchrun --nproc_per_node=K -m
sde_lib.run train ...``.
"""

import dataclasses
import difflib
import sys
from typing import Callable

from sde_base.registry import Registry
from sde_cli.errors import CLIError
from sde_cli.flags import new_parser, split_config_overrides
from sde_cli.folders import remove_skeletons

DEFAULT_COMMAND = "main"


@dataclasses.dataclass(frozen=True)
class Command:
    """A command: `add_arguments(parser)` declares its options, `run(args) -> int` runs it.
    `args.config_overrides` holds the ``--config.x.y=value`` items."""
    help: str
    add_arguments: Callable
    run: Callable

    def __call__(self, args):
        return self.run(args)


# name -> Command; every command module registers its own with `@command` when the package
# `sde_cli` is imported (importing them all costs nothing noticeable: the parser needs torch
# and the sampler registries anyway).
COMMANDS = Registry("command")


def command(name, help, add_arguments):
    """Decorator of a command's ``run(args) -> int``: registers it, with its help text and its
    `add_arguments(parser)`, as the command `name`."""
    def register(run):
        COMMANDS.register(name, Command(help, add_arguments, run))
        return run
    return register


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
        raise CLIError(f"unknown command {argv[0]!r}{_did_you_mean(argv[0])}; known: "
                       f"{', '.join(COMMANDS)}")
    return DEFAULT_COMMAND, argv


def _did_you_mean(name):
    close = difflib.get_close_matches(name, list(COMMANDS), n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def parse(name, argv, prog=None):
    """(command, args) for `name` and its argv; `prog` names the program in help texts."""
    if name not in COMMANDS:
        raise CLIError(f"unknown command {name!r}{_did_you_mean(name)}; known: "
                       f"{', '.join(COMMANDS)}")
    chosen = COMMANDS.get(name)
    argv, overrides = split_config_overrides(list(argv))
    if prog is None:
        prog = "python -m sde_lib.run" + (f" {name}" if name != DEFAULT_COMMAND else "")
    parser = new_parser(prog, chosen.help)
    chosen.add_arguments(parser)
    args = parser.parse_args(argv)
    args.config_overrides = overrides
    args.command = name
    return chosen, args


def run(name, argv, prog=None):
    """Parse and run one command; expected errors become one ``error:`` line and status 1."""
    debug, args = "--debug" in argv, None
    try:
        chosen, args = parse(name, argv, prog)
        return int(chosen.run(args) or 0)
    except KeyboardInterrupt:
        remove_skeletons(args)
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for the user; --debug shows where
        remove_skeletons(args)
        if debug:
            raise
        print(f"error: {_message(e)}", file=sys.stderr)
        return 1
    finally:
        lock = getattr(args, "lock", None)
        if lock is not None:
            lock.release()


def one_line(text):
    """Several lines of an error message as one: sentences joined by a space, other lines by
    '; ', and a list of '- item' lines after 'Looked in:' as 'Looked in: a, b.'."""
    parts, items = [], []

    def flush():
        if items and parts:
            parts[-1] = f"{parts[-1]} {', '.join(items)}."
        elif items:
            parts.append(", ".join(items) + ".")
        items.clear()

    for raw in text.splitlines():
        line = " ".join(raw.split())
        if not line:
            continue
        if line.startswith(("- ", "* ")):
            items.append(line[2:].rstrip(".;,"))
            continue
        flush()
        parts.append(line)
    flush()
    out = ""
    for part in parts:
        if out:
            out += " " if out.endswith((".", ":", ";", "!", "?")) else "; "
        out += part
    return out


def _message(e):
    """One line: the error's text with its lines joined; the type too for unexpected kinds."""
    text = str(e).strip() or type(e).__name__
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        text = e.args[0]
    text = one_line(text)
    if isinstance(e, (CLIError, OSError, ValueError, KeyError)):
        return text
    return f"{type(e).__name__}: {text} (--debug shows the traceback)"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        name, argv = _pick_command(argv)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return run(name, argv)
