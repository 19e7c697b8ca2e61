"""Sample-quality metrics: Frechet distance and KID against closed forms, the torch-fidelity wrapper
against a fake torch_fidelity module, and the built-in digits feature extractor."""

import math
import sys
import types
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image

from evaluation import digits_features as dfeat
from evaluation.inception import expected_shapes
from evaluation.metrics import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILE,
    classifier_score,
    check_inception_weights,
    feature_statistics,
    fid_from_features,
    fidelity_metrics,
    frechet_distance,
    image_dataset,
    kernel_distance,
    load_images,
    polynomial_mmd2,
    to_uint8_rgb,
)


def rng(seed):
    return torch.Generator().manual_seed(seed)


def random_cov(d, seed, scale=1.0):
    a = torch.randn(d, d, generator=rng(seed), dtype=torch.float64).numpy()
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


# ----------------------------------------------------------------------------- Frechet distance

def test_frechet_isotropic_closed_form():
    """N(mu1, s1^2 I) vs N(mu2, s2^2 I) in d dims: |mu1 - mu2|^2 + d (s1 - s2)^2."""
    d = 7
    mu1, mu2 = np.arange(d, dtype=float), np.arange(d, dtype=float)[::-1].copy()
    s1, s2 = 0.7, 2.3
    expected = np.sum((mu1 - mu2) ** 2) + d * (s1 - s2) ** 2
    got = frechet_distance(mu1, s1 ** 2 * np.eye(d), mu2, s2 ** 2 * np.eye(d))
    assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_commuting_covariances():
    """Shared eigenvectors: tr(C1 + C2 - 2 (C1 C2)^1/2) = sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    d = 12
    q, _ = np.linalg.qr(torch.randn(d, d, generator=rng(1), dtype=torch.float64).numpy())
    a = np.linspace(0.1, 5.0, d)
    b = np.linspace(3.0, 0.01, d)
    mu1 = torch.randn(d, generator=rng(2), dtype=torch.float64).numpy()
    mu2 = torch.randn(d, generator=rng(3), dtype=torch.float64).numpy()
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_non_commuting_2x2_closed_form():
    """For 2x2 M = C1 C2 with eigenvalues l1, l2 >= 0: tr M^1/2 = sqrt(tr M + 2 sqrt(det M))."""
    c1 = np.array([[2.0, 0.9], [0.9, 1.0]])
    c2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    m = c1 @ c2
    tr_sqrt = math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.5])
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-12)


def test_frechet_agrees_with_sqrtm_formula_and_is_symmetric():
    d = 20
    c1, c2 = random_cov(d, 4), random_cov(d, 5, scale=2.0)
    mu1, mu2 = np.zeros(d), np.full(d, 0.3)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-9)
    assert frechet_distance(mu2, c2, mu1, c1) == pytest.approx(ref, rel=1e-9)


def test_frechet_singular_covariance_is_zero_against_itself():
    """Fewer samples than dimensions: a rank-deficient covariance, still exactly 0 and finite."""
    f = torch.randn(10, 64, generator=rng(6), dtype=torch.float64)
    mu, cov = feature_statistics(f)
    assert np.linalg.matrix_rank(cov) < 64
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)
    f2 = f + 0.5
    assert fid_from_features(f, f2) == pytest.approx(64 * 0.25, rel=1e-8)  # a pure mean shift


def test_fid_from_samples_approaches_closed_form():
    d, n = 4, 20000
    g = rng(7)
    c1, c2 = random_cov(d, 8), random_cov(d, 9)
    mu2 = np.array([0.5, -0.5, 0.0, 1.0])
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.from_numpy(np.linalg.cholesky(c1)).T
    y = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.from_numpy(np.linalg.cholesky(c2)).T
    y = y + torch.from_numpy(mu2)
    exact = frechet_distance(np.zeros(d), c1, mu2, c2)
    assert fid_from_features(x, y) == pytest.approx(exact, rel=0.05)


def test_frechet_bad_input():
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros(2), np.eye(2), np.array([np.nan, 0]), np.eye(2))
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(np.zeros((1, 3)))


# ----------------------------------------------------------------------------- KID

def poly_features(x, gamma, coef0=1.0):
    """Explicit feature map of (gamma <x, y> + c)^3: sqrt(C(3, k) c^(3-k) gamma^k) x^{(x)k}, k = 0..3."""
    n = x.shape[0]
    parts = [torch.full((n, 1), math.sqrt(coef0 ** 3), dtype=x.dtype)]
    t = torch.ones(n, 1, dtype=x.dtype)
    for k in (1, 2, 3):
        t = (t[:, :, None] * x[:, None, :]).reshape(n, -1)
        parts.append(math.sqrt(math.comb(3, k) * coef0 ** (3 - k) * gamma ** k) * t)
    return torch.cat(parts, 1)


def test_mmd2_equals_u_statistic_of_explicit_feature_map():
    """Unequal set sizes; the kernel written as an inner product of explicit monomial features."""
    x = torch.randn(30, 3, generator=rng(10), dtype=torch.float64)
    y = torch.randn(45, 3, generator=rng(11), dtype=torch.float64) * 1.3 + 0.4
    px, py = poly_features(x, 1 / 3), poly_features(y, 1 / 3)
    m, n = len(x), len(y)
    sx, sy = px.sum(0), py.sum(0)
    within_x = (sx @ sx - (px * px).sum()) / (m * (m - 1))
    within_y = (sy @ sy - (py * py).sum()) / (n * (n - 1))
    expected = float(within_x + within_y - 2 * (sx @ sy) / (m * n))
    assert polynomial_mmd2(x, y) == pytest.approx(expected, rel=1e-10)


def test_mmd2_point_masses_exact():
    """All x = a, all y = b: MMD^2 = k(a, a) + k(b, b) - 2 k(a, b)."""
    a, b = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.5, -1.0, 0.0])

    def k(u, v):
        return (float(u @ v) / 3 + 1) ** 3

    got = polynomial_mmd2(a.expand(5, 3), b.expand(8, 3))
    assert got == pytest.approx(k(a, a) + k(b, b) - 2 * k(a, b), rel=1e-12)


def gaussian_moments(mu, cov):
    m3 = (np.einsum("i,j,k->ijk", mu, mu, mu) + np.einsum("i,jk->ijk", mu, cov)
          + np.einsum("j,ik->ijk", mu, cov) + np.einsum("k,ij->ijk", mu, cov))
    return mu, cov + np.outer(mu, mu), m3


def test_kid_unbiased_for_gaussians_closed_form():
    """Population MMD^2 with (x.y/d + 1)^3 between Gaussians, from their moment tensors
    E[x], E[x x^T], E[x (x) x (x) x]: sum_k C(3, k) d^-k |M_k(P) - M_k(Q)|^2. The estimator is
    unbiased, so its mean over independent draws matches; for P = Q the mean is 0."""
    d, n, draws = 3, 1000, 12
    mu2, sd2 = np.array([0.5, 0.0, -0.3]), np.array([1.0, 0.7, 1.2])
    mp, mq = gaussian_moments(np.zeros(d), np.eye(d)), gaussian_moments(mu2, np.diag(sd2 ** 2))
    exact = sum(math.comb(3, k) * d ** -k * np.sum((mp[k - 1] - mq[k - 1]) ** 2) for k in (1, 2, 3))
    g = rng(12)
    shifted, same = [], []
    for _ in range(draws):
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        y = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.from_numpy(sd2) + torch.from_numpy(mu2)
        x2 = torch.randn(n, d, generator=g, dtype=torch.float64)
        shifted.append(polynomial_mmd2(x, y))
        same.append(polynomial_mmd2(x, x2))
    shifted, same = np.array(shifted), np.array(same)
    se = shifted.std(ddof=1) / math.sqrt(draws)
    assert abs(shifted.mean() - exact) < 4 * se + 0.02 * exact, (shifted.mean(), exact, se)
    assert abs(same.mean()) < 4 * same.std(ddof=1) / math.sqrt(draws)
    assert abs(same.mean()) < 0.05 * exact


def test_kernel_distance_subsets_reproducible():
    x = torch.randn(300, 5, generator=rng(13), dtype=torch.float64)
    y = torch.randn(200, 5, generator=rng(14), dtype=torch.float64) + 0.5
    a = kernel_distance(x, y, subsets=5, subset_size=100, generator=rng(1))
    b = kernel_distance(x, y, subsets=5, subset_size=100, generator=rng(1))
    c = kernel_distance(x, y, subsets=5, subset_size=100, generator=rng(2))
    assert a == b and a != c
    assert kernel_distance(x, y) == kernel_distance(x, y)  # seeded by default
    # subset_size above the set sizes: capped at 200; with one subset of y in full
    full = kernel_distance(x[:200], y, subsets=1, subset_size=10 ** 6)
    assert full[0] == pytest.approx(polynomial_mmd2(x[:200], y), rel=1e-12) and full[1] == 0.0


# ----------------------------------------------------------------------------- classifier score

def test_classifier_score_closed_forms():
    k = 10
    confident_even = torch.eye(k).repeat(3, 1)  # one-hot, every class equally often -> K
    assert classifier_score(confident_even)[0] == pytest.approx(k)
    assert classifier_score(torch.full((20, k), 1.0 / k))[0] == pytest.approx(1.0)
    one_class = torch.zeros(20, k)
    one_class[:, 3] = 1
    assert classifier_score(one_class)[0] == pytest.approx(1.0)
    mean, std = classifier_score(confident_even, splits=3)
    assert mean == pytest.approx(k) and std == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="sum"):
        classifier_score(torch.ones(4, k))


# ----------------------------------------------------------------------------- image conversion

def test_to_uint8_rgb_layouts_and_rounding():
    x = torch.tensor([0.0, 0.5, 1.0, 1.02, -0.01, 0.2 / 255 + 3 / 255]).view(1, 1, 2, 3)
    out = to_uint8_rgb(x)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 2, 3)
    assert torch.equal(out[0, 0].flatten(), torch.tensor([0, 128, 255, 255, 0, 3], dtype=torch.uint8))
    assert torch.equal(out[0, 0], out[0, 1]) and torch.equal(out[0, 0], out[0, 2])  # grey repeated
    floor = to_uint8_rgb(x, rounding="floor")
    assert torch.equal(floor[0, 0].flatten(), torch.tensor([0, 127, 255, 255, 0, 3], dtype=torch.uint8))
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    for r in ("round", "floor"):  # 8-bit data stored as u / 255 comes back exactly
        assert torch.equal(to_uint8_rgb(u.float() / 255, rounding=r)[:, 0], u[:, 0])
    rgb_last = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    assert torch.equal(to_uint8_rgb(rgb_last), torch.from_numpy(rgb_last).permute(0, 3, 1, 2))
    assert to_uint8_rgb(np.zeros((2, 5, 5))).shape == (2, 3, 5, 5)
    assert to_uint8_rgb(np.full((1, 1, 2, 2), 7, dtype=np.int64)).max() == 7
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_uint8_rgb(torch.linspace(-1, 1, 16).view(1, 1, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        to_uint8_rgb(torch.zeros(2, 4, 5, 5))
    with pytest.raises(ValueError, match="0..255"):
        to_uint8_rgb(np.full((1, 1, 2, 2), 300))


def test_image_sources(tmp_path):
    imgs = np.random.default_rng(1).integers(0, 256, (3, 6, 6), dtype=np.uint8)
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, a in enumerate(imgs):
        Image.fromarray(a, mode="L").save(folder / f"{i:03d}.png")
    from_folder = load_images(folder)
    assert torch.equal(from_folder, torch.from_numpy(imgs)[:, None].expand(-1, 3, -1, -1))
    np.savez(tmp_path / "s.npz", samples=imgs[..., None])
    assert torch.equal(load_images(tmp_path / "s.npz"), from_folder)
    np.savez(tmp_path / "bad.npz", a=imgs, b=imgs)
    with pytest.raises(KeyError, match="samples"):
        load_images(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_images(tmp_path / "nowhere")

    class Pairs(torch.utils.data.Dataset):  # like training.data: (float [C, H, W] in [0, 1], label)
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.from_numpy(imgs[i]).float()[None] / 255.0, i

    ds = image_dataset(Pairs())
    assert len(ds) == 3 and torch.equal(torch.stack([ds[i] for i in range(3)]), from_folder)
    Image.fromarray(np.zeros((7, 7), np.uint8)).save(folder / "999.png")
    with pytest.raises(ValueError, match="share one size"):
        load_images(folder)


# ----------------------------------------------------------------------------- torch-fidelity wrapper

def fake_fidelity(monkeypatch, error=None):
    """Install a stand-in `torch_fidelity` that records the arguments of calculate_metrics."""
    calls = []

    def calculate_metrics(**kwargs):
        calls.append(kwargs)
        if error is not None:
            raise error
        out = {}
        if kwargs.get("fid"):
            out["frechet_inception_distance"] = 12.5
        if kwargs.get("isc"):
            out.update(inception_score_mean=3.0, inception_score_std=0.1)
        if kwargs.get("kid"):
            out.update(kernel_inception_distance_mean=0.01, kernel_inception_distance_std=0.002)
        return out

    module = types.ModuleType("torch_fidelity")
    module.calculate_metrics = calculate_metrics
    module.__version__ = "0.0-fake"
    monkeypatch.setitem(sys.modules, "torch_fidelity", module)
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    return calls


def save_weights(path, classes=1008):
    """A file of the FID Inception-v3's keys and shapes (small: every tensor a broadcast zero);
    `classes`=1000 makes it look like torchvision's ImageNet model."""
    shapes = dict(expected_shapes(), **{"fc.weight": (classes, 2048), "fc.bias": (classes,)})
    torch.save({k: torch.zeros([1] * len(s)).expand(s) for k, s in shapes.items()}, path)
    return path


def test_fidelity_metrics_passes_converted_inputs(monkeypatch, tmp_path):
    calls = fake_fidelity(monkeypatch)
    weights = save_weights(tmp_path / INCEPTION_WEIGHTS_FILE)
    samples = torch.rand(40, 1, 8, 8, generator=rng(20))  # grey floats in [0, 1]
    ref = np.random.default_rng(2).integers(0, 256, (25, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", images=ref)
    out = fidelity_metrics(samples, tmp_path / "ref.npz", inception_weights=weights, batch_size=16,
                           device="cpu", seed=7)
    (kw,) = calls
    assert kw["fid"] and kw["isc"] and kw["kid"] and kw["cuda"] is False
    assert kw["batch_size"] == 16 and kw["rng_seed"] == 7 and kw["isc_splits"] == 10
    assert kw["feature_extractor_weights_path"] == str(weights)
    assert kw["kid_subset_size"] == 25  # capped at the smaller set
    in1, in2 = kw["input1"], kw["input2"]
    assert isinstance(in1, torch.utils.data.Dataset) and len(in1) == 40 and len(in2) == 25
    x = in1[3]
    assert x.dtype == torch.uint8 and x.shape == (3, 8, 8)
    assert torch.equal(x, (samples[3] * 255).round().to(torch.uint8).expand(3, -1, -1))
    assert torch.equal(in2[4], torch.from_numpy(ref[4]).permute(2, 0, 1))
    assert out["fid"] == 12.5 and out["isc_mean"] == 3.0 and out["kid_mean"] == 0.01
    assert out["num_samples"] == 40 and out["num_reference"] == 25 and out["seed"] == 7
    assert out["kid_subset_size"] == 25 and "ref.npz" in out["reference"]
    assert out["inception_weights"] == str(weights) and "0.0-fake" in out["feature_extractor"]


def test_fidelity_metrics_isc_only_and_env_weights(monkeypatch, tmp_path):
    calls = fake_fidelity(monkeypatch)
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(save_weights(tmp_path / "w.pth")))
    out = fidelity_metrics(torch.rand(12, 3, 4, 4, generator=rng(21)), fid=False, kid=False)
    (kw,) = calls
    assert "input2" not in kw and not kw["fid"] and not kw["kid"] and kw["isc"]
    assert kw["feature_extractor_weights_path"] == str(tmp_path / "w.pth")
    assert set(out) >= {"isc_mean", "isc_std"} and "fid" not in out and out["num_reference"] is None
    with pytest.raises(ValueError, match="reference"):
        fidelity_metrics(torch.rand(12, 3, 4, 4))
    with pytest.raises(ValueError, match="nothing to compute"):
        fidelity_metrics(torch.rand(12, 3, 4, 4), fid=False, isc=False, kid=False)


def test_fidelity_metrics_without_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # makes `import torch_fidelity` fail
    with pytest.raises(ImportError, match=r"pip install.*score-sde-toolkit\[metrics\]") as info:
        fidelity_metrics(torch.rand(12, 3, 4, 4), torch.rand(12, 3, 4, 4))
    assert "torch-fidelity" in str(info.value) and "digits_features" in str(info.value)


def test_fidelity_metrics_offline_without_weights(monkeypatch, tmp_path):
    fake_fidelity(monkeypatch, error=urllib.error.URLError("[Errno -3] Temporary failure in name resolution"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(RuntimeError) as info:
        fidelity_metrics(torch.rand(12, 3, 4, 4), torch.rand(12, 3, 4, 4), device="cpu")
    msg = str(info.value)
    assert INCEPTION_WEIGHTS_FILE in msg and "inception_weights=" in msg and INCEPTION_WEIGHTS_ENV in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg and "https://" in msg
    # other failures are not disguised as network problems
    fake_fidelity(monkeypatch, error=KeyError("boom"))
    with pytest.raises(KeyError, match="boom"):
        fidelity_metrics(torch.rand(12, 3, 4, 4), torch.rand(12, 3, 4, 4), device="cpu")


class NotATensor:
    pass


def test_inception_weights_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match=INCEPTION_WEIGHTS_FILE):
        check_inception_weights(tmp_path / "missing.pth")
    torch.save({"fc.weight": torch.zeros(1008, 1), "extra": NotATensor()}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="weights_only") as err:
        check_inception_weights(tmp_path / "pickled.pth")
    assert "re-running" not in str(err.value).lower()  # never PyTorch's unsafe advice
    assert "weights_only` set to `false" not in str(err.value).lower()
    with pytest.raises(ValueError, match="1008"):
        check_inception_weights(save_weights(tmp_path / "torchvision.pth", classes=1000))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="fc.weight"):
        check_inception_weights(tmp_path / "other.pth")
    assert check_inception_weights(save_weights(tmp_path / "ok.pth")) == tmp_path / "ok.pth"


# ----------------------------------------------------------------------------- built-in digits features

@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """Trained once per session into a temporary cache (about 10 s on one CPU thread)."""
    return dfeat.load_digits_classifier(seed=0, cache=tmp_path_factory.mktemp("digits_cache"))


@pytest.fixture(scope="module")
def halves():
    x, _ = dfeat.digits_images("all")
    perm = torch.randperm(len(x), generator=rng(0))
    return x[perm[: len(x) // 2]], x[perm[len(x) // 2:]]


def test_classifier_accuracy_and_cache(classifier, monkeypatch):
    assert classifier.info["test_accuracy"] >= 0.95 and classifier.info["num_test"] == 300
    cache = classifier.info["cache_file"]
    monkeypatch.setattr(dfeat, "train_digits_classifier", lambda *a, **k: pytest.fail("retrained"))
    again = dfeat.load_digits_classifier(seed=0, cache=Path(cache).parent)
    assert again.info["fingerprint"] == classifier.info["fingerprint"] == dfeat.fingerprint(again)
    for k, v in classifier.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_cache_dir_env_and_broken_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(dfeat.CACHE_ENV, str(tmp_path / "c"))
    assert dfeat.cache_dir() == tmp_path / "c"
    path = dfeat._cache_file(tmp_path / "c", 5, 1)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="retraining"):
        model = dfeat.load_digits_classifier(seed=5, epochs=1)
    assert dfeat._load_cached(path).info["fingerprint"] == model.info["fingerprint"]
    assert not list(path.parent.glob("*.tmp"))  # the atomic write left no temporary file


class _Payload:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_cache_is_refused_without_unsafe_advice(tmp_path):
    """A cache file that needs arbitrary objects is never unpickled, and the message never
    suggests weights_only=False."""
    path = tmp_path / "evil.pt"
    torch.save({"format_version": dfeat.FORMAT_VERSION, "x": _Payload()}, path)
    with pytest.raises(ValueError) as e:
        dfeat._load_cached(path)
    text = str(e.value)
    assert str(path) in text and "weights_only=True" in text and "\n" not in text
    assert "weights_only` set to `False`" not in text and "will likely succeed" not in text


def test_training_is_reproducible():
    a = dfeat.train_digits_classifier(seed=3, epochs=1)
    b = dfeat.train_digits_classifier(seed=3, epochs=1)
    c = dfeat.train_digits_classifier(seed=4, epochs=1)
    assert a.info["fingerprint"] == b.info["fingerprint"] != c.info["fingerprint"]
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_real_digits_close_noise_and_blur_far(classifier, halves):
    a, b = halves
    g = rng(1)
    real = dfeat.digits_fid(b, a, classifier=classifier)
    noise = dfeat.digits_fid(torch.rand(b.shape, generator=g), a, classifier=classifier)
    blur = dfeat.digits_fid(dfeat._gaussian_blur(b, 1.0), a, classifier=classifier)
    assert real < 1.0 and noise > 20 * real and blur > 20 * real, (real, noise, blur)
    kid_real, _ = dfeat.digits_kid(b, a, classifier=classifier, subsets=10)
    kid_noise, _ = dfeat.digits_kid(torch.rand(b.shape, generator=g), a, classifier=classifier, subsets=10)
    assert abs(kid_real) < 0.02 and kid_noise > 20 * max(abs(kid_real), 1e-3)


def test_classifier_stats_tell_digits_from_noise(classifier, halves):
    real = dfeat.digits_classifier_stats(halves[1], classifier=classifier)
    noise = dfeat.digits_classifier_stats(torch.rand(500, 8, 8, generator=rng(2)), classifier=classifier)
    assert len(real["class_histogram"]) == 10 and sum(real["class_histogram"]) == pytest.approx(1.0)
    assert all(0.06 < p < 0.14 for p in real["class_histogram"])
    assert real["mean_max_prob"] > 0.95 and real["classifier_score"] > 8.5
    assert noise["mean_max_prob"] < real["mean_max_prob"] - 0.1
    assert noise["classifier_score"] < real["classifier_score"] / 2


def test_16x16_samples_compared_with_16x16_digits(classifier):
    """Samples at 16x16 (the digits configs) are compared with training digits resized the same way."""
    test, _ = dfeat.digits_images("test")
    up = F.interpolate(test, size=(16, 16), mode="bilinear", align_corners=False)
    fid_8 = dfeat.digits_fid(test, "train", classifier=classifier)
    fid_16 = dfeat.digits_fid(up, "train", classifier=classifier)
    fid_16_rgb_uint8 = dfeat.digits_fid((up.expand(-1, 3, -1, -1) * 255).round().to(torch.uint8),
                                        "train", classifier=classifier)
    mismatched = dfeat.digits_fid(up, dfeat.digits_images("train")[0], classifier=classifier)
    assert fid_16 < 2 * fid_8 + 0.5 and fid_16_rgb_uint8 == pytest.approx(fid_16, rel=0.05, abs=0.05)
    assert mismatched > 3 * fid_16, (fid_8, fid_16, mismatched)


def test_digits_metrics_report_and_inputs(classifier, halves, tmp_path):
    a, b = halves
    np.savez(tmp_path / "samples.npz", samples=(b[:200, 0] * 255).round().numpy().astype(np.uint8))
    m = dfeat.digits_metrics(tmp_path / "samples.npz", a, classifier=classifier, kid_subsets=5)
    assert m["num_samples"] == 200 and m["num_reference"] == len(a) and m["kid_subset_size"] == 200
    assert m["feature_extractor"]["fingerprint"] == classifier.info["fingerprint"]
    assert m["feature_extractor"]["test_accuracy"] == classifier.info["test_accuracy"]
    assert m["digits_fid"] == pytest.approx(dfeat.digits_fid(b[:200], a, classifier=classifier), rel=0.05)
    assert dfeat.prepare_digits(np.zeros((2, 16, 16, 3), np.uint8)).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dfeat.prepare_digits(torch.full((2, 1, 8, 8), -1.0))
    with pytest.raises(ValueError, match="shape"):
        dfeat.prepare_digits(torch.zeros(2, 5, 8, 8))
