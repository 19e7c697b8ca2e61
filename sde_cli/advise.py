"""``python -m sde_lib.run advise``: NCSNv2's noise-schedule advice (Techniques 1, 2 and 4 of
Song & Ermon 2020, `sde_lib.advisor`) for a config's training set, a bundled dataset, a file of
data points, or a bare dimension; prints the config lines to use."""

import os

import numpy as np
import torch

from sde_base.fileio import numpy_file
from sde_cli.app import command
from sde_cli.errors import CLIError
from sde_cli.flags import CONFIG_HELP, DATA_DIR_HELP, flag, positive_float, positive_int
from sde_cli.outputs import check_result_file, write_json
from sde_lib.advisor import advise, advise_for_dimension, step_size_table


def images_of(dataset):
    """All images of a `training.data` dataset as one float tensor in [0, 1]."""
    return dataset.get_batch(torch.arange(len(dataset)))[0]


def load_points(path):
    """Data points from an .npz ('images'), .npy or idx(.gz) file: float tensor [n, ...].
    uint8 arrays are divided by 255; float arrays are taken as they are."""
    from training.data import read_idx
    if not os.path.isfile(path):
        raise CLIError(f"--data: no such file {path!r}")
    if path.endswith(".npz"):
        with numpy_file(path) as z:
            if "images" not in z.files:
                raise CLIError(f"{path}: no 'images' array; it holds {z.files}")
            arr = z["images"]
    elif path.endswith(".npy"):
        with numpy_file(path) as arr:
            arr = np.asarray(arr)
    elif "idx" in os.path.basename(path):
        arr = read_idx(path)
    else:
        raise CLIError(f"--data: {path!r} is not an .npz, .npy or idx(.gz) file")
    arr = np.asarray(arr)
    if arr.ndim < 2:
        raise CLIError(f"{path}: expected an array [n, ...] of data points, got shape "
                       f"{arr.shape}")
    x = torch.from_numpy(arr.astype(np.float32))
    return x / 255.0 if arr.dtype == np.uint8 else x


def builtin_points(name, split, data_dir):
    from ml_collections import ConfigDict
    from training.data import load_dataset
    size = {"digits": 8, "mnist": 28}[name]
    cfg = ConfigDict({"data": {"dataset": name.upper(), "image_size": size, "num_channels": 1,
                               "centered": False}})
    return images_of(load_dataset(cfg, split, data_dir=data_dir))


def report(advice, source, json_path, centered):
    print(advice.summary())
    print("Technique 4 for other T: " + "; ".join(
        f"T={T}: eps {eps:.3g}, ratio {ratio:.4f}"
        for T, eps, ratio in step_size_table(advice.gamma, advice.sigma_min)))
    print("\n# config lines")
    print("\n".join(advice.config_lines()))
    if json_path:
        write_json(json_path, dict(advice.to_dict(), source=source, centered=centered,
                                   command="advise"))


def add_arguments(parser):
    src = parser.add_mutually_exclusive_group(required=True)
    flag(src, "config", help="its training set is used, scaled as config.data.centered says; "
         + CONFIG_HELP)
    flag(src, "dataset", choices=["digits", "mnist"], help="a dataset at native size, one of: "
         "digits (bundled with scikit-learn), mnist")
    flag(src, "data", help=".npz with an 'images' array, .npy, or MNIST idx(.gz) file")
    flag(src, "dim", type=positive_int, help="no data: Techniques 2 and 4 for this dimension "
         "(needs --sigma-max)")
    flag(parser, "sigma-max", type=positive_float, help="largest scale, with --dim")
    flag(parser, "data-dir", help=DATA_DIR_HELP)
    flag(parser, "split", default="train", choices=["train", "test"],
         help="split for --config/--dataset")
    flag(parser, "centered", action="store_true", help="scale [0, 1] data to [-1, 1] first "
         "(--dataset/--data; --config reads config.data.centered)")
    flag(parser, "sigma-min", type=positive_float, default=0.01, help="smallest scale")
    flag(parser, "n-steps-each", type=positive_int, default=5,
         help="Langevin steps per scale T (NCSNv2's 5)")
    flag(parser, "sample-size", type=positive_int, default=10000,
         help="points per subset for the max distance (exact below this)")
    flag(parser, "n-subsets", type=positive_int, default=4, help="random subsets when sampling")
    flag(parser, "overlap", type=positive_float, default=0.5, help="Technique 2's target")
    flag(parser, "seed", type=int, default=0, help="seed of the random subsets")
    flag(parser, "json", help="also write the advice as JSON to this file (a new file, or one "
         "advise wrote)")
    flag(parser, "debug", action="store_true", help="show the traceback of an error")


@command("advise", "NCSNv2 noise-schedule advisor: sigma_max (Technique 1), number of scales "
         "(Technique 2) and annealed Langevin step size (Technique 4) for a data set.",
         add_arguments)
def run(args):
    if args.config_overrides and not args.config:
        raise CLIError("--config.a.b=value overrides need --config")
    centered = args.centered
    if args.json:
        check_result_file(args.json, "--json", "advise")
    if args.dim is not None:
        if args.sigma_max is None:
            raise CLIError("--dim needs --sigma-max (Technique 1 needs the data)")
        advice = advise_for_dimension(args.dim, args.sigma_max, sigma_min=args.sigma_min,
                                      n_steps_each=args.n_steps_each, overlap=args.overlap)
        report(advice, f"dimension {args.dim}, sigma_max {args.sigma_max:g}", args.json, None)
        return 0
    if args.sigma_max is not None:
        raise CLIError("--sigma-max goes with --dim only; with data Technique 1 computes it")
    if args.config:
        import configs
        from training.data import load_dataset
        config = configs.load_config(args.config, args.config_overrides or None)
        x = images_of(load_dataset(config, args.split, data_dir=args.data_dir))
        centered = bool(config.data.centered)
        source = f"config {args.config} ({config.data.dataset}, {args.split})"
    elif args.dataset:
        x = builtin_points(args.dataset, args.split, args.data_dir)
        source = f"{args.dataset} ({args.split})"
    else:
        x = load_points(args.data)
        source = args.data
    if centered:
        x = 2.0 * x - 1.0
    g = torch.Generator().manual_seed(args.seed)
    advice = advise(x, sigma_min=args.sigma_min, n_steps_each=args.n_steps_each,
                    sample_size=args.sample_size, n_subsets=args.n_subsets,
                    overlap=args.overlap, generator=g)
    print(f"source: {source}; data range [{float(x.min()):g}, {float(x.max()):g}]"
          f"{' (centred to [-1, 1])' if centered else ''}")
    report(advice, source, args.json, centered)
    return 0
