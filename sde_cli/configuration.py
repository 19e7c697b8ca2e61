"""The config of a run and the checkpoint it uses: the config named by --config (or stored in
the checkpoint) with the command line's settings, checked before any work; the fields that
fix what a checkpoint's weights mean; --quick; the workdir and checkpoint lookup."""

import os
import re

from sde_cli.errors import CLIError
from sde_cli.flags import Default, QUICK_SAMPLES, SDE_NAMES
import solvers
from solvers.declared import SDE_N

BUILTIN = "builtin/digits_{sde}"


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
