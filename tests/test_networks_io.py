"""Checkpoint io against an original score_sde_pytorch checkpoint and its reference outputs;
the EMA rule and the score-function conventions against hand computations."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import configs
import networks
from networks import CheckpointError, ExponentialMovingAverage, get_score_fn
from sde_lib import EDMVESDE, VESDE, VPSDE, CosineVPSDE, subVPSDE

from cases import Payload

@pytest.fixture(scope="module")
def fixture(score_sde_ncsnpp):
    """The original code's NCSN++ checkpoint and outputs (tests/conftest.py)."""
    return score_sde_ncsnpp


def ve_sde(config):
    m = config.model
    return VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales)


def score_of(model, config, io, continuous=True):
    with torch.no_grad():
        return get_score_fn(ve_sde(config), model, continuous=continuous)(io["x"], io["t"])


def assert_rel_close(got, want, rel=1e-5):
    err = (got - want).abs().max().item()
    assert err <= rel * want.abs().max().item(), (err, want.abs().max().item())


# ---------------------------------------------------------------- original checkpoints


@pytest.mark.parametrize("ema,key", [(True, "score_ema"), (False, "score_model")])
def test_original_checkpoint_gives_reference_scores(fixture, ema, key):
    model = networks.load_checkpoint(fixture["path"], fixture["config"], ema=ema)
    assert not model.training
    got = score_of(model, fixture["config"], fixture["io"], fixture["continuous"])
    assert_rel_close(got, fixture["io"][key])


def test_ema_and_live_weights_differ(fixture):
    a = networks.load_checkpoint(fixture["path"], fixture["config"], ema=True)
    b = networks.load_checkpoint(fixture["path"], fixture["config"], ema=False)
    diff = [not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters())]
    assert any(diff)


def test_save_load_round_trip(fixture, tmp_path):
    cfg = fixture["config"]
    live = networks.load_checkpoint(fixture["path"], cfg, ema=False)
    ema = ExponentialMovingAverage(live.parameters(), decay=cfg.model.ema_rate)
    ema.load_state_dict(networks.read_checkpoint(fixture["path"])["ema"])
    opt = torch.optim.Adam(live.parameters(), lr=1e-4)
    out = tmp_path / "ckpt" / "checkpoint_1.pth"
    networks.save_checkpoint(out, live, cfg, ema=ema, optimizer=opt, step=1234,
                             extra={"data_order": {"epoch": 3, "perm": torch.arange(5)}})
    assert sorted(os.listdir(out.parent)) == ["checkpoint_1.pth"]  # no temporary file left
    raw = networks.read_checkpoint(out)
    assert raw["format"] == networks.FORMAT and raw["step"] == 1234
    assert configs.config_from_json(raw["config"]).to_dict() == cfg.to_dict()
    assert not any(k.startswith("module.") for k in raw["model"])
    for ema_flag in (True, False):
        ref = networks.load_checkpoint(fixture["path"], cfg, ema=ema_flag)
        again = networks.load_checkpoint(out, cfg, ema=ema_flag)
        assert torch.equal(score_of(again, cfg, fixture["io"]), score_of(ref, cfg, fixture["io"]))


def test_mismatched_config_lists_keys(fixture):
    cfg = fixture["config"].copy_and_resolve_references()
    cfg.model.nf = 8
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: .*all_modules\.1\.weight"):
        networks.load_checkpoint(fixture["path"], cfg)
    cfg = fixture["config"].copy_and_resolve_references()
    cfg.model.num_res_blocks = 2
    with pytest.raises(CheckpointError, match="missing keys: all_modules") as info:
        networks.load_checkpoint(fixture["path"], cfg, ema=False)
    assert "ve_ncsnpp_cifar.pth" in str(info.value)


def test_toolkit_checkpoint_config_must_match(fixture, tmp_path):
    cfg = fixture["config"]
    model = networks.load_checkpoint(fixture["path"], cfg, ema=False)
    out = tmp_path / "c.pth"
    networks.save_checkpoint(out, model, cfg)
    other = cfg.copy_and_resolve_references()
    other.model.dropout = 0.2
    other.data.centered = True
    with pytest.raises(CheckpointError) as info:
        networks.load_checkpoint(out, other, ema=False)
    msg = str(info.value)
    assert "model.dropout: checkpoint 0.1, config 0.2" in msg
    assert "data.centered: checkpoint False, config True" in msg
    networks.load_checkpoint(out, other, ema=False, check_config=False)  # same shapes: loads
    with pytest.raises(CheckpointError, match="no EMA weights"):
        networks.load_checkpoint(out, cfg, ema=True)  # saved without an EMA


def test_ema_shadow_mismatch_is_an_error(fixture, tmp_path):
    raw = networks.read_checkpoint(fixture["path"])
    raw["ema"]["shadow_params"] = raw["ema"]["shadow_params"][:-1]
    bad = tmp_path / "short_ema.pth"
    torch.save(raw, bad)
    with pytest.raises(CheckpointError, match="215 shadow parameters for 216"):
        networks.load_checkpoint(bad, fixture["config"], ema=True)
    networks.load_checkpoint(bad, fixture["config"], ema=False)  # the live weights still fit
    raw = networks.read_checkpoint(fixture["path"])
    raw["ema"]["shadow_params"][3] = torch.zeros(7)
    torch.save(raw, bad)
    with pytest.raises(CheckpointError,
                       match=r"shadow parameter 3 \(all_modules\.\S+\) has shape \(7,\)"):
        networks.load_checkpoint(bad, fixture["config"], ema=True)


# ---------------------------------------------------------------- unreadable files


def test_truncated_file(fixture, tmp_path):
    data = Path(fixture["path"]).read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth.*truncated, corrupt"):
        networks.load_checkpoint(bad, fixture["config"])


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_garbage_file(tmp_path, content):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match="garbage.pth"):
        networks.read_checkpoint(bad)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        networks.read_checkpoint(tmp_path / "nowhere.pth")


def test_arbitrary_objects_are_refused(tmp_path):
    marker = tmp_path / "was_unpickled"
    bad = tmp_path / "evil.pth"
    torch.save({"model": {}, "step": 0, "payload": Payload(str(marker))}, bad)
    with pytest.raises(CheckpointError, match="refusing to load .*evil.pth"):
        networks.read_checkpoint(bad)
    assert not marker.exists()


def test_not_a_checkpoint_dict(tmp_path):
    bad = tmp_path / "weights.pth"
    torch.save({"a": torch.ones(2)}, bad)
    with pytest.raises(CheckpointError, match="not a score-model checkpoint"):
        networks.read_checkpoint(bad)


def test_save_refuses_non_plain_extra(tmp_path):
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"extra\['obj'\]"):
        networks.save_checkpoint(tmp_path / "x.pth", model, None, extra={"obj": object()})
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- training resume


def test_load_state_resumes_model_ema_optimizer(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    ema = ExponentialMovingAverage(model.parameters(), decay=0.9)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
        ema.update(model.parameters())
    path = tmp_path / "meta.pth"
    networks.save_checkpoint(path, model, None, ema=ema, optimizer=opt, step=3,
                             extra={"data_order": [2, 0, 1]})

    torch.manual_seed(1)
    model2 = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    ema2 = ExponentialMovingAverage(model2.parameters(), decay=0.5)
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    step, extra = networks.load_state(path, model2, ema=ema2, optimizer=opt2)
    assert step == 3 and extra == {"data_order": [2, 0, 1]}
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    assert ema2.decay == 0.9 and ema2.num_updates == 3
    for s, t in zip(ema.shadow_params, ema2.shadow_params):
        assert torch.equal(s, t)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]

    wrong = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    with pytest.raises(CheckpointError,
                       match=r"mis-shaped keys: 0\.weight \(4, 3\) \(model \(5, 3\)\)"):
        networks.load_state(path, wrong)


# ---------------------------------------------------------------- EMA


def test_ema_update_rule_by_hand():
    p = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    frozen = nn.Parameter(torch.tensor([5.0], dtype=torch.float64), requires_grad=False)
    ema = ExponentialMovingAverage([p, frozen], decay=0.999)
    assert len(ema.shadow_params) == 1  # only trainable parameters are averaged
    shadow = np.array([1.0, -2.0])
    for n, value in enumerate([[3.0, 0.0], [2.0, 2.0], [-1.0, 4.0]], start=1):
        with torch.no_grad():
            p.copy_(torch.tensor(value, dtype=torch.float64))
        ema.update([p, frozen])
        d = min(0.999, (1 + n) / (10 + n))          # 2/11, 3/12, 4/13
        shadow = shadow - (1 - d) * (shadow - np.array(value))
        np.testing.assert_allclose(ema.shadow_params[0].numpy(), shadow, rtol=1e-14)
    assert ema.num_updates == 3
    # By hand: 1 - (9/11)(1 - 3) = 29/11; 29/11 - (3/4)(29/11 - 2) = 95/44;
    # 95/44 - (9/13)(95/44 + 1) = -4/143.
    assert math.isclose(float(ema.state_dict()["shadow_params"][0][0]), -4 / 143, rel_tol=1e-13)

    fixed = ExponentialMovingAverage([p], decay=0.9, use_num_updates=False)
    start = p.detach().clone()
    with torch.no_grad():
        p.add_(1.0)
    fixed.update([p])
    torch.testing.assert_close(fixed.shadow_params[0], start + 0.1 * 1.0)
    assert fixed.state_dict()["num_updates"] is None


def test_ema_copy_store_restore_and_state():
    model = nn.Linear(3, 2)
    ema = ExponentialMovingAverage(model.parameters(), decay=0.5)
    with torch.no_grad():
        for q in model.parameters():
            q.add_(1.0)
    ema.update(model.parameters())
    live = [q.detach().clone() for q in model.parameters()]
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    for q, s in zip(model.parameters(), ema.shadow_params):
        assert torch.equal(q, s)
    ema.restore(model.parameters())
    for q, v in zip(model.parameters(), live):
        assert torch.equal(q, v)
    other = ExponentialMovingAverage(nn.Linear(3, 2).parameters(), decay=0.1)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.5 and other.num_updates == 1
    with pytest.raises(ValueError, match="shape"):
        wider = ExponentialMovingAverage(nn.Linear(4, 2).parameters(), 0.9)
        wider.load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="decay"):
        ExponentialMovingAverage(model.parameters(), decay=1.5)
    with pytest.raises(ValueError, match="trainable parameters"):
        ema.update(nn.Linear(3, 2, bias=False).parameters())


# ---------------------------------------------------------------- score conventions


class RecordingNet(nn.Module):
    """Returns a fixed tensor and records the labels it is given."""

    def __init__(self, out):
        super().__init__()
        self.out = out
        self.labels = None

    def forward(self, x, labels):
        self.labels = labels
        return self.out.clone()


@pytest.fixture
def probe():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 3, 3, generator=g)
    out = torch.randn(4, 2, 3, 3, generator=g)
    t = torch.tensor([1e-3, 0.25, 0.5, 1.0])
    return x, out, t


def vp_log_mean_coeff(t, b0=0.1, b1=20.0):
    return -0.25 * t ** 2 * (b1 - b0) - 0.5 * t * b0


def test_vp_continuous_convention(probe):
    x, out, t = probe
    net = RecordingNet(out)
    score = get_score_fn(VPSDE(), net, continuous=True)(x, t)
    torch.testing.assert_close(net.labels, t * 999)
    std = np.sqrt(1 - np.exp(2 * vp_log_mean_coeff(t.double().numpy())))
    expected = -out.double() / torch.from_numpy(std).view(-1, 1, 1, 1)
    torch.testing.assert_close(score.double(), expected, rtol=1e-5, atol=1e-6)


def test_vp_discrete_convention(probe):
    x, out, t = probe
    net = RecordingNet(out)
    N = 1000
    score = get_score_fn(VPSDE(N=N), net, continuous=False)(x, t)
    torch.testing.assert_close(net.labels, t * (N - 1))
    betas = np.linspace(0.1 / N, 20 / N, N)
    abar = np.cumprod(1 - betas)
    idx = np.floor(t.numpy() * (N - 1)).astype(int)
    std = np.sqrt(1 - abar[idx])
    expected = -out.double() / torch.from_numpy(std).view(-1, 1, 1, 1)
    # float32 sqrt(1 - abar) loses ~1e-4 relative where abar ~ 1 (the original's tables are
    # float32 too); the neighbouring index would be off by > 4e-4 at t = 0.25, 0.5.
    torch.testing.assert_close(score.double(), expected, rtol=2e-4, atol=0)


@pytest.mark.parametrize("continuous", [True, False])
def test_subvp_convention(probe, continuous):
    x, out, t = probe
    net = RecordingNet(out)
    score = get_score_fn(subVPSDE(), net, continuous=continuous)(x, t)
    torch.testing.assert_close(net.labels, t * 999)  # always continuous labels
    std = 1 - np.exp(2 * vp_log_mean_coeff(t.double().numpy()))  # sub-VP std (Eq. 29)
    expected = -out.double() / torch.from_numpy(std).view(-1, 1, 1, 1)
    torch.testing.assert_close(score.double(), expected, rtol=1e-5, atol=1e-6)


def test_ve_continuous_convention(probe):
    x, out, t = probe
    net = RecordingNet(out)
    score = get_score_fn(VESDE(0.01, 50.0), net, continuous=True)(x, t)
    sigma = 0.01 * (50.0 / 0.01) ** t.double()
    torch.testing.assert_close(net.labels.double(), sigma, rtol=1e-5, atol=0)
    assert torch.equal(score, out)  # VE networks output the score


def test_ve_discrete_convention(probe):
    x, out, t = probe
    net = RecordingNet(out)
    score = get_score_fn(VESDE(0.01, 50.0, N=10), net, continuous=False)(x, t)
    assert net.labels.dtype == torch.long
    assert net.labels.tolist() == [9, 7, 4, 0]  # round((1 - t) * 9): 8.991, 6.75, 4.5 -> 4, 0
    assert torch.equal(score, out)


@pytest.mark.parametrize("continuous", [True, False])
def test_cosine_vp_takes_time_labels_on_its_own_end(probe, continuous):
    """cosine VP (T = 0.995): labels 999 t / T, score -net / sigma(t); no discrete labels."""
    x, out, t = probe
    sde = CosineVPSDE()
    t = t * sde.T
    net = RecordingNet(out)
    score = get_score_fn(sde, net, continuous=continuous)(x, t)
    torch.testing.assert_close(net.labels, t * (999 / 0.995))
    s = 0.008
    abar = (np.cos((t.double().numpy() + s) / (1 + s) * np.pi / 2) ** 2
            / np.cos(s / (1 + s) * np.pi / 2) ** 2)
    expected = -out.double() / torch.from_numpy(np.sqrt(1 - abar)).view(-1, 1, 1, 1)
    torch.testing.assert_close(score.double(), expected, rtol=1e-5, atol=1e-6)


def test_edm_takes_sigma_labels(probe):
    """EDM (sigma(t) = t on [0.002, 80]): the network takes sigma = t and outputs the score."""
    x, out, t = probe
    t = t * 80.0
    net = RecordingNet(out)
    score = get_score_fn(EDMVESDE(), net, continuous=False)(x, t)
    assert torch.equal(net.labels, t) and torch.equal(score, out)


def test_score_fn_checks_time_and_sde(probe):
    x, out, _ = probe
    score_fn = get_score_fn(VESDE(), RecordingNet(out))
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        score_fn(x, torch.rand(4, 1))
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        score_fn(x, torch.rand(3))
    with pytest.raises(ValueError, match="float tensor"):
        score_fn(x, torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, T\]"):
        score_fn(x, torch.tensor([0.5, 0.5, 0.5, 1.5]))

    class OtherSDE:
        pass

    with pytest.raises(TypeError, match="OtherSDE"):
        get_score_fn(OtherSDE(), RecordingNet(out))


def test_score_fn_leaves_the_mode_alone(probe):
    x, out, t = probe
    net = RecordingNet(out).train()
    get_score_fn(VPSDE(), net)(x, t)
    assert net.training


# ---------------------------------------------------------------- create_model


def test_create_model_device(tmp_path):
    cfg = configs.get_config("ve/ncsnv2/cifar10")
    cfg.model.nf = 4
    cfg.device = "cpu"
    assert next(networks.create_model(cfg).parameters()).device.type == "cpu"
    cfg.device = "auto"
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(networks.create_model(cfg).parameters()).device.type == want
    cfg.device = "no-such-device"
    with pytest.raises(ValueError, match="no-such-device"):
        networks.create_model(cfg)
    cfg.model.name = "no_such_model"
    with pytest.raises(KeyError, match="no_such_model"):
        networks.create_model(cfg, device="cpu")


class _BlockedGlobal:
    def __reduce__(self):
        return (print, ("never printed",))


def test_a_blocked_global_is_named_without_advice_to_allowlist_it(tmp_path):
    """PyTorch's weights-only error names the blocked global and, in the same line, advises
    allowlisting it (add_safe_globals) 'if you trust' it: only the name reaches the user."""
    from networks.checkpoint import torch_load_detail
    path = tmp_path / "evil.bin"
    torch.save({"w": _BlockedGlobal()}, path)
    with pytest.raises(Exception) as e:
        torch.load(path, weights_only=True)
    detail = torch_load_detail(e.value)
    assert "print" in detail and "\n" not in detail, detail
    for advice in ("safe_globals", "trust", "weights_only", "allowlist"):
        assert advice not in detail, detail
