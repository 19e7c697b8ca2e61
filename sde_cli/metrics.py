"""``python -m sde_lib.run metrics``: reference statistics computed once (`--reference` into
`--stats`) and sample sets scored against them (`--samples`: a folder of shards, an .npz or a
folder of images): FID, KID, classifier score, precision and recall (`evaluation.reference`),
in the features of the offline digits classifier or of the FID Inception-v3 (`--extractor`).
Also under ``torchrun``: the images are divided over the ranks for feature extraction."""

import json
import os

from sde_cli.app import command
from sde_cli.errors import CLIError
from sde_cli.flags import DATA_DIR_HELP, flag
from sde_cli.folders import workdir_lock


# --reference NAME/SPLIT: a dataset of training.data at its native size and channels.
DATASETS = {"mnist": (28, 1), "cifar10": (32, 3)}


def reference_images(args):
    """The reference images: a split name of the digits, a dataset split (cifar10/train,
    mnist/test, read by `training.data`), or a folder / .npz file."""
    src = args.reference
    if src in ("train", "test", "all"):
        from evaluation.digits_features import digits_images
        return digits_images(src)[0], f"digits/{src}"
    name, _, split = src.lower().partition("/")
    if name in DATASETS and split in ("train", "test") and not os.path.exists(src):
        from ml_collections import ConfigDict
        from training.data import load_dataset
        size, channels = DATASETS[name]
        config = ConfigDict({"data": {"dataset": name.upper(), "image_size": size,
                                      "num_channels": channels, "centered": False}})
        return load_dataset(config, split, data_dir=args.data_dir), f"{name}/{split}"
    if not os.path.exists(src):
        raise CLIError(f"--reference {src!r}: not a split of the digits (train, test, all), a "
                       f"dataset split ({', '.join(f'{d}/train' for d in DATASETS)}, .../test) "
                       f"nor an existing folder or .npz file")
    return src, os.path.abspath(src)


def add_arguments(parser):
    from evaluation.inception import WEIGHTS_ENV, WEIGHTS_FILE
    from evaluation.reference import EXTRACTORS
    flag(parser, "stats", required=True, help="reference statistics file (.npz): written by "
         "--reference when absent, read by --samples")
    flag(parser, "reference", help="images the statistics are of: train, test or all (the "
         "built-in digits), cifar10/train, cifar10/test, mnist/train, mnist/test (read from "
         "--data-dir, downloaded when absent), or a folder of images / an .npz file")
    flag(parser, "data-dir", help=DATA_DIR_HELP)
    flag(parser, "samples", help="samples to score: a folder of shards (sample --seeds), an "
         ".npz file or a folder of images")
    flag(parser, "extractor", default="digits", choices=sorted(EXTRACTORS),
         help="feature extractor: digits (the offline digits classifier) or inception (the FID "
         "Inception-v3, torch-fidelity's weights file, no torchvision needed)")
    flag(parser, "inception-weights", metavar="PATH", help="--extractor inception: the weights "
         f"file {WEIGHTS_FILE} (default ${WEIGHTS_ENV}, else torch hub's cache)")
    flag(parser, "device", default="cpu", help="where the features are computed: cpu, cuda "
         "(under torchrun: cuda:LOCAL_RANK), cuda:1, ...")
    flag(parser, "out", help="also write the scores to this JSON file (a new file, or one "
         "metrics wrote)")
    flag(parser, "debug", action="store_true", help="show the traceback of an error")


@command("metrics", "FID, KID, classifier score, precision and recall of samples against "
         "reference statistics computed once.",
         add_arguments)
def run(args):
    from evaluation.reference import (as_uint8_nchw, data_checksum, get_extractor,
                                      load_statistics, reference_statistics, save_statistics,
                                      score_samples)
    from training.distributed import cleanup_distributed, init_distributed
    if not (args.reference or args.samples):
        raise CLIError("nothing to do: give --reference (to compute --stats) and/or --samples "
                       "(to score them against --stats)")
    if args.samples and not os.path.exists(args.samples):
        raise CLIError(f"--samples {args.samples!r} does not exist")
    if not args.reference and not os.path.isfile(args.stats):
        raise CLIError(f"--stats {args.stats!r} does not exist; compute it first with --reference")
    if args.out:
        from sde_cli.outputs import check_result_file
        check_result_file(args.out, "--out", "metrics")
    info = init_distributed(device=args.device, backend="gloo")  # the gather is of CPU tensors
    try:
        extractor = get_extractor(args.extractor, weights=args.inception_weights,
                                  device=info.device)
        stats = None
        if args.reference:
            images, source = reference_images(args)
            if os.path.isfile(args.stats):
                stats = load_statistics(args.stats)
                checksum = data_checksum(as_uint8_nchw(images))
                if stats["provenance"].get("data_sha256") != checksum:
                    raise CLIError(f"{args.stats} holds statistics of other images (data SHA-256 "
                                   f"{stats['provenance'].get('data_sha256')} -> {checksum}); "
                                   f"give another --stats")
                if info.is_main:
                    print(f"reference statistics reused: {args.stats}")
            else:
                stats = reference_statistics(images, extractor, source=source, info=info)
                if info.is_main:
                    folder = os.path.dirname(os.path.abspath(args.stats))
                    args.lock = workdir_lock(folder, what="sde_lib.run metrics", args=args)
                    save_statistics(args.stats, stats)
                    print(f"reference statistics of {stats['provenance']['count']} images "
                          f"({source}, {args.extractor}): {os.path.abspath(args.stats)}")
        if args.samples:
            if not args.reference:  # computed or checked above otherwise (on every rank)
                stats = load_statistics(args.stats)
            result = score_samples(args.samples, stats, extractor, info=info)
            result["command"] = "metrics"
            result["samples"] = os.path.abspath(args.samples)
            result["stats"] = os.path.abspath(args.stats)
            if info.is_main:
                print(f"{result['num_samples']} samples against {result['reference']['count']} "
                      f"reference images ({args.extractor}): FID {result['fid']:.4f}, KID "
                      f"{result['kid_mean']:.4g}, classifier score "
                      f"{result['classifier_score']:.4f} ({result['classifier_score_splits']} "
                      f"splits: {result['classifier_score_mean']:.4f} +- "
                      f"{result['classifier_score_std']:.4f}), precision {result['precision']:.4f}, "
                      f"recall {result['recall']:.4f} (k = {result['k']})")
                if args.out:
                    from sde_base.fileio import write_json
                    write_json(args.out, result, default=str)
                    print(f"written: {os.path.abspath(args.out)}")
    finally:
        cleanup_distributed()
    return 0
