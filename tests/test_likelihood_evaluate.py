"""`python -m likelihood.evaluate` on the bundled digits with an exact-score oracle as the "model".

configs.load_config and networks.load_checkpoint / get_score_fn are replaced by stand-ins here,
so the test covers the script's own work: batching, dequantization seeds, resuming, the summary."""

import importlib
import json
import math

import pytest
import torch
from ml_collections import ConfigDict

from likelihood import evaluate
from sde_lib import VPSDE, oracle


def fake_config():
    c = ConfigDict()
    c.seed = 42
    c.data = ConfigDict(dict(dataset="DIGITS", image_size=8, num_channels=1, centered=False))
    c.training = ConfigDict(dict(sde="vpsde", continuous=True))
    c.model = ConfigDict(dict(beta_min=0.1, beta_max=20.0, num_scales=1000))
    c.eval = ConfigDict(dict(batch_size=3))
    return c


@pytest.fixture
def fake_pieces(monkeypatch):
    """Stand-ins for configs/networks; the score is that of a Gaussian on [0, 1]^64."""
    calls = {"score": 0}
    dist = oracle.gaussian(torch.full((64,), 0.3), 0.1, event_shape=(1, 8, 8))
    p = dist.marginal(VPSDE())

    def score(x, t):
        calls["score"] += 1
        return p.score(x, t)

    configs = importlib.import_module("configs")
    networks = importlib.import_module("networks")
    monkeypatch.setattr(configs, "load_config", lambda name, overrides=None: fake_config(),
                        raising=False)
    monkeypatch.setattr(networks, "load_checkpoint",
                        lambda path, config, ema=True: torch.nn.Identity(), raising=False)
    monkeypatch.setattr(networks, "get_score_fn", lambda sde, model, continuous: score,
                        raising=False)
    return calls


def run(tmp_path, *extra):
    ckpt = tmp_path / "checkpoint_1.pth"
    ckpt.write_bytes(b"")
    argv = ["--config", "fake", "--checkpoint", str(ckpt), "--no-progress",
            "--rtol", "1e-3", "--atol", "1e-3", "--n-probes", "2", "--device", "cpu", *extra]
    return evaluate.main(argv)


def lines(path):
    return [json.loads(s) for s in path.read_text().splitlines()]


def test_evaluate_records_batches_and_resumes(tmp_path, fake_pieces, capsys):
    out = tmp_path / "bpd.jsonl"
    assert run(tmp_path, "--num-batches", "2", "--out", str(out)) == 0
    first = lines(out)
    assert [r["batch"] for r in first] == [0, 1] and all(len(r["bpd"]) == 3 for r in first)
    assert all(r["nfe"] > 0 and r["eps"] == 1e-5 for r in first)
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["levels"] == 17 and first[0]["settings"]["levels"] == 17  # DIGITS' own
    bpd = torch.tensor([v for r in first for v in r["bpd"]], dtype=torch.float64)
    assert summary["num_images"] == 6 and summary["bpd"] == pytest.approx(bpd.mean().item())
    assert summary["bpd_stderr"] == pytest.approx(bpd.std().item() / math.sqrt(6))
    # 17 grey levels in [0, 1]: at most log2(17) bits/dim for any sensible model; a Gaussian
    # fit this loosely costs a few bits more, never a negative number.
    assert 0 < summary["bpd"] < 12

    # Resume: the recorded batches are kept as they are, only batch 2 is computed.
    calls_before = fake_pieces["score"]
    assert run(tmp_path, "--num-batches", "3", "--out", str(out)) == 0
    second = lines(out)
    assert second[:2] == first and second[2]["batch"] == 2 and second[2]["start"] == 6
    assert fake_pieces["score"] > calls_before

    # The per-batch seed makes a recomputed batch identical.
    out.write_text("\n".join(json.dumps(r) for r in [second[0], second[2]]) + "\n")
    assert run(tmp_path, "--num-batches", "3", "--out", str(out)) == 0
    third = lines(out)
    assert third[1]["bpd"] == first[1]["bpd"]

    # Other settings on the same file: refused, file untouched.
    with pytest.raises(ValueError, match="other settings"):
        run(tmp_path, "--num-batches", "3", "--out", str(out), "--estimator", "gaussian")
    assert lines(out) == third


def test_evaluate_rejects_data_off_the_declared_grid(tmp_path, fake_pieces):
    with pytest.raises(ValueError, match="256-level grid"):
        run(tmp_path, "--num-batches", "1", "--out", str(tmp_path / "x.jsonl"), "--bits", "8")
