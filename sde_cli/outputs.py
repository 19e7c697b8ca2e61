"""Samples as files: drawing them as the config and flags say, naming them by what made them,
and writing PNG grids, .npz arrays and JSON records that never overwrite one another."""

import math
import os

import torch

from sde_cli.errors import CLIError
from sde_cli.flags import sampler_overrides
from sde_cli.folders import unique_stem
from training.sampling import draw_samples

SAMPLE_SUFFIXES = (".png", "_pixels.png", ".npz", ".json")


def draw(model, sde, config, n, *, seed, device, args, batch=None):
    """n samples in [0, 1] drawn with one generator seeded by `seed`, the NFE of one sample,
    and every option the run used, defaults included (steps and grid resolved; JSON data:
    passed back to `draw_samples` as overrides it draws the same images)."""
    g = torch.Generator(device=device).manual_seed(int(seed))
    images, nfe, used = draw_samples(model, sde, config, n, generator=g, device=device,
                                     progress=args.progress, batch_size=batch,
                                     **sampler_overrides(args))
    return images.cpu(), nfe, used


def available_memory():
    """Bytes of memory available to a new allocation (Linux MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_held_memory(nbytes, flags, hint):
    """Refuse, before any allocation, a request that would hold `nbytes` in memory when that is
    more than 80% of what is available, naming the `flags` that set it and how to go on."""
    avail = available_memory()
    if avail is not None and nbytes > 0.8 * avail:
        raise CLIError(f"{flags} would hold about {nbytes / 2 ** 30:.1f} GiB in memory, more than "
                       f"the {avail / 2 ** 30:.1f} GiB available; {hint}")
    return nbytes


def sample_stem(prefix, opts, seed):
    """'<prefix>_<sampler>[_<steps>steps]_seed<seed>': outputs named by what made them."""
    steps = opts.get("steps")
    name = str(opts["sampler"]).replace("+", "p")
    return f"{prefix}_{name}" + (f"_{steps}steps" if steps else "") + f"_seed{int(seed)}"


def free_stem(folder, stem):
    """`stem`, numbered if files of that stem exist already (nothing is overwritten)."""
    return unique_stem(folder, stem, SAMPLE_SUFFIXES)


def check_name(text, flag="--stem", where="outputs go into the output folder (--out)"):
    """A file-name stem given by the user: a plain name (no separator, not '.' or '..', no
    leading '.'), so every output lands in the locked output folder (`where` says which)."""
    text = str(text)
    seps = [os.sep] + ([os.altsep] if os.altsep else []) + ["/", "\\"]
    if (not text or text in (".", "..") or text.startswith(".") or "\0" in text
            or any(sep in text for sep in seps)):
        raise CLIError(f"{flag} {text!r} is not a plain file name (no path separators, no "
                       f"leading '.'); {where}")
    return text


def check_result_file(path, flag, command):
    """Before the work: the JSON file `flag` names may be replaced, i.e. it is absent, or a
    result this `command` wrote (a JSON object whose "command" is `command`: write it so);
    a folder, or any other file, is refused, so nothing replaces a file the toolkit did not
    write. Creates the file's folder and removes the temporary files dead writers left there."""
    from sde_base.fileio import json_object_matches, remove_stale_temps
    from sde_cli.folders import check_writable
    if os.path.isdir(path):
        raise CLIError(f"{flag} {path!r} is a folder; give a file name")
    if os.path.lexists(path):
        ours = json_object_matches(path, lambda data: data.get("command") == command)
        if not ours or os.path.islink(path):
            raise CLIError(f"{flag} {path!r} exists and is not a result of `{command}` this "
                           f"toolkit wrote; it is never replaced: choose another file name")
    folder = check_writable(os.path.dirname(os.path.abspath(path)))
    remove_stale_temps(folder)
    return path


def sample_files(images, folder, stem):
    """The files of a sample set, as (path, write(path)) pairs: <stem>.png (grid; small images
    smoothly upscaled), <stem>_pixels.png (exact pixels as blocks, small images only) and
    <stem>.npz ('samples': uint8 [N, H, W, C], as the original writes them)."""
    from training.images import save_grid, save_npz, to_uint8
    nrow = int(math.ceil(math.sqrt(len(images))))
    files = {"png": (os.path.join(folder, f"{stem}.png"),
                     lambda p: save_grid(images, p, nrow=nrow))}
    if images.shape[-1] < 32:
        files["pixels_png"] = (os.path.join(folder, f"{stem}_pixels.png"),
                               lambda p: save_grid(images, p, nrow=nrow, resample="nearest"))
    files["npz"] = (os.path.join(folder, f"{stem}.npz"),
                    lambda p: save_npz(p, samples=to_uint8(images)))
    return files


def write_json(path, obj):
    from sde_base.fileio import write_json as atomic_json
    atomic_json(path, obj, default=str)
    return path


# ----------------------------------------------------------------------------- output sets

def _pending(folder, stem):
    return os.path.join(folder, f".{stem}.set-pending.json")


def commit_set(folder, stem, files, info):
    """Write one output set whole or not at all: a journal `.<stem>.set-pending.json` listing
    its files first, then each file (atomically), then <stem>.json = `info` plus every file's
    absolute path (the commit marker), then the journal is removed. A writer killed before the
    marker leaves the journal, and `recover_sets` (run under the folder's lock before the next
    write) removes that set's files. An I/O error removes what was written and is a CLIError
    naming the file and the folder. `files`: {kind: (path, write(path))}. Returns {kind: path}
    with 'json'."""
    from sde_base.fileio import write_json as atomic_json
    paths = {k: os.path.abspath(p) for k, (p, _) in files.items()}
    paths["json"] = os.path.abspath(os.path.join(folder, f"{stem}.json"))
    journal = _pending(folder, stem)
    current = journal
    try:
        atomic_json(journal, {"pid": os.getpid(), "files": list(paths.values())})
        for kind, (path, write) in files.items():
            current = path
            write(path)
        current = paths["json"]
        atomic_json(paths["json"], dict(info, **{k: v for k, v in paths.items()
                                                 if k != "json"}), default=str)
    except OSError as e:
        for path in list(paths.values()) + [journal]:
            _remove_quietly(path)
        raise CLIError(f"cannot write {os.path.basename(current)} in folder "
                       f"{os.path.abspath(folder)}: {e.strerror or e}; nothing of the set "
                       f"{stem!r} was kept") from None
    os.remove(journal)
    return paths


def _remove_quietly(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def recover_sets(folder):
    """Clean up after writers of `folder` that died (call it holding the folder's lock, so
    no live writer is inside): a set whose journal remains without its JSON commit marker is
    removed (its JSON present: the set is whole, only the journal goes), then the dead writers'
    temporary files (`sde_base.fileio.remove_stale_temps`). Returns the removed paths."""
    import json
    from sde_base.fileio import remove_stale_temps
    removed = []
    for name in sorted(os.listdir(folder)):
        if not (name.startswith(".") and name.endswith(".set-pending.json")):
            continue
        journal = os.path.join(folder, name)
        try:
            with open(journal, encoding="utf-8") as f:
                files = [os.path.join(folder, os.path.basename(p))
                         for p in json.load(f)["files"]]
        except (OSError, ValueError, KeyError, TypeError):
            files = []
        if files and not os.path.exists(files[-1]):  # no commit marker: remove the set
            for path in files:
                if os.path.exists(path):
                    _remove_quietly(path)
                    removed.append(path)
        _remove_quietly(journal)
        removed.append(journal)
    return removed + remove_stale_temps(folder)


def format_metrics(result):
    """One line of the --metrics results (or why they are missing)."""
    if "metrics_error" in result:
        return f"metrics not computed: {result['metrics_error']}"
    items = []
    for k, v in sorted(result.get("metrics", {}).items()):
        if isinstance(v, float):
            items.append(f"{k} {v:.4g}")
        elif isinstance(v, (int, str)) and not isinstance(v, bool):
            items.append(f"{k} {v}")
    return "metrics: " + ", ".join(items)


def nearest_neighbour_distance(samples, reference):
    """Mean Euclidean distance from each sample to its nearest reference image (a quick check
    that samples lie near the data, and are not copies when compared with test images)."""
    a = samples.reshape(len(samples), -1).double()
    b = reference.reshape(len(reference), -1).double()
    return torch.cdist(a, b).min(1).values.mean().item()


def sample_metrics(images, config, args):
    """Sample-quality metrics where available: DIGITS, the offline digits classifier's
    features; otherwise FID/IS/KID through torch-fidelity (the [metrics] extra)."""
    try:
        if str(config.data.dataset).upper() == "DIGITS":
            from evaluation.digits_features import digits_metrics
            return {"metrics": digits_metrics(images)}
        from evaluation.metrics import fidelity_metrics
        from training.data import load_dataset
        ref = load_dataset(config, "train", data_dir=args.data_dir)
        return {"metrics": fidelity_metrics(images, ref)}
    except (ImportError, RuntimeError, ValueError, OSError) as e:  # optional: say why missing
        return {"metrics_error": f"{type(e).__name__}: {e}"}


def add_metrics_flag(parser):
    parser.add_argument("--metrics", action="store_true",
                        help="also compute sample-quality metrics (DIGITS: the offline digits "
                        "classifier's FID/KID/score; otherwise FID/IS/KID through "
                        "torch-fidelity, pip install -e '.[metrics]')")
