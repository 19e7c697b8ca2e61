"""Command line for controllable generation: ``python -m sde_lib.run inpaint|colorize|conditional``
(also ``python -m sde_lib.controllable COMMAND ...``).

    inpaint      --checkpoint CKPT [--mask center|left|right|top|bottom|random] [--method ...]
    colorize     --checkpoint CKPT                      (RGB configs: data.num_channels = 3)
    conditional  --checkpoint CKPT --classifier CLF --labels 3 [--scale 1] [--train-steps N]

Each takes the first -n images of the --split (default test) of the config's dataset (inpaint,
colorize) and writes <out>/<stem>_original.png, <stem>_before.png (what the sampler is given:
masked images with the unknown pixels grey, or the grey images), <stem>_after.png (the result)
and <stem>.json (settings, NFE, errors on the observed part). `conditional` writes
<stem>_before.png (unguided samples) and <stem>_after.png (classifier-guided samples, same seed);
with --train-steps it first trains a noise-conditional classifier on the config's training split
and saves it to --classifier. Config, sampler and device options are those of ``sample``.
"""

import argparse
import json
import math
import os
import sys
import time

import torch

from sde_lib.run import (Command, add_common_arguments, add_sampler_arguments,
                         split_config_overrides)

MASKS = ("center", "left", "right", "top", "bottom", "random")


def make_mask(kind, shape, generator=None, fraction=0.5):
    """A 0/1 mask [B, 1, H, W] (1 = known) of `kind` for images of `shape` [B, C, H, W]:
    'center' hides the central half-size square, 'left'/'right'/'top'/'bottom' hide that half,
    'random' hides each pixel with probability `fraction`."""
    B, _, H, W = shape
    m = torch.ones(B, 1, H, W)
    if kind == "center":
        m[..., H // 4:H // 4 + (H + 1) // 2, W // 4:W // 4 + (W + 1) // 2] = 0
    elif kind == "left":
        m[..., :, :W // 2] = 0
    elif kind == "right":
        m[..., :, W // 2:] = 0
    elif kind == "top":
        m[..., :H // 2, :] = 0
    elif kind == "bottom":
        m[..., H // 2:, :] = 0
    elif kind == "random":
        if not 0 < fraction < 1:
            raise ValueError(f"--mask-fraction must lie in (0, 1), got {fraction}")
        m = (torch.rand(B, 1, H, W, generator=generator) >= fraction).float()
    else:
        raise ValueError(f"unknown mask {kind!r}; known: {', '.join(MASKS)}")
    return m


def parse_labels(text, n, num_classes):
    """'3' -> [3]*n; '0,1,2' -> 0,1,2,0,1,2,... (n of them); each in [0, num_classes)."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip() != ""]
    except ValueError:
        raise SystemExit(f"error: --labels must be integers separated by commas, got {text!r}")
    if not values:
        raise SystemExit("error: --labels is empty")
    bad = [v for v in values if not 0 <= v < num_classes]
    if bad:
        raise SystemExit(f"error: --labels {bad} out of range [0, {num_classes - 1}] "
                         f"({num_classes} classes)")
    return torch.tensor([values[i % len(values)] for i in range(n)])


# ----------------------------------------------------------------------------- shared

def _setup(args):
    """(config, sde, model, score_fn, device, checkpoint path)."""
    from networks import get_score_fn
    from sde_lib import get_sde
    from training.checkpoints import latest_checkpoint, load_for_sampling
    from training.commands import config_for_checkpoint, default_workdir
    path = args.checkpoint
    if path is None:
        path = latest_checkpoint(default_workdir(args))
        if path is None:
            raise SystemExit(f"error: no checkpoint in {default_workdir(args)}; pass --checkpoint")
    elif not os.path.isfile(path):
        raise SystemExit(f"error: checkpoint {path!r} does not exist")
    config = config_for_checkpoint(args, path)
    name = args.device or config.get("device", "auto")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if name in (None, "auto") else name)
    model = load_for_sampling(path, config, device=device)
    model.requires_grad_(False)
    sde = get_sde(config)
    score_fn = get_score_fn(sde, model, continuous=bool(config.training.get("continuous", True)))
    return config, sde, model, score_fn, device, path


def _sampler_options(args, config):
    from training.sampling import sampling_options
    return sampling_options(config, predictor=args.predictor, corrector=args.corrector,
                            steps=args.steps, snr=args.snr,
                            n_corrector_steps=args.n_corrector_steps, eps=args.eps,
                            denoise=args.denoise)


def _data(args, config, device):
    """The first -n images of the split, in the model's range, and the data (inverse) scaler."""
    from training.data import get_data_inverse_scaler, get_data_scaler, load_dataset
    ds = load_dataset(config, args.split, data_dir=args.data_dir)
    n = min(args.num_samples, len(ds))
    images, _ = ds.get_batch(torch.arange(n))
    return get_data_scaler(config)(images).to(device), get_data_inverse_scaler(config)


def _out(args, path):
    out = args.out or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))),
                                   "controllable")
    return out, args.stem or f"{args.command}_{int(time.time())}"


def _write(out, stem, grids, info):
    from training.images import save_grid
    paths = {}
    for name, images in grids.items():
        n = len(images)
        paths[name] = save_grid(images.clamp(0, 1).cpu(), os.path.join(out, f"{stem}_{name}.png"),
                                nrow=int(math.ceil(math.sqrt(n))))
    info = dict(info, png=paths)
    path = os.path.join(out, f"{stem}.json")
    tmp = f"{path}.tmp{os.getpid()}"
    os.makedirs(out, exist_ok=True)
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)
    return paths, path


def _add_inverse_arguments(parser):
    add_common_arguments(parser)
    add_sampler_arguments(parser, n_default=16)
    parser.add_argument("--checkpoint", help="score model checkpoint (default: the workdir's "
                        "latest)")
    parser.add_argument("--split", default="test", choices=["train", "test"],
                        help="dataset split the images come from (default test)")
    parser.add_argument("--method", choices=["projection", "dps", "pigdm", "tmpd"],
                        help="default: projection (noiseless) or dps (--noise-std > 0)")
    parser.add_argument("--noise-std", "--noise_std", dest="noise_std", type=float, default=0.0,
                        help="std of Gaussian noise added to the observations (model range)")
    parser.add_argument("--init", choices=["marginal", "original", "prior"],
                        help="start x(T) (default marginal for projection, prior otherwise)")
    parser.add_argument("--scale", type=float, default=1.0, help="guidance weight")
    parser.add_argument("--out", help="output folder (default <workdir>/controllable)")
    parser.add_argument("--stem", help="output file stem (default <command>_<time>)")


def _solve(args, kind):
    from solvers.conditional import colorize, inpaint
    config, sde, _, score_fn, device, path = _setup(args)
    if kind == "colorize" and int(config.data.num_channels) != 3:
        raise SystemExit(f"error: colorize needs an RGB model (config.data.num_channels = 3), "
                         f"this one has {config.data.num_channels} channel(s)")
    data, inverse = _data(args, config, device)
    seed = int(config.seed if args.seed is None else args.seed)
    g = torch.Generator(device=device).manual_seed(seed)
    opts = _sampler_options(args, config)
    extra = {"noise_std": args.noise_std, "method": args.method, "init": args.init,
             "scale": args.scale, "batch_size": args.sample_batch, "progress": args.progress}
    extra = {k: v for k, v in extra.items() if v is not None}
    noise = args.noise_std * torch.randn(data.shape, generator=g, device=device)
    t0 = time.time()
    if kind == "inpaint":
        mask = make_mask(args.mask, data.shape, generator=g,
                         fraction=args.mask_fraction).to(device)
        observed = data + noise
        res = inpaint(score_fn, sde, observed, mask, generator=g, device=device, **opts, **extra)
        before = inverse(observed) * mask + 0.5 * (1 - mask)
        obs_err = float(((res.samples - observed) * mask).abs().max())
    else:
        gray = data.mean(1, keepdim=True) + noise[:, :1]
        res = colorize(score_fn, sde, gray, generator=g, device=device, **opts, **extra)
        before = inverse(gray).expand(-1, 3, -1, -1)
        obs_err = float((res.samples.mean(1, keepdim=True) - gray).abs().max())
    seconds = time.time() - t0
    out, stem = _out(args, path)
    info = {"command": kind, "checkpoint": path, "sde": str(config.training.sde),
            "num_images": len(data), "nfe": res.nfe, "seconds": seconds, "seed": seed,
            "options": {k: v for k, v in res.info.items()},
            "max_error_on_observed": obs_err,
            "mse_to_original": float((res.samples - data).pow(2).mean())}
    if kind == "inpaint":
        info["mask"] = args.mask
    paths, js = _write(out, stem, {"original": inverse(data), "before": before,
                                   "after": inverse(res.samples)}, info)
    print(f"{kind}: {len(data)} images, {res.nfe} NFE, {seconds:.1f}s; "
          f"{paths['before']} -> {paths['after']} ({js})")
    return 0


def run_inpaint(args):
    return _solve(args, "inpaint")


def run_colorize(args):
    return _solve(args, "colorize")


def _add_inpaint_arguments(parser):
    _add_inverse_arguments(parser)
    parser.add_argument("--mask", default="center", choices=MASKS,
                        help="which pixels are unknown (default center)")
    parser.add_argument("--mask-fraction", "--mask_fraction", dest="mask_fraction", type=float,
                        default=0.5, help="fraction hidden by --mask random (default 0.5)")


INPAINT = Command("Inpaint the first -n images of a split: <stem>_original/_before/_after.png "
                  "and <stem>.json.", _add_inpaint_arguments, run_inpaint)
COLORIZE = Command("Colorize the grey versions of the first -n images of a split (RGB models): "
                   "<stem>_original/_before/_after.png and <stem>.json.",
                   _add_inverse_arguments, run_colorize)


# ----------------------------------------------------------------------------- conditional

def _train_classifier(args, config, sde, device):
    from solvers.classifier import classifier_accuracy, save_classifier, train_classifier
    from training.data import get_data_scaler, load_dataset
    ds = load_dataset(config, "train", data_dir=args.data_dir)
    images, labels = ds.get_batch(torch.arange(len(ds)))
    images = get_data_scaler(config)(images)
    g = torch.Generator().manual_seed(int(config.seed if args.seed is None else args.seed))
    t0 = time.time()
    model, hist = train_classifier(sde, images, labels, steps=args.train_steps,
                                   batch_size=args.train_batch, lr=args.train_lr,
                                   width=args.width, generator=g, device=device,
                                   progress=args.progress)
    k = min(len(images), 1000)
    acc = classifier_accuracy(model.cpu(), sde, images[:k], labels[:k], 0.05, generator=g)
    extra = {"dataset": str(config.data.dataset), "steps": int(args.train_steps),
             "final_loss": hist["loss"][-1], "train_accuracy_t0.05": acc,
             "seconds": time.time() - t0, "centered": bool(config.data.centered)}
    save_classifier(args.classifier, model, sde, extra=extra)
    print(f"trained classifier ({args.train_steps} steps, {extra['seconds']:.1f}s, final loss "
          f"{extra['final_loss']:.3f}, accuracy at t=0.05 {acc:.3f}): {args.classifier}")


def run_conditional(args):
    import solvers
    from solvers.classifier import (classifier_grad_fn, classifier_logits, load_classifier,
                                    sde_description)
    from solvers.conditional import class_conditional
    from training.data import get_data_inverse_scaler
    config, sde, _, score_fn, device, path = _setup(args)
    if args.train_steps:
        _train_classifier(args, config, sde, device)
    elif not os.path.isfile(args.classifier):
        raise SystemExit(f"error: classifier {args.classifier!r} does not exist (pass "
                         f"--train-steps N to train one)")
    clf, clf_sde, clf_extra = load_classifier(args.classifier, map_location="cpu")
    if sde_description(clf_sde) != sde_description(sde):
        raise SystemExit(f"error: the classifier was trained with SDE {sde_description(clf_sde)} "
                         f"but the score model uses {sde_description(sde)}")
    clf = clf.to(device)
    shape = (args.num_samples, int(config.data.num_channels), int(config.data.image_size),
             int(config.data.image_size))
    if list(shape[1:]) != list(clf.event_shape):
        raise SystemExit(f"error: the classifier takes inputs {list(clf.event_shape)}, the "
                         f"model's samples are {list(shape[1:])}")
    labels = parse_labels(args.labels, shape[0], clf.num_classes).to(device)
    seed = int(config.seed if args.seed is None else args.seed)
    opts = _sampler_options(args, config)
    inverse = get_data_inverse_scaler(config)
    t0 = time.time()
    g = torch.Generator(device=device).manual_seed(seed)
    plain = solvers.sample(score_fn, sde, shape, generator=g, device=device,
                           batch_size=args.sample_batch, progress=args.progress, **opts)
    g = torch.Generator(device=device).manual_seed(seed)
    res = class_conditional(score_fn, sde, shape, classifier_grad_fn(clf, sde), labels,
                            scale=args.scale, generator=g, device=device,
                            batch_size=args.sample_batch, progress=args.progress, **opts)
    seconds = time.time() - t0
    t_low = torch.full((shape[0],), float(sde.sampling_eps), device=device)

    @torch.no_grad()
    def hit(x):
        """Fraction of samples the classifier (at the last sampling time) puts in their label."""
        return float((classifier_logits(clf, sde, x, t_low).argmax(1) == labels).float().mean())

    info = {"command": "conditional", "checkpoint": path, "classifier": args.classifier,
            "classifier_info": clf_extra, "labels": labels.tolist(), "scale": args.scale,
            "nfe": res.nfe, "seconds": seconds, "seed": seed,
            "options": dict(res.info),
            "classifier_agrees_unguided": hit(plain.samples),
            "classifier_agrees_guided": hit(res.samples)}
    out, stem = _out(args, path)
    paths, js = _write(out, stem, {"before": inverse(plain.samples),
                                   "after": inverse(res.samples)}, info)
    print(f"conditional: {shape[0]} samples of labels {args.labels} (scale {args.scale}), "
          f"{res.nfe} NFE, {seconds:.1f}s; the classifier agrees with the asked label on "
          f"{info['classifier_agrees_unguided']:.2f} unguided -> "
          f"{info['classifier_agrees_guided']:.2f} guided; {paths['after']} ({js})")
    return 0


def _add_conditional_arguments(parser):
    add_common_arguments(parser)
    add_sampler_arguments(parser, n_default=16)
    parser.add_argument("--checkpoint", help="score model checkpoint (default: the workdir's "
                        "latest)")
    parser.add_argument("--classifier", required=True,
                        help="noise-conditional classifier file (solvers.classifier)")
    parser.add_argument("--labels", required=True,
                        help="class of every sample ('3'), or a comma list cycled ('0,1,2')")
    parser.add_argument("--scale", type=float, default=1.0, help="classifier guidance weight")
    parser.add_argument("--train-steps", "--train_steps", dest="train_steps", type=int,
                        help="first train a classifier for this many steps and save it to "
                        "--classifier")
    parser.add_argument("--train-batch", "--train_batch", dest="train_batch", type=int,
                        default=128)
    parser.add_argument("--train-lr", "--train_lr", dest="train_lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=64, help="classifier width")
    parser.add_argument("--out", help="output folder (default <workdir>/controllable)")
    parser.add_argument("--stem", help="output file stem (default conditional_<time>)")


CONDITIONAL = Command("Class-conditional sampling with a noise-conditional classifier (trained "
                      "first with --train-steps): <stem>_before.png (unguided), "
                      "<stem>_after.png (guided), <stem>.json.",
                      _add_conditional_arguments, run_conditional)

COMMANDS = {"inpaint": INPAINT, "colorize": COLORIZE, "conditional": CONDITIONAL}


def _run(name, argv):
    cmd = COMMANDS[name]
    argv, overrides = split_config_overrides(list(argv))
    parser = argparse.ArgumentParser(prog=f"python -m sde_lib.run {name}", description=cmd.help)
    cmd.add_arguments(parser)
    args = parser.parse_args(argv)
    args.config_overrides = overrides
    args.command = name
    return int(cmd.run(args) or 0)


def inpaint_main(argv):
    return _run("inpaint", argv)


def colorize_main(argv):
    return _run("colorize", argv)


def conditional_main(argv):
    return _run("conditional", argv)


def main(argv=None):
    """main(['inpaint' | 'colorize' | 'conditional', options...]) -> exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return _run(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
