"""The jobs behind ``python -m sde_lib.run``: main (train then sample), train, sample, eval,
likelihood. Each is a `sde_lib.run.Command`; configs are read here, at the edge."""

import json
import math
import os
import platform
import re
import time

import torch

from sde_lib.run import SDE_NAMES, Command, add_common_arguments, add_sampler_arguments

BUILTIN = "builtin/digits_{sde}"


# ----------------------------------------------------------------------------- config

def config_name(args):
    return args.config or BUILTIN.format(sde=_short_sde(args.sde or "ve"))


def _short_sde(name):
    return {"vesde": "ve", "vpsde": "vp", "subvpsde": "subvp"}.get(SDE_NAMES[name], name)


def load_run_config(args):
    """The config of `args`: --config (or the built-in digits config of --sde), then --sde,
    --sampler and --seed, then the --config.x.y=value overrides, then --quick."""
    import configs
    name = config_name(args)
    overrides = list(getattr(args, "config_overrides", []) or [])
    config = configs.load_config(name)
    if args.sde:
        config.training.sde = SDE_NAMES[args.sde]
    if getattr(args, "sampler", None):
        config.sampling.method = args.sampler
    if args.seed is not None:
        config.seed = args.seed
    if overrides:
        config = configs.load_config(config, overrides)
    if args.quick:
        quick(config)
    return config


def quick(config):
    """Shrink a config to a seconds-long smoke run (CLI --quick)."""
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


def _device(args, config=None):
    """--device, else config.device ('auto': cuda when available, else cpu)."""
    name = args.device or (config.get("device", "auto") if config is not None else "auto")
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _write_json(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _environment(device):
    return {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count()}


# ----------------------------------------------------------------------------- sampling

def _sampler_overrides(args):
    return {"predictor": args.predictor, "corrector": args.corrector, "steps": args.steps,
            "snr": args.snr, "n_corrector_steps": args.n_corrector_steps, "eps": args.eps,
            "denoise": args.denoise}


def sample_images(model, sde, config, n, *, seed, device, batch=None, progress=False, **overrides):
    """n samples in [0, 1] (drawn `batch` at a time, one generator), the NFE of one sample,
    and the options used."""
    from training.sampling import draw_samples
    g = torch.Generator(device=device).manual_seed(int(seed))
    images, nfe, opts = draw_samples(model, sde, config, n, generator=g, device=device,
                                     progress=progress, batch_size=batch, **overrides)
    return images.cpu(), nfe, opts


def write_samples(images, out_dir, stem="samples"):
    """<out_dir>/<stem>.png (grid, small images smoothly upscaled for reading),
    <stem>_pixels.png (the same grid with the exact pixels as blocks) and <stem>.npz
    ('samples': uint8 [N, H, W, C], as the original writes them). Returns (png, npz)."""
    from training.images import save_grid, save_npz, to_uint8
    nrow = int(math.ceil(math.sqrt(len(images))))
    png = save_grid(images, os.path.join(out_dir, f"{stem}.png"), nrow=nrow)
    if images.shape[-1] < 32:
        save_grid(images, os.path.join(out_dir, f"{stem}_pixels.png"), nrow=nrow,
                  resample="nearest")
    npz = save_npz(os.path.join(out_dir, f"{stem}.npz"), samples=to_uint8(images))
    return png, npz


def nearest_neighbour_distance(samples, reference):
    """Mean Euclidean distance from each sample to its nearest reference image (a quick check
    that samples lie near the data, and are not copies when compared with test images)."""
    a = samples.reshape(len(samples), -1).double()
    b = reference.reshape(len(reference), -1).double()
    return torch.cdist(a, b).min(1).values.mean().item()


# ----------------------------------------------------------------------------- main job

def run_main(args):
    """Train on the built-in default (or --config), then sample: PNG grid + JSON summary."""
    from training.train import ema_weights, train
    t0, c0 = time.time(), time.process_time()
    config = load_run_config(args)
    workdir = default_workdir(args)
    device = _device(args, config)
    print(f"config {config_name(args)} (sde {config.training.sde}, model {config.model.name}); "
          f"workdir {workdir}; device {device}")
    result = train(config, workdir, device=device, data_dir=args.data_dir, progress=args.progress)
    if result["status"] != "done":
        print(f"training {result['status']} at step {result['step']}; rerun to resume")
        return 1
    if result["start_step"] == result["step"]:
        print(f"{workdir} is already trained to step {result['step']}: sampling only "
              f"(a fresh --workdir trains anew)")
    model, ema, sde = result["model"], result["ema"], result["sde"]
    t1, c1 = time.time(), time.process_time()
    with ema_weights(model, ema):
        images, nfe, opts = sample_images(model, sde, config, args.num_samples,
                                          seed=config.seed, device=device,
                                          batch=args.sample_batch, progress=args.progress,
                                          **_sampler_overrides(args))
    t2, c2 = time.time(), time.process_time()
    png, npz = write_samples(images, workdir)
    summary = {
        "command": "main", "config": config_name(args), "workdir": workdir,
        "sde": str(config.training.sde), "model": str(config.model.name),
        "data": {"dataset": str(config.data.dataset), "image_size": int(config.data.image_size)},
        "train": {k: result[k] for k in ("step", "start_step", "final_loss", "train_seconds",
                                          "train_cpu_seconds", "steps_per_sec", "world_size")},
        "sample": {"num_samples": len(images), "nfe": nfe, "seconds": t2 - t1,
                   "cpu_seconds": c2 - c1, "options": opts, "seed": int(config.seed)},
        "png": png, "npz": npz, "checkpoint": result["checkpoint"],
        "total_seconds": time.time() - t0, "total_cpu_seconds": time.process_time() - c0,
        "environment": _environment(device),
    }
    summary["sample"].update(_quality(images, config, args))
    if args.metrics:
        summary["sample"].update(_sample_metrics(images, config, args))
    path = _write_json(os.path.join(workdir, "summary.json"), summary)
    print(f"samples: {png}\nsummary: {path}")
    print(f"trained {result['step']} steps in {result['train_seconds']:.1f}s "
          f"(final loss {result['final_loss']:.4g}); sampled {len(images)} images with "
          f"{opts['sampler']} ({nfe} NFE) in {t2 - t1:.1f}s; total {summary['total_seconds']:.1f}s")
    return 0


def _quality(images, config, args):
    """Nearest-neighbour distances of the samples to the training set, next to those of the
    held-out test images (a sample far from every training image is not a digit)."""
    if str(config.data.dataset).upper() != "DIGITS":
        return {}
    from training.data import load_dataset
    train_x = load_dataset(config, "train", data_dir=args.data_dir).images
    test_x = load_dataset(config, "test", data_dir=args.data_dir).images
    return {"nn_distance_to_train": nearest_neighbour_distance(images, train_x),
            "nn_distance_test_to_train": nearest_neighbour_distance(test_x, train_x)}


def _add_metrics_argument(parser):
    parser.add_argument("--metrics", action="store_true",
                        help="also compute sample-quality metrics (DIGITS: the offline digits "
                        "classifier's FID/KID/score, evaluation.digits_features; otherwise "
                        "FID/IS/KID through torch-fidelity when installed)")


def _add_main_arguments(parser):
    add_common_arguments(parser)
    add_sampler_arguments(parser)
    _add_metrics_argument(parser)


MAIN = Command("Train a small score model on the built-in offline default, then sample it "
               "(PNG grid + JSON summary in the workdir).", _add_main_arguments, run_main)


# ----------------------------------------------------------------------------- train

def run_train(args):
    from training.train import train
    config = load_run_config(args)
    workdir = default_workdir(args)
    device = args.device or config.get("device", "auto")
    result = train(config, workdir, device=None if device == "auto" else device,
                   data_dir=args.data_dir,
                   progress=args.progress, stop_after=args.stop_after)
    from training.distributed import cleanup_distributed
    cleanup_distributed()
    if result["world_size"] == 1 or int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in result.items() if k not in ("model", "ema", "sde")},
                         default=str))
    return 0 if result["status"] in ("done", "stopped") else 1


def _add_train_arguments(parser):
    add_common_arguments(parser)
    parser.add_argument("--stop_after", "--stop-after", type=int, dest="stop_after",
                        help="stop (resumably) after this many steps of this call")


TRAIN = Command("Train a score model, resuming from <workdir>/checkpoints-meta when present. "
                "Several processes: torchrun --nproc_per_node=K -m sde_lib.run train ...",
                _add_train_arguments, run_train)


# ----------------------------------------------------------------------------- sample

def _checkpoint_and_config(args):
    """(checkpoint path, config): --checkpoint or the workdir's latest; the config from
    --config/--sde, else the one stored in a toolkit checkpoint."""
    from training.checkpoints import latest_checkpoint
    path = args.checkpoint
    if path is None:
        workdir = default_workdir(args)
        path = latest_checkpoint(workdir)
        if path is None:
            raise SystemExit(f"error: no checkpoint in {workdir} (looked for checkpoints-meta/"
                             f"checkpoint.pth and checkpoints/checkpoint_*.pth); train first or "
                             f"pass --checkpoint")
    elif not os.path.isfile(path):
        raise SystemExit(f"error: checkpoint {path!r} does not exist")
    return path, config_for_checkpoint(args, path)


def config_for_checkpoint(args, path):
    """--config/--sde when given, else the config stored in the (toolkit) checkpoint, with
    --sampler, --seed, the --config.x.y overrides and --quick applied."""
    if args.config or args.sde:
        return load_run_config(args)
    stored = stored_config(path)
    if stored is None:
        raise SystemExit(f"error: {path} holds no config (an original score_sde_pytorch "
                         f"checkpoint?); pass --config")
    if getattr(args, "sampler", None):
        stored.sampling.method = args.sampler
    if args.seed is not None:
        stored.seed = args.seed
    if args.config_overrides:
        import configs
        stored = configs.load_config(stored, args.config_overrides)
    if args.quick:
        quick(stored)
    return stored


def stored_config(path):
    """The config saved in a toolkit checkpoint, or None (original checkpoints)."""
    from networks import read_checkpoint
    from networks.checkpoint import stored_config as from_checkpoint
    return from_checkpoint(read_checkpoint(path))


def run_sample(args):
    from sde_lib import get_sde
    from training.checkpoints import load_for_sampling
    path, config = _checkpoint_and_config(args)
    device = _device(args, config)
    model = load_for_sampling(path, config, device=device)
    sde = get_sde(config)
    t0 = time.time()
    images, nfe, opts = sample_images(model, sde, config, args.num_samples,
                                      seed=config.seed if args.seed is None else args.seed,
                                      device=device, batch=args.sample_batch,
                                      progress=args.progress, **_sampler_overrides(args))
    seconds = time.time() - t0
    out_dir = args.out or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))),
                                       "samples")
    stem = args.stem or f"{opts['sampler']}_{int(time.time())}"
    png, npz = write_samples(images, out_dir, stem)
    info = {"command": "sample", "checkpoint": path, "sde": str(config.training.sde),
            "num_samples": len(images), "nfe": nfe, "seconds": seconds, "options": opts,
            "seed": int(config.seed if args.seed is None else args.seed),
            "png": png, "npz": npz, "environment": _environment(device)}
    if args.metrics:
        info.update(_sample_metrics(images, config, args))
    _write_json(os.path.join(out_dir, f"{stem}.json"), info)
    print(f"{len(images)} samples ({opts['sampler']}, {nfe} NFE, {seconds:.1f}s): {png}, {npz}")
    return 0


def _add_sample_arguments(parser):
    add_common_arguments(parser)
    add_sampler_arguments(parser)
    _add_metrics_argument(parser)
    parser.add_argument("--checkpoint", help="checkpoint file (toolkit or original "
                        "score_sde_pytorch .pth); default: the workdir's latest")
    parser.add_argument("--out", help="output folder (default <workdir>/samples)")
    parser.add_argument("--stem", help="output file name stem (default <sampler>_<time>)")


SAMPLE = Command("Sample a checkpoint: <out>/<stem>.png grid, .npz (uint8 [N, H, W, C]) and .json.",
                 _add_sample_arguments, run_sample)


# ----------------------------------------------------------------------------- eval

def _eval_checkpoints(args):
    """{name: path}: --checkpoint, else the workdir's checkpoint_k.pth with begin_ckpt <= k <=
    end_ckpt of config.eval (the config of --config, or of the latest checkpoint)."""
    from training.checkpoints import latest_checkpoint, periodic_checkpoints
    if args.checkpoint:
        if not os.path.isfile(args.checkpoint):
            raise SystemExit(f"error: checkpoint {args.checkpoint!r} does not exist")
        return {os.path.basename(args.checkpoint).rsplit(".", 1)[0]: args.checkpoint}
    workdir = default_workdir(args)
    found = periodic_checkpoints(workdir)
    if not found:
        raise SystemExit(f"error: no checkpoints/checkpoint_k.pth in {workdir}; train first or "
                         f"pass --checkpoint")
    config = config_for_checkpoint(args, latest_checkpoint(workdir))
    lo, hi = int(config.eval.get("begin_ckpt", 1)), int(config.eval.get("end_ckpt", 10 ** 9))
    chosen = {f"ckpt_{k}": p for k, p in found.items() if lo <= k <= hi}
    if not chosen:
        raise SystemExit(f"error: no checkpoints checkpoint_k.pth with {lo} <= k <= {hi} in "
                         f"{workdir}/checkpoints (found {sorted(found) or 'none'}); set "
                         f"--config.eval.begin_ckpt/end_ckpt or pass --checkpoint")
    return chosen


@torch.no_grad()
def dataset_loss(model, loss_fn, config, dataset, *, batch_size, seed, device, limit=None):
    """Per-batch losses of `model` over a dataset split (fixed seed: same noise every time)."""
    from training.pipeline import augment, get_images
    g = torch.Generator(device=device).manual_seed(int(seed))
    n = len(dataset) if limit is None else min(limit, len(dataset))
    losses = []
    model.eval()
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        x, _ = get_images(dataset, idx)
        x = augment(x.to(device), config, generator=g)
        noise = loss_fn.draw(x.shape, generator=g, device=device, dtype=x.dtype)
        losses.append(loss_fn(model, x, noise).item())
    return losses


def run_eval(args):
    import numpy as np
    from sde_lib import get_sde
    from training.checkpoints import load_for_sampling
    from training.data import load_dataset
    from training.images import save_npz, to_uint8
    from training.losses import get_loss_fn
    device = _device(args)
    eval_dir = os.path.join(default_workdir(args), args.eval_folder)
    reports = {}
    for name, path in _eval_checkpoints(args).items():
        config = config_for_checkpoint(args, path)
        sde = get_sde(config)
        loss_fn = get_loss_fn(config, sde)
        model = load_for_sampling(path, config, device=device)
        report = {"checkpoint": path}
        if config.eval.get("enable_loss", True):
            ds = load_dataset(config, "test", data_dir=args.data_dir)
            losses = dataset_loss(model, loss_fn, config, ds,
                                  batch_size=int(config.eval.batch_size), seed=config.seed,
                                  device=device, limit=args.num_images)
            save_npz(os.path.join(eval_dir, f"{name}_loss.npz"), all_losses=np.asarray(losses),
                     mean_loss=np.mean(losses))
            report["eval_loss"] = float(np.mean(losses))
        if config.eval.get("enable_bpd", False):
            split = str(config.eval.get("bpd_dataset", "test")).lower()
            report.update(_bits_per_dim(model, sde, config, args, device, split,
                                        os.path.join(eval_dir, f"{name}_bpd_{split}.jsonl")))
        if config.eval.get("enable_sampling", False):
            n = args.num_samples or int(config.eval.num_samples)
            images, nfe, opts = sample_images(model, sde, config, n, seed=config.seed,
                                              device=device, batch=int(config.eval.batch_size),
                                              progress=args.progress, **_sampler_overrides(args))
            save_npz(os.path.join(eval_dir, name, "samples_0.npz"), samples=to_uint8(images))
            report.update({"num_samples": n, "nfe": nfe, "sampler": opts})
            report.update(_sample_metrics(images, config, args))
        _write_json(os.path.join(eval_dir, f"report_{name}.json"), report)
        reports[name] = report
        print(json.dumps({name: report}, default=str))
    return 0


def _sample_metrics(images, config, args):
    """Sample-quality metrics from `evaluation.metrics` where available (digits: the offline
    classifier features; otherwise FID/IS/KID through torch-fidelity if installed)."""
    try:
        if str(config.data.dataset).upper() == "DIGITS":
            from evaluation.digits_features import digits_metrics
            return {"metrics": digits_metrics(images)}
        from training.data import load_dataset
        from evaluation.metrics import fidelity_metrics
        ref = load_dataset(config, "train", data_dir=args.data_dir)
        return {"metrics": fidelity_metrics(images, ref)}
    except (ImportError, RuntimeError, ValueError, OSError) as e:  # optional: say why missing
        return {"metrics_error": f"{type(e).__name__}: {e}"}


def _add_eval_arguments(parser):
    add_common_arguments(parser)
    add_sampler_arguments(parser, n_default=None)
    parser.add_argument("--checkpoint", help="evaluate this file only (default: the workdir's "
                        "checkpoints_k with config.eval.begin_ckpt <= k <= end_ckpt)")
    parser.add_argument("--eval_folder", "--eval-folder", default="eval", dest="eval_folder")
    parser.add_argument("--num_images", "--num-images", type=int, dest="num_images",
                        help="use only the first images of the split (loss and bits/dim)")


EVAL = Command("Evaluate checkpoints: test loss (EMA weights), and bits/dim and samples when "
               "config.eval.enable_bpd / enable_sampling say so; reports in <workdir>/eval.",
               _add_eval_arguments, run_eval)


# ----------------------------------------------------------------------------- likelihood

def _bits_per_dim(model, sde, config, args, device, split, out):
    """Bits/dim of a split with `likelihood.evaluate.evaluate_split` (resumable JSONL records in
    `out`); the pixel levels come from the dataset (256 for 8-bit data, 17 for DIGITS)."""
    from likelihood.evaluate import evaluate_split
    from networks import get_score_fn
    from training.data import get_data_scaler, load_dataset
    ds = load_dataset(config, split, data_dir=args.data_dir)
    levels = getattr(ds, "levels", None)
    if levels is None:
        raise SystemExit(f"error: the pixel levels of {config.data.dataset} are unknown (float "
                         f"data?); bits/dim needs discrete pixel values")
    n = len(ds) if args.num_images is None else min(args.num_images, len(ds))
    batch = min(int(getattr(args, "batch", None) or config.eval.batch_size), n)
    scaler = get_data_scaler(config)
    data_range = (float(scaler(torch.tensor(0.0))), float(scaler(torch.tensor(1.0))))
    model.requires_grad_(False)
    score_fn = get_score_fn(sde, model, continuous=bool(config.training.get("continuous", True)))
    eps = sde.likelihood_eps if getattr(args, "eps", None) is None else args.eps
    estimator = getattr(args, "estimator", "rademacher")
    n_probes = int(getattr(args, "n_probes", 1))
    rtol, atol = float(getattr(args, "rtol", 1e-5)), float(getattr(args, "atol", 1e-5))
    settings = {"split": split, "batch_size": batch, "seed": int(config.seed), "eps": eps,
                "estimator": estimator, "n_probes": n_probes, "levels": levels,
                "data_range": list(data_range), "rtol": rtol, "atol": atol}
    summary = evaluate_split(score_fn, sde, ds, data_range=data_range, batch_size=batch, out=out,
                             seed=int(config.seed), settings=settings,
                             num_batches=math.ceil(n / batch), device=device,
                             progress=args.progress, levels=levels, estimator=estimator,
                             n_probes=n_probes, rtol=rtol, atol=atol, eps=eps)
    return {f"bpd_{k}" if not k.startswith("bpd") else k: v for k, v in summary.items()} | {
        "bpd_split": split, "bpd_eps": eps, "bpd_levels": levels, "bpd_records": out}


def run_likelihood(args):
    from sde_lib import get_sde
    from training.checkpoints import load_for_sampling
    path, config = _checkpoint_and_config(args)
    device = _device(args, config)
    model = load_for_sampling(path, config, device=device)
    out_dir = args.out or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))),
                                       "eval")
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"bpd_{args.split}")
    t0 = time.time()
    res = _bits_per_dim(model, get_sde(config), config, args, device, args.split, stem + ".jsonl")
    res.update(checkpoint=path, seconds=time.time() - t0, sde=str(config.training.sde))
    _write_json(stem + ".json", res)
    print(f"bits/dim on {res['bpd_num_images']} {args.split} images: {res['bpd']:.4f} "
          f"+- {res['bpd_stderr']:.4f} (eps {res['bpd_eps']:g}; {stem}.json)")
    return 0


def _add_likelihood_arguments(parser):
    add_common_arguments(parser)
    parser.add_argument("--checkpoint", help="checkpoint file; default: the workdir's latest")
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument("--num_images", "--num-images", type=int, dest="num_images",
                        default=None, help="evaluate the first N images only")
    parser.add_argument("--batch", type=int,
                        help="images per batch (default config.eval.batch_size)")
    parser.add_argument("--estimator", default="rademacher",
                        help="divergence estimator: rademacher, gaussian or exact")
    parser.add_argument("--n_probes", "--n-probes", type=int, default=1, dest="n_probes",
                        help="Hutchinson probes per image")
    parser.add_argument("--eps", type=float,
                        help="ODE start time (default the SDE's likelihood_eps)")
    parser.add_argument("--rtol", type=float, default=1e-5, help="ODE solver rtol (1e-5)")
    parser.add_argument("--atol", type=float, default=1e-5, help="ODE solver atol (1e-5)")
    parser.add_argument("--out", help="output folder (default <workdir>/eval): bpd_<split>.jsonl "
                        "(per batch, resumable) and bpd_<split>.json")
    parser.set_defaults(sampler=None)


LIKELIHOOD = Command("Bits/dim of a data split under a checkpoint (probability-flow ODE).",
                     _add_likelihood_arguments, run_likelihood)
