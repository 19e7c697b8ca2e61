"""Class-conditional sampling (solvers.conditional.class_conditional), noise-conditional
classifiers (networks.classifier, training.classifier) and the inpaint/colorize/conditional
command line.

The two-class Gaussian mixture has an exact time-dependent classifier, the responsibilities
log w_k N_k,t(x) - log p_t(x) of its perturbed components (sde_lib.oracle), so guidance with
scale 1 samples exactly the asked component: its samples must land in that class (>= 95 %) and
have the component's mean and covariance.
"""

import json
import math
import os
from pathlib import Path

import pytest
import torch

from sde_lib import VESDE, VPSDE, oracle, subVPSDE
from networks.classifier import load_classifier, save_classifier
from solvers.conditional import (check_labels, class_conditional, classifier_grad_fn,
                                 mixture_classifier_grad_fn)
from training.classifier import classifier_accuracy, train_classifier

from cases import pc_cases

SDES = {"ve": lambda: VESDE(sigma_min=0.01, sigma_max=10.0), "vp": VPSDE, "subvp": subVPSDE}
# MNIST is not in the repository: tests that need its test split look where training.data does
# ($SCORE_SDE_DATA/mnist, else ./data/mnist) and skip without it.
MNIST = Path(os.environ.get("SCORE_SDE_DATA", "data")) / "mnist"

# unequal weights, so that the unguided sampler would put only 30 % in class 1
MIXTURE = oracle.gaussian_mixture([[-1.5, 0.0], [1.5, 0.0]], [0.25, 0.25], [0.7, 0.3])


def in_class(samples, label):
    return (MIXTURE.component_log_probs(samples).argmax(1) == label).float().mean().item()


@pytest.mark.parametrize("sde_name,options", pc_cases(200) + [
    ("vp", dict(sampler="dpm_solver++", steps=20)),
    ("ve", dict(sampler="heun", steps=18)),
])
def test_exact_classifier_guidance_samples_the_asked_component(sde_name, options):
    sde = SDES[sde_name]()
    grad = mixture_classifier_grad_fn(MIXTURE, sde)
    g = torch.Generator().manual_seed(0)
    n = 800
    for label in (0, 1):
        res = class_conditional(MIXTURE.marginal(sde), sde, (n, 2), grad, labels=label,
                                generator=g, **options)
        assert in_class(res.samples, label) >= 0.95
        x = res.samples.double()
        mean_err = (x.mean(0) - MIXTURE.means[label]).norm().item()
        assert mean_err < 4 * math.sqrt(0.5 / n) + 0.02, mean_err
        cov_err = (torch.cov(x.T) - 0.25 * torch.eye(2, dtype=torch.float64)).norm().item()
        assert cov_err < 4 * math.sqrt((0.5 ** 2 + 2 * 0.25 ** 2) / n) + 0.02, cov_err


def test_mixed_labels_per_sample_and_batch_chunks():
    sde = VPSDE()
    labels = torch.tensor([0, 1] * 150)
    res = class_conditional(MIXTURE.marginal(sde), sde, (300, 2),
                            mixture_classifier_grad_fn(MIXTURE, sde), labels, steps=100,
                            batch_size=128, generator=torch.Generator().manual_seed(1))
    assert res.info["batches"] == 3
    got = MIXTURE.component_log_probs(res.samples).argmax(1)
    assert (got == labels).float().mean() >= 0.95


def test_bad_labels_fail_clearly():
    sde = VPSDE()
    grad = mixture_classifier_grad_fn(MIXTURE, sde)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\], got \[2\]"):
        class_conditional(MIXTURE.marginal(sde), sde, (4, 2), grad, labels=2, steps=2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\], got \[-1\]"):
        class_conditional(MIXTURE.marginal(sde), sde, (4, 2), grad, labels=[0, 1, -1, 0])
    with pytest.raises(ValueError, match="one integer or 4 of them"):
        class_conditional(MIXTURE.marginal(sde), sde, (4, 2), grad, labels=[0, 1])
    with pytest.raises(ValueError, match="labels must be integers"):
        check_labels(torch.tensor([0.5]), 1, 2)
    with pytest.raises(ValueError, match=r"lie in \[0, 9\]"):
        check_labels(10, 3, num_classes=10)


def test_trained_classifier_guides_into_the_class_and_round_trips(tmp_path):
    """A classifier trained with the SDE's perturbation on mixture draws guides >= 95 % of the
    samples into the asked class; its checkpoint reloads to the same function."""
    sde = VPSDE()
    g = torch.Generator().manual_seed(0)
    x, y = MIXTURE.sample(4000, generator=g, return_labels=True)
    model, hist = train_classifier(sde, x, y, steps=400, batch_size=256, width=32, generator=g)
    assert sum(hist["loss"][-20:]) / 20 < 0.7 * sum(hist["loss"][:20]) / 20
    assert classifier_accuracy(model, sde, x[:1000], y[:1000], 0.01, generator=g) > 0.97
    path = save_classifier(tmp_path / "clf.pt", model, sde, extra={"note": "mixture"})
    loaded, loaded_sde, extra = load_classifier(path)
    assert extra == {"note": "mixture"} and isinstance(loaded_sde, VPSDE)
    xt, t = torch.randn(5, 2), torch.rand(5)
    assert torch.equal(classifier_grad_fn(loaded, loaded_sde)(xt, t, torch.ones(5, dtype=torch.long)),
                       classifier_grad_fn(model, sde)(xt, t, torch.ones(5, dtype=torch.long)))
    grad = classifier_grad_fn(loaded, loaded_sde)
    for label in (0, 1):
        res = class_conditional(MIXTURE.marginal(sde), sde, (600, 2), grad, labels=label,
                                steps=200, generator=torch.Generator().manual_seed(label))
        assert in_class(res.samples, label) >= 0.95
    # same seed, same model
    again, _ = train_classifier(sde, x, y, steps=5, width=8, generator=torch.Generator().manual_seed(3))
    again2, _ = train_classifier(sde, x, y, steps=5, width=8, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                 again2.state_dict().values()))


def test_classifier_checkpoint_errors(tmp_path):
    sde = VESDE()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_classifier(tmp_path / "missing.pt")
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a noise-conditional classifier checkpoint"):
        load_classifier(tmp_path / "bad.pt")
    x, y = MIXTURE.sample(64, generator=torch.Generator().manual_seed(0), return_labels=True)
    model, _ = train_classifier(sde, x, y, steps=2, width=8)
    path = save_classifier(tmp_path / "c.pt", model, sde)
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["width"] = 16
    torch.save(ckpt, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="do not fit its config"):
        load_classifier(tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        train_classifier(sde, x, y + 1, num_classes=2, steps=1)


def _digits_like(name, split="train", overrides=()):
    import configs
    from training.data import load_dataset
    config = configs.load_config(name, list(overrides))
    ds = load_dataset(config, split)
    images, labels = ds.get_batch(torch.arange(min(len(ds), 2000)))
    return config, (images * 2 - 1 if config.data.centered else images), labels


def test_digits_classifier_learns():
    """Smoke: the built-in digits through training.data; after 300 steps the classifier is far
    above chance (0.1) on lightly noised digits."""
    from sde_lib import get_sde
    config, images, labels = _digits_like("builtin/digits_vp")
    sde = get_sde(config)
    g = torch.Generator().manual_seed(0)
    model, _ = train_classifier(sde, images, labels, steps=300, batch_size=64, width=32,
                                generator=g)
    assert model.num_classes == 10
    assert classifier_accuracy(model, sde, images[:500], labels[:500], 0.01, generator=g) > 0.5


def test_mnist_classifier_smoke(tmp_path):
    """Smoke on MNIST (its test split, when present; see MNIST): training runs, the loss is finite,
    and the checkpoint round-trips."""
    mnist = MNIST
    if not (mnist / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST not found in {mnist}")
    from sde_lib import get_sde
    config, images, labels = _digits_like(
        "builtin/digits_ve", "test", ["data.dataset=MNIST", "data.image_size=28",
                                      f"data.path={mnist}"])
    sde = get_sde(config)
    model, hist = train_classifier(sde, images, labels, steps=20, batch_size=32, width=16,
                                   generator=torch.Generator().manual_seed(0))
    assert all(math.isfinite(v) for v in hist["loss"]) and model.event_shape == (1, 28, 28)
    loaded, _, _ = load_classifier(save_classifier(tmp_path / "m.pt", model, sde))
    x, t = images[:3], torch.full((3,), 0.5)
    assert torch.equal(loaded(x, t), model(x, t))


# ----------------------------------------------------------------------------- command line

@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """Randomly initialised tiny score models (grey VE, RGB sub-VP) saved as toolkit checkpoints."""
    import configs
    from networks import ExponentialMovingAverage, create_model, save_checkpoint
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    torch.manual_seed(0)
    for name, channels in (("builtin/digits_ve", 1), ("builtin/digits_subvp", 3)):
        config = configs.load_config(name, ["model.nf=8", "model.num_scales=50",
                                            f"data.num_channels={channels}"])
        model = create_model(config)
        path = root / f"c{channels}.pth"
        save_checkpoint(path, model, config, ema=ExponentialMovingAverage(model.parameters(), 0.999))
        out[channels] = path
    return out


def _png_ok(path, mode):
    from PIL import Image
    with Image.open(path) as im:
        return im.mode == mode and im.width >= 64


def test_cli_inpaint_colorize_conditional_write_grids(tiny_checkpoints, tmp_path, capsys):
    from sde_cli.app import main as cli
    common = ["--steps", "30", "-n", "4", "--out", str(tmp_path), "--no-progress"]
    assert cli(["inpaint", "--checkpoint", str(tiny_checkpoints[1]), "--stem", "inp",
                              "--mask", "left", *common]) == 0
    info = json.loads((tmp_path / "inp.json").read_text())
    assert info["max_error_on_observed"] == 0 and info["options"]["method"] == "projection"
    for part in ("original", "before", "after"):
        assert _png_ok(tmp_path / f"inp_{part}.png", "L")
    assert cli(["colorize", "--checkpoint", str(tiny_checkpoints[3]), "--stem", "col",
                              "--init", "original", *common]) == 0
    assert _png_ok(tmp_path / "col_after.png", "RGB") and _png_ok(tmp_path / "col_before.png", "RGB")
    assert json.loads((tmp_path / "col.json").read_text())["max_error_on_observed"] < 1e-5
    clf = tmp_path / "clf.pt"
    assert cli(["conditional", "--checkpoint", str(tiny_checkpoints[1]),
                              "--classifier", str(clf), "--train-steps", "5", "--width", "8",
                              "--labels", "3,4", "--stem", "cond", *common]) == 0
    assert clf.is_file() and _png_ok(tmp_path / "cond_after.png", "L")
    assert json.loads((tmp_path / "cond.json").read_text())["labels"] == [3, 4, 3, 4]
    assert cli(["conditional", "--checkpoint", str(tiny_checkpoints[1]),
                "--classifier", str(clf), "--labels", "12", *common]) == 1
    assert "out of range" in capsys.readouterr().err
    assert cli(["colorize", "--checkpoint", str(tiny_checkpoints[1]), *common]) == 1
    assert "colorize needs an RGB model" in capsys.readouterr().err
    fresh = tmp_path / "fresh.pt"  # labels out of range are refused before any training
    assert cli(["conditional", "--checkpoint", str(tiny_checkpoints[1]), "--classifier",
                str(fresh), "--train-steps", "5", "--labels", "99", *common]) == 1
    assert "out of range" in capsys.readouterr().err and not fresh.exists()
    victim = tmp_path / "victim.pt"  # a file the toolkit did not write is never replaced
    victim.write_bytes(b"someone else's weights")
    assert cli(["conditional", "--checkpoint", str(tiny_checkpoints[1]), "--classifier",
                str(victim), "--train-steps", "5", "--labels", "3", *common]) == 1
    err = capsys.readouterr().err
    assert "is not a classifier this toolkit wrote" in err and "choose another path" in err
    assert victim.read_bytes() == b"someone else's weights"


# ----------------------------------------------------------------------------- bad input (issue 13)

def test_labels_checked_whenever_the_class_count_is_known():
    """A label of 99 fails with a clear error when the gradient function wraps a classifier
    whose class count is known (here a plain lambda around the exact mixture classifier, which
    checks its labels itself), and at once when the count is given."""
    sde = VPSDE()
    grad = mixture_classifier_grad_fn(MIXTURE, sde)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\], got \[99\]"):
        class_conditional(MIXTURE.marginal(sde), sde, (4, 2), lambda x, t, c: grad(x, t, c),
                          labels=99, steps=30)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\], got \[99\]"):
        class_conditional(MIXTURE.marginal(sde), sde, (4, 2), lambda x, t, c: x * 0, labels=99,
                          num_classes=3, steps=30)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\], got \[5\]"):
        grad(torch.zeros(2, 2), torch.ones(2), torch.tensor([0, 5]))


def test_classifier_gradient_shape_is_checked_before_any_work():
    sde = VPSDE()
    grad = mixture_classifier_grad_fn(MIXTURE, sde)
    calls = []

    def score(x, t):
        calls.append(x.shape[0])
        return MIXTURE.marginal(sde).score(x, t)

    for bad, got in ((lambda x, t, c: grad(x, t, c)[:1], r"\[1, 2\]"),      # would broadcast
                     (lambda x, t, c: grad(x, t, c)[:, :1], r"\[2, 1\]"),
                     (lambda x, t, c: 0.0, "float")):
        with pytest.raises(ValueError, match=rf"classifier_grad_fn .* returns {got} for input of "
                                             rf"shape \[2, 2\]"):
            class_conditional(score, sde, (4, 2), bad, labels=1, num_classes=2, steps=30)
    assert calls == [2, 2, 2]     # only the score's shape probes ran


def test_unreadable_classifier_files_are_not_a_classifier_checkpoint(tmp_path):
    """Random bytes and a pickle that would run code are both refused as "not a classifier
    checkpoint"; PyTorch's advice to retry with weights_only=False never reaches the user, and
    the crafted pickle's code never runs."""
    import os
    import pickle
    (tmp_path / "random.pt").write_bytes(os.urandom(4096))
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"format": "noise_conditional_classifier/1", "x": Evil()}, f, protocol=2)
    torch.save({"format": "noise_conditional_classifier/1", "x": Evil()}, tmp_path / "evil2.pt")
    for name in ("random.pt", "evil.pt", "evil2.pt"):
        with pytest.raises(ValueError, match="not a noise-conditional classifier checkpoint") as e:
            load_classifier(tmp_path / name)
        assert "weights_only" not in str(e.value) and "weights only" not in str(e.value).lower()
    assert not marker.exists()
