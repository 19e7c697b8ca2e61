"""The NCSNv2 noise-schedule advisor: Technique 2's equation, Proposition 3 against simulated
Langevin dynamics, the max pairwise distance against brute force, and the command line."""

import json
import math

import numpy as np
import pytest
import torch
from ml_collections import ConfigDict
from scipy.spatial.distance import pdist
from scipy.stats import norm

from sde_lib import advisor


# ----------------------------------------------------------------------------- Technique 2

@pytest.mark.parametrize("dim", [5, 64, 784, 3072, 12288])
def test_gamma_solves_its_equation(dim):
    gamma = advisor.solve_gamma(dim)
    a = math.sqrt(2 * dim) * (gamma - 1)
    assert abs(norm.cdf(a + 3 * gamma) - norm.cdf(a - 3 * gamma) - 0.5) < 1e-6
    assert gamma > 1
    # the overlap falls as gamma grows: a smaller ratio overlaps more
    assert advisor.overlap_probability(1 + 0.9 * (gamma - 1), dim) > 0.5



def advise_cli(argv):
    """`python -m sde_lib.run advise ARGV` in this process; returns the exit status."""
    from sde_cli.app import run
    return run("advise", argv)

def test_cifar10_scales_against_ncsnv2():
    """D = 3072, sigma 50 -> 0.01. For large D, Phi(a + 3 gamma) ~ 1 and the root is
    sqrt(2D) / (sqrt(2D) - 3) = 1.039796. Our rule gives 220 scales (realised gamma 1.03974);
    NCSNv2's config uses 232 scales (gamma = 5000^(1/231) = 1.03756, overlap 0.567), a more
    conservative choice that also meets the criterion."""
    gamma = advisor.solve_gamma(3072)
    s = math.sqrt(2 * 3072)
    assert gamma == pytest.approx(s / (s - 3), abs=1e-8)
    assert gamma == pytest.approx(1.0398, abs=1e-4)
    L = advisor.num_scales_for(50.0, 0.01, gamma)
    assert L == 220
    assert (5000.0 ** (1 / (L - 1))) <= gamma < 5000.0 ** (1 / (L - 2))
    paper_gamma = 5000.0 ** (1 / 231)
    assert paper_gamma == pytest.approx(1.0376, abs=1e-4)
    assert 0.5 < advisor.overlap_probability(paper_gamma, 3072) < 0.6
    assert L <= 232


def test_num_scales_rule():
    assert advisor.num_scales_for(100.0, 1.0, 10.0) == 3  # exact fit: 100, 10, 1
    assert advisor.num_scales_for(101.0, 1.0, 10.0) == 4
    with pytest.raises(ValueError):
        advisor.solve_gamma(4)


# ----------------------------------------------------------------------------- Technique 4

def simulate_langevin(sigma_i, gamma, eps, sigma_min, n_steps, n, seed):
    """Langevin x <- x + alpha s(x) + sqrt(2 alpha) z with the exact score -x/sigma_i^2 of
    N(0, sigma_i^2), alpha = eps sigma_i^2 / sigma_min^2, from x_0 ~ N(0, gamma^2 sigma_i^2)."""
    g = torch.Generator().manual_seed(seed)
    alpha = eps * sigma_i ** 2 / sigma_min ** 2
    x = gamma * sigma_i * torch.randn(n, generator=g, dtype=torch.float64)
    for _ in range(n_steps):
        z = torch.randn(n, generator=g, dtype=torch.float64)
        x = x + alpha * (-x / sigma_i ** 2) + math.sqrt(2 * alpha) * z
    return x


def recursion_ratio(gamma, eps, sigma_min, n_steps):
    """Var x_{t+1} = (1 - eps/sigma_min^2)^2 Var x_t + 2 alpha, iterated (in units of sigma_i^2)."""
    v = gamma ** 2
    for _ in range(n_steps):
        v = (1 - eps / sigma_min ** 2) ** 2 * v + 2 * eps / sigma_min ** 2
    return v


@pytest.mark.parametrize("n_steps, u", [(1, 0.3), (5, 0.062), (20, 0.5), (100, 0.01)])
def test_proposition3_matches_simulation(n_steps, u):
    sigma_min, gamma = 0.01, 1.2
    eps = u * sigma_min ** 2
    ratio = advisor.langevin_variance_ratio(eps, gamma, n_steps, sigma_min)
    assert ratio == pytest.approx(recursion_ratio(gamma, eps, sigma_min, n_steps), rel=1e-12)
    n = 100000
    for sigma_i in (0.7, 0.03):  # the ratio does not depend on the level
        x = simulate_langevin(sigma_i, gamma, eps, sigma_min, n_steps, n, seed=n_steps)
        assert x.mean().abs() < 5 * x.std() / math.sqrt(n)
        empirical = (x.var() / sigma_i ** 2).item()
        se = empirical * math.sqrt(2 / (n - 1))
        assert abs(empirical - ratio) < 4 * se, (sigma_i, empirical, ratio)


def test_best_step_size_reproduces_ncsnv2_cifar10():
    """CIFAR-10 in NCSNv2: 232 scales 50 -> 0.01, T = 5, eps = 6.2e-6 (config snr 0.176)."""
    gamma = 5000.0 ** (1 / 231)
    eps, ratio = advisor.best_step_size(gamma, 5, 0.01)
    assert eps == pytest.approx(6.2e-6, rel=0.02)
    assert advisor.snr_from_step_size(eps, 0.01) == pytest.approx(0.176, abs=0.001)
    assert ratio == pytest.approx(advisor.langevin_variance_ratio(eps, gamma, 5, 0.01))
    grid = np.linspace(1e-8, 1e-4 * 0.999, 4000)
    assert abs(ratio - 1) <= min(abs(advisor.langevin_variance_ratio(e, gamma, 5, 0.01) - 1)
                                 for e in grid) + 1e-12
    # more steps per scale: the variance gets closer to sigma_i^2
    assert abs(advisor.best_step_size(gamma, 50, 0.01)[1] - 1) < abs(ratio - 1)


# ----------------------------------------------------------------------------- Technique 1

def test_max_pairwise_distance_against_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(301, 7, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, 7)
    truth = pdist(x.numpy()).max()
    assert advisor.max_pairwise_distance(x) == pytest.approx(truth, rel=1e-12)
    assert advisor.max_pairwise_distance(x, chunk_size=17) == pytest.approx(truth, rel=1e-12)
    assert advisor.diameter_upper_bound(x) >= truth
    # two opposite corners of the unit hypercube among interior points: sqrt(D)
    cube = torch.rand(50, 9, generator=g) * 0.5 + 0.25
    cube[3], cube[40] = 0.0, 1.0
    assert advisor.max_pairwise_distance(cube) == pytest.approx(3.0, rel=1e-6)


def test_sigma_max_estimate_exact_and_subsampled():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(600, 1, 3, 3, generator=g)
    truth = pdist(x.reshape(600, -1).double().numpy()).max()
    exact = advisor.estimate_sigma_max(x, sample_size=600)
    assert exact.exact and exact.std == 0 and exact.value == pytest.approx(truth, rel=1e-6)
    est = advisor.estimate_sigma_max(x, sample_size=150, n_subsets=5,
                                     generator=torch.Generator().manual_seed(2))
    again = advisor.estimate_sigma_max(x, sample_size=150, n_subsets=5,
                                       generator=torch.Generator().manual_seed(2))
    assert est == again and not est.exact and len(est.subset_maxima) == 5
    assert est.value == max(est.subset_maxima) and est.std > 0
    assert est.lower <= truth * (1 + 1e-6) and truth <= est.upper
    with pytest.raises(ValueError, match="NaN"):
        advisor.estimate_sigma_max(torch.tensor([[0.0], [float("nan")]]))


# ----------------------------------------------------------------------------- advice and CLI

def toy_images(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 4, 4, generator=g) * 255).round().to(torch.uint8)


def test_advise_is_consistent_and_config_lines_apply():
    x = toy_images().float() / 255
    adv = advisor.advise(x, sigma_min=0.01, n_steps_each=5)
    d = pdist(x.reshape(len(x), -1).double().numpy()).max()
    assert adv.dim == 16 and adv.distance.exact
    assert d <= adv.sigma_max <= d * (1 + 1e-3)
    assert adv.num_scales == advisor.num_scales_for(adv.sigma_max, 0.01, adv.gamma_star)
    assert adv.gamma <= adv.gamma_star and adv.overlap >= 0.5
    assert adv.gamma == pytest.approx((adv.sigma_max / 0.01) ** (1 / (adv.num_scales - 1)))
    assert adv.variance_ratio == pytest.approx(
        advisor.langevin_variance_ratio(adv.step_lr, adv.gamma, 5, 0.01))
    config = ConfigDict({"training": {"sde": "vpsde"}, "model": {}, "sampling": {}})
    exec("\n".join(adv.config_lines()), {"config": config})
    assert config.model.sigma_max == adv.sigma_max and config.model.num_scales == adv.num_scales
    assert config.training.sde == "vesde" and config.sampling.corrector == "ald"
    assert config.sampling.n_steps_each == 5
    assert config.sampling.snr == pytest.approx(adv.snr, rel=1e-3)


def test_cli_on_npz_matches_function(tmp_path, capsys):
    images = toy_images()
    path = tmp_path / "toy.npz"
    np.savez(path, images=images.numpy()[:, 0])
    out = tmp_path / "advice.json"
    assert advise_cli(["--data", str(path), "--n-steps-each", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    adv = advisor.advise(images.float() / 255, n_steps_each=3)
    assert f"config.model.num_scales = {adv.num_scales}" in text
    saved = json.loads(out.read_text())
    assert saved["sigma_max"] == adv.sigma_max and saved["num_scales"] == adv.num_scales
    assert advise_cli(["--data", str(path), "--centered", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["distance"]["value"] == pytest.approx(
        2 * adv.distance.value, rel=1e-6)


def test_cli_builtin_digits(capsys):
    assert advise_cli(["--dataset", "digits"]) == 0
    text = capsys.readouterr().out
    assert "D = 64" in text and "1497 points" in text
    assert "config.sampling.corrector = 'ald'" in text


def test_cli_dimension_only_cifar10(capsys):
    assert advise_cli(["--dim", "3072", "--sigma-max", "50"]) == 0
    text = capsys.readouterr().out
    assert "config.model.num_scales = 220" in text and "no data" in text
    adv = advisor.advise_for_dimension(3072, 50.0)
    assert adv.distance is None and adv.num_scales == 220
    assert adv.step_lr == pytest.approx(advisor.best_step_size(adv.gamma, 5, 0.01)[0])
    assert advise_cli(["--dim", "3072"]) == 1
    assert "--dim needs --sigma-max" in capsys.readouterr().err


def test_cli_rejects_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((3, 4, 4)))
    assert advise_cli(["--data", str(bad)]) == 1
    assert "no 'images'" in capsys.readouterr().err
    assert advise_cli(["--data", str(tmp_path / "missing.npz")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_cli_config_reads_training_set_and_centering(monkeypatch, tmp_path):
    """--config: the config's training split via training.data, scaled as config.data.centered
    says (configs.load_config is swapped for a fixed config here)."""
    cfg = ConfigDict({"data": {"dataset": "DIGITS", "image_size": 8, "num_channels": 1,
                               "centered": True}})
    import configs
    monkeypatch.setattr(configs, "load_config", lambda name, overrides=None: cfg)
    out = tmp_path / "a.json"
    assert advise_cli(["--config", "digits_test", "--json", str(out)]) == 0
    centred = json.loads(out.read_text())
    assert advise_cli(["--dataset", "digits", "--json", str(out)]) == 0
    plain = json.loads(out.read_text())
    assert centred["centered"] and not plain["centered"]
    assert centred["distance"]["value"] == pytest.approx(2 * plain["distance"]["value"], rel=1e-6)


def test_cli_json_replaces_only_advice_it_wrote(tmp_path, capsys):
    """--json writes a new file or replaces advice `advise` wrote; an unrelated file (or a
    folder) is refused before the work and left as it was."""
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    assert advise_cli(["--dim", "10", "--sigma-max", "5", "--json", str(mine)]) == 1
    err = capsys.readouterr().err
    assert "never replaced" in err and "config.model.num_scales" not in err
    assert mine.read_text() == "mine"
    assert advise_cli(["--dim", "10", "--sigma-max", "5", "--json", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err
    out = tmp_path / "advice.json"
    assert advise_cli(["--dim", "10", "--sigma-max", "5", "--json", str(out)]) == 0
    assert advise_cli(["--dim", "12", "--sigma-max", "5", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["dim"] == 12


def test_cli_data_file_of_python_objects_is_refused_without_unsafe_advice(tmp_path, capsys):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    assert advise_cli(["--data", str(path)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "allow_pickle" not in err and "unsafe" not in err, err
