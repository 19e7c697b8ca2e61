"""Bits/dim of a split by the original's test protocol (`evaluation.bits_per_dim`, `python -m
sde_lib.run likelihood`): per-image noise, repeats with recorded seeds that a rerun extends, the
mean and its standard error against the closed form on Gaussian data, and the same records on 1
and 2 gloo processes (the real torchrun launcher), also after a SIGKILL of a rank."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from cases import counting_gaussian_score
from distributed_runs import kill_rank_when, no_temp_files, run, start, torchrun
from evaluation.bits_per_dim import evaluate_split, image_generators, repeat_seed, summarize
from likelihood.bound import bound
from likelihood.bpd import dequantize_images
from likelihood.divergence import draw_probes
from sde_base.fileio import temp_name
from sde_cli.app import main as cli
from sde_lib import VPSDE
from solvers.common import coefficients
from training.data import ImageArrayDataset

# --------------------------------------------------------------------------- per-image noise


def test_an_images_noise_depends_on_seed_repeat_and_index_only():
    """Image i of repeat r draws its dequantization noise, its probes and the bound's draws from
    its own generator: the same in any batch, different in another repeat."""
    images = torch.randint(0, 17, (4, 1, 3, 3)).float() / 16

    def draws(rows, repeat=0):
        y, _ = dequantize_images(images[rows], (0.0, 1.0), levels=17,
                                 generator=image_generators(7, repeat, rows))
        v = draw_probes(2, y, "rademacher", image_generators(7, repeat, rows))
        b = bound(lambda x, t: -x, VPSDE(), y, n_samples=2,
                  generator=image_generators(7, repeat, rows)).nll
        return y, v, b

    y, v, b = draws(range(4))
    y2, v2, b2 = draws(range(2, 4))
    assert torch.equal(y[2:], y2) and torch.equal(v[:, 2:], v2) and torch.equal(b[2:], b2)
    y3, _, _ = draws(range(4), repeat=1)
    assert not torch.isclose(y, y3).any()  # fresh dequantization noise for each repeat
    assert repeat_seed(7, 0) != repeat_seed(7, 1)


# --------------------------------------------------------------------------- repeats

SETTINGS = dict(data_range=(0.0, 1.0), seed=3, levels=17, rtol=1e-3, atol=1e-3, progress=False)


def digits_like(n=6):
    g = torch.Generator().manual_seed(0)
    return ImageArrayDataset(torch.randint(0, 17, (n, 1, 3, 3), generator=g).float() / 16,
                             levels=17)


def gaussian_score(mean=0.5, std=0.25, shape=(1, 3, 3)):
    return counting_gaussian_score(mean, std ** 2, shape)


def lines(path):
    return path.read_text().splitlines()


def test_repeat_seeds_are_recorded_and_more_repeats_extend_the_records(tmp_path):
    fn, sde = gaussian_score()
    out, said = tmp_path / "r.jsonl", []
    two = evaluate_split(fn, sde, digits_like(), batch_size=4, out=str(out), key="k",
                         repeats=2, log=said.append, **SETTINGS)
    first = lines(out)
    recs = [json.loads(s) for s in first]
    assert [(r["repeat"], r["image"]) for r in recs] == [(r, i) for r in (0, 1) for i in range(6)]
    assert all(r["seed"] == repeat_seed(3, r["repeat"]) for r in recs)
    assert two["repeat_seeds"] == [repeat_seed(3, 0), repeat_seed(3, 1)]
    assert two["repeats"] == 2 and two["num_images"] == 6 and two["num_values"] == 12
    assert all(recs[i]["bpd"] != recs[6 + i]["bpd"] for i in range(6))  # fresh noise
    assert said == ["bits/dim: computed 12 images in 4 batch(es) on 1 process(es)"]

    # A third repeat extends the same records: the first two are kept, only it is computed.
    said.clear()
    three = evaluate_split(fn, sde, digits_like(), batch_size=4, out=str(out), key="k",
                           repeats=3, log=said.append, **SETTINGS)
    assert lines(out)[:12] == first and len(lines(out)) == 18
    assert said[-1] == "bits/dim: computed 6 images in 2 batch(es) on 1 process(es)"
    assert three["repeat_seeds"] == [repeat_seed(3, r) for r in range(3)]
    assert len(set(three["repeat_seeds"])) == 3
    # Fewer repeats summarize the first ones from the records, computing nothing.
    calls = fn.calls
    one = evaluate_split(fn, sde, digits_like(), batch_size=4, out=str(out), key="k",
                         repeats=1, log=said.append, **SETTINGS)
    assert fn.calls == calls and len(lines(out)) == 18
    assert one == summarize({(0, r["image"]): r for r in recs[:6]})


def test_the_standard_error_is_over_images_of_their_means_over_repeats(tmp_path):
    fn, sde = gaussian_score()
    s = evaluate_split(fn, sde, digits_like(), batch_size=4, out=str(tmp_path / "r.jsonl"),
                       key="k", repeats=3, **SETTINGS)
    bpd = torch.tensor([json.loads(x)["bpd"] for x in lines(tmp_path / "r.jsonl")],
                       dtype=torch.float64).reshape(3, 6)
    assert s["bpd"] == pytest.approx(bpd.mean().item(), rel=1e-12)
    assert s["bpd_stderr"] == pytest.approx(bpd.mean(0).std().item() / math.sqrt(6), rel=1e-12)
    # Not the naive error of 18 independent values, which the correlated repeats would shrink.
    assert s["bpd_stderr"] != pytest.approx(bpd.std().item() / math.sqrt(18), rel=1e-3)
    assert s["bpd_repeats"] == pytest.approx(bpd.mean(1).tolist(), rel=1e-12)
    assert "each image's mean over the repeats" in s["stderr"]


# --------------------------------------------------------------------------- closed form

def expected_bits_per_dim(mean, std, levels, sde, eps):
    """E over the quantized data and over uniform dequantization of -log2 p_eps(y) per
    dimension, plus the offset log2(L) (data range [0, 1]), in closed form.

    Data: each pixel x ~ N(mean, std^2) quantized to level k = clamp(round((L - 1) x), 0, L - 1),
    so P(k) is the normal mass of [(k - 1/2) / (L - 1), (k + 1/2) / (L - 1)) (the end levels
    take the tails). Dequantized: y = (k + u) / L, u ~ U[0, 1), so E[y | k] = (k + 1/2) / L and
    Var[y | k] = 1 / (12 L^2). Model: p_eps = N(m, v) per dimension with m = alpha mean,
    v = alpha^2 std^2 + sigma^2 at eps (the Gaussian's marginal; its exact score is the model),
    and -log p_eps(y) = log(2 pi v) / 2 + (y - m)^2 / (2 v) is quadratic in y, so
    E[(y - m)^2 | k] = (E[y | k] - m)^2 + Var[y | k]."""
    a, s = coefficients(sde, torch.tensor([eps], dtype=torch.float64))
    m, v = float(a) * mean, float(a) ** 2 * std ** 2 + float(s) ** 2
    normal = torch.distributions.Normal(torch.tensor(mean, dtype=torch.float64), std)
    edges = [(k + 0.5) / (levels - 1) for k in range(levels - 1)]
    cdf = [0.0] + [normal.cdf(torch.tensor(e, dtype=torch.float64)).item() for e in edges] + [1.0]
    nats = sum((cdf[k + 1] - cdf[k]) * (0.5 * math.log(2 * math.pi * v)
                                        + (((k + 0.5) / levels - m) ** 2
                                           + 1 / (12 * levels ** 2)) / (2 * v))
               for k in range(levels))
    return nats / math.log(2) + math.log2(levels)


def test_five_repeats_agree_with_the_gaussian_closed_form(tmp_path):
    """The exact score of N(0.5, 0.25^2 I) in 16 dimensions on data quantized from it to 4
    levels: the 5-repeat mean is within 3 of its standard errors of the closed form over the
    data distribution. The Hutchinson estimate is exact here (a diagonal Jacobian with a
    Rademacher probe), and the prior's mismatch at T is below 1e-4 nats per dimension."""
    mean, std, L, n = 0.5, 0.25, 4, 384
    fn, sde = gaussian_score(mean, std, shape=(1, 4, 4))
    g = torch.Generator().manual_seed(1)
    x = mean + std * torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64)
    k = (x * (L - 1)).round().clamp(0, L - 1)
    data = ImageArrayDataset((k / (L - 1)).float(), levels=L)
    s = evaluate_split(fn, sde, data, data_range=(0.0, 1.0), batch_size=128, levels=L, seed=0,
                       out=str(tmp_path / "g.jsonl"), key="g", repeats=5, rtol=1e-5, atol=1e-5,
                       progress=False)
    truth = expected_bits_per_dim(mean, std, L, sde, sde.likelihood_eps)
    assert s["repeats"] == 5 and s["num_images"] == n and s["num_values"] == 5 * n
    assert abs(s["bpd"] - truth) < 3 * s["bpd_stderr"], (s["bpd"], truth, s["bpd_stderr"])
    # Sharper, on these very images: only the dequantization noise is left, whose standard
    # error comes from the spread over the repeats; this catches a missing Var[u] term too.
    a, sig = coefficients(sde, torch.tensor([sde.likelihood_eps], dtype=torch.float64))
    m, v = float(a) * mean, float(a) ** 2 * std ** 2 + float(sig) ** 2
    per_image = ((0.5 * math.log(2 * math.pi * v) + (((k.flatten(1) + 0.5) / L - m) ** 2
                 + 1 / (12 * L ** 2)) / (2 * v)).mean(1) / math.log(2) + math.log2(L))
    values = torch.tensor([json.loads(t)["bpd"] for t in lines(tmp_path / "g.jsonl")],
                          dtype=torch.float64).reshape(5, n)
    noise_se = (values.var(0).mean() / (5 * n)).sqrt().item()
    assert abs(s["bpd"] - per_image.mean().item()) < 3 * noise_se + 1e-4
    assert 1 / (12 * L ** 2) / (2 * v) / math.log(2) > 10 * noise_se  # the test can tell


# --------------------------------------------------------------------------- processes

ARGS = ["--num-images", "16", "--batch", "2", "--repeats", "2", "--rtol", "1e-3", "--atol",
        "1e-3", "--no-progress"]


def _records(folder):
    (path,) = folder.glob("bpd_test_*.jsonl")
    return path


def _summary(folder):
    (path,) = folder.glob("bpd_test_*.json")
    s = json.loads(path.read_text())
    for run_specific in ("records", "seconds", "processes"):
        s.pop(run_specific)
    return s


@pytest.fixture(scope="module")
def one_process(tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bpd_one")
    assert cli(["likelihood", "--checkpoint", str(tiny_checkpoint), *ARGS, "--out",
                str(folder)]) == 0
    return folder


def test_two_processes_give_the_records_and_summary_of_one(tiny_checkpoint, one_process,
                                                           tmp_path):
    out = torchrun(["likelihood", "--checkpoint", str(tiny_checkpoint), *ARGS, "--out",
                    str(tmp_path)], nproc=2)
    assert "computed 32 images in 16 batch(es) on 2 process(es)" in out
    assert out.count("bits/dim (probability-flow ODE") == 1  # rank 0 alone reports
    assert _records(tmp_path).read_bytes() == _records(one_process).read_bytes()  # bitwise
    assert _summary(tmp_path) == _summary(one_process)
    assert _summary(tmp_path)["repeats"] == 2 and _summary(tmp_path)["num_images"] == 16
    no_temp_files(tmp_path)


def _dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_a_killed_rank_loses_only_unfinished_batches(tiny_checkpoint, one_process, tmp_path):
    argv = ["likelihood", "--checkpoint", str(tiny_checkpoint), *ARGS, "--out", str(tmp_path)]

    def first_round_written():
        found = list(tmp_path.glob("bpd_test_*.jsonl"))
        return bool(found) and bool(found[0].read_text().strip())

    # rank 1 is killed inside a later batch
    ((code, _, err),) = kill_rank_when(start(argv, world=2), first_round_written, timeout=180)
    assert code != 0 and "did not arrive" in err and "rerun to finish" in err
    kept = lines(_records(tmp_path))
    assert 0 < len(kept) < 32 and len(kept) % 2 == 0  # whole batches of 2 images
    # A writer that died mid-write leaves its temporary file: the rerun removes it.
    records = _records(tmp_path)
    stale = os.path.basename(temp_name(records)).replace(f".{os.getpid()}.", f".{_dead_pid()}.")
    (tmp_path / stale).write_text("half a file")
    outs = run(argv, world=2)
    assert f"computed {32 - len(kept)} images in {(32 - len(kept)) // 2} batch(es)" in outs[0]
    final = lines(records)
    assert set(kept) <= set(final)  # finished images are kept as they were
    assert records.read_bytes() == _records(one_process).read_bytes()
    assert _summary(tmp_path) == _summary(one_process)
    no_temp_files(tmp_path)
