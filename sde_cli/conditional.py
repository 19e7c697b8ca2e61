"""``python -m sde_lib.run conditional``: class-conditional sampling with a noise-conditional
classifier (trained first with --train-steps). Writes <stem>_before.png (unguided samples),
<stem>_after.png (classifier-guided samples, same seed) and <stem>.json."""

import os
import time

import torch

from sde_cli.app import command
from sde_cli.inpaint import setup, write_grids
from sde_cli.errors import CLIError
from sde_cli.flags import add_run_flags, add_sampler_flags, flag, positive_float, positive_int
from sde_cli.outputs import free_stem
from sde_cli.sample import add_source_flags


def parse_labels(text, n, num_classes):
    """'3' -> [3]*n; '0,1,2' -> 0,1,2,0,1,2,... (n of them); each in [0, num_classes)."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip() != ""]
    except ValueError:
        raise CLIError(f"--labels must be integers separated by commas, got {text!r}") from None
    if not values:
        raise CLIError("--labels is empty")
    bad = [v for v in values if not 0 <= v < num_classes]
    if bad:
        raise CLIError(f"--labels {bad} out of range [0, {num_classes - 1}] "
                       f"({num_classes} classes)")
    return torch.tensor([values[i % len(values)] for i in range(n)])


def train_classifier(args, config, sde, device):
    """Train a noise-conditional classifier on the config's training split; save it."""
    from networks.classifier import save_classifier
    from training.classifier import classifier_accuracy, train_classifier as fit
    from training.data import get_data_scaler, load_dataset
    ds = load_dataset(config, "train", data_dir=args.data_dir)
    images, labels = ds.get_batch(torch.arange(len(ds)))
    parse_labels(args.labels, args.num_samples, int(labels.max()) + 1)  # before the training
    images = get_data_scaler(config)(images)
    g = torch.Generator().manual_seed(int(config.seed))
    t0 = time.time()
    model, hist = fit(sde, images, labels, steps=args.train_steps, batch_size=args.train_batch,
                      lr=args.train_lr, width=args.width, generator=g, device=device,
                      progress=args.progress)
    k = min(len(images), 1000)
    acc = classifier_accuracy(model.cpu(), sde, images[:k], labels[:k], 0.05, generator=g)
    extra = {"dataset": str(config.data.dataset), "steps": int(args.train_steps),
             "final_loss": hist["loss"][-1], "train_accuracy_t0.05": acc,
             "seconds": time.time() - t0, "centered": bool(config.data.centered)}
    save_classifier(args.classifier, model, sde, extra=extra)
    print(f"trained classifier ({args.train_steps} steps, {extra['seconds']:.1f}s, final loss "
          f"{extra['final_loss']:.3f}, accuracy at t=0.05 {acc:.3f}): {args.classifier}")


def add_arguments(parser):
    add_run_flags(parser)
    add_sampler_flags(parser, n_default=16)
    add_source_flags(parser, diffusers=False)
    flag(parser, "classifier", required=True, help="noise-conditional classifier file "
         "(networks.classifier format)")
    flag(parser, "labels", required=True,
         help="class of every sample ('3'), or a comma list cycled ('0,1,2')")
    flag(parser, "scale", type=positive_float, default=1.0, help="classifier guidance weight")
    flag(parser, "train-steps", type=positive_int,
         help="first train a classifier for this many steps and save it to --classifier")
    flag(parser, "train-batch", type=positive_int, default=128, help="classifier batch size")
    flag(parser, "train-lr", type=positive_float, default=2e-3, help="classifier learning rate")
    flag(parser, "width", type=positive_int, default=64, help="classifier width")
    flag(parser, "out", help="output folder (default <workdir>/controllable)")
    flag(parser, "stem", help="output file stem (default conditional_<sampler>_seed<seed>, "
         "numbered rather than overwriting)")


@command("conditional", "Class-conditional sampling with a noise-conditional classifier (trained "
         "first with --train-steps): <stem>_before.png (unguided), <stem>_after.png "
         "(guided), <stem>.json.",
         add_arguments)
def run(args):
    import solvers
    from networks.classifier import classifier_logits, load_classifier, sde_description
    from training.data import get_data_inverse_scaler
    if not args.train_steps and not os.path.isfile(args.classifier):
        raise CLIError(f"classifier {args.classifier!r} does not exist (pass --train-steps N "
                       f"to train one)")
    if args.train_steps and os.path.lexists(args.classifier):
        try:  # replace only a classifier the toolkit wrote
            load_classifier(args.classifier, map_location="cpu")
        except (OSError, ValueError) as e:
            raise CLIError(f"--classifier {args.classifier}: the file exists and is not a "
                           f"classifier this toolkit wrote ({e}); --train-steps would replace "
                           f"it: choose another path") from None
    source, config, sde, score_fn, device, opts, out, seed = setup(args)
    if args.train_steps:
        train_classifier(args, config, sde, device)
    clf, clf_sde, clf_extra = load_classifier(args.classifier, map_location="cpu")
    if sde_description(clf_sde) != sde_description(sde):
        raise CLIError(f"the classifier was trained with SDE {sde_description(clf_sde)} but the "
                       f"score model uses {sde_description(sde)}")
    clf = clf.to(device)
    shape = (args.num_samples, int(config.data.num_channels), int(config.data.image_size),
             int(config.data.image_size))
    if list(shape[1:]) != list(clf.event_shape):
        raise CLIError(f"the classifier takes inputs {list(clf.event_shape)}, the model's "
                       f"samples are {list(shape[1:])}")
    labels = parse_labels(args.labels, shape[0], clf.num_classes).to(device)
    inverse = get_data_inverse_scaler(config)
    t0 = time.time()
    g = torch.Generator(device=device).manual_seed(seed)
    plain = solvers.sample(score_fn, sde, shape, generator=g, device=device,
                           batch_size=args.sample_batch, progress=args.progress, **opts)
    g = torch.Generator(device=device).manual_seed(seed)
    res = solvers.class_conditional(score_fn, sde, shape, solvers.classifier_grad_fn(clf, sde),
                                    labels, scale=args.scale, generator=g, device=device,
                                    batch_size=args.sample_batch, progress=args.progress, **opts)
    seconds = time.time() - t0
    t_low = torch.full((shape[0],), float(sde.sampling_eps), device=device)

    @torch.no_grad()
    def hit(x):
        """Fraction of samples the classifier (at the last sampling time) puts in their label."""
        return float((classifier_logits(clf, sde, x, t_low).argmax(1) == labels).float().mean())

    info = {"command": "conditional", "checkpoint": source, "classifier": args.classifier,
            "classifier_info": clf_extra, "labels": labels.tolist(), "scale": args.scale,
            "nfe": res.nfe, "seconds": seconds, "seed": seed, "options": dict(res.info),
            "classifier_agrees_unguided": hit(plain.samples),
            "classifier_agrees_guided": hit(res.samples)}
    stem = free_stem(out, args.stem or f"conditional_{opts['sampler']}_seed{seed}".replace(
        "+", "p"))
    paths = write_grids(out, stem, {"before": inverse(plain.samples),
                                    "after": inverse(res.samples)}, info)
    print(f"conditional: {shape[0]} samples of labels {args.labels} (scale {args.scale}), "
          f"{res.nfe} NFE, {seconds:.1f}s; the classifier agrees with the asked label on "
          f"{info['classifier_agrees_unguided']:.2f} unguided -> "
          f"{info['classifier_agrees_guided']:.2f} guided; {paths['after']} (also "
          f"{paths['before']}, {paths['json']})")
    return 0
