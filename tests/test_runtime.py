"""The fast path (networks/runtime.py): bf16 autocast, channels_last, torch.compile, TF32 switches,
fused-Adam arguments, and the benchmark script's CPU smoke run.

Error bounds below were measured first on this CPU (torch 2.13, 1 thread; see
benchmarks/RESULTS.md, "GPU fast path") and set at about twice the measured value:
  the score_sde_pytorch fixture (NCSN++ VE, Fourier embedding, trained weights): bf16 vs fp32 score,
    relative L2 0.0072, relative max 0.0104;
  full-width DDPM++ (vp/cifar10_ddpmpp_continuous, random init, one 32x32 image): rel L2 0.0063;
  exact-score Gaussian sampled through a real autocast matmul: per-sample Heun trajectories
    differ by 1.0% (rel L2), the distribution errors by < 0.15 of their Monte Carlo std.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import configs
import networks
from benchmarks import gpu
from networks import get_score_fn, runtime
from networks.runtime import RuntimeOptions
from sde_lib import VESDE, VPSDE, oracle



def rel_l2(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def rel_max(got, want):
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


# ---------------------------------------------------------------- options and switches


def test_options_from_config_and_validation():
    config = configs.get_config("vp/cifar10_ddpmpp_continuous")
    options = RuntimeOptions.from_config(config)
    assert options == RuntimeOptions()
    assert not options.is_fast and not options.use_tf32 and options.autocast_dtype is None
    config.runtime.precision, config.runtime.channels_last = "bf16", True
    options = RuntimeOptions.from_config(config)
    assert options.precision == "bf16" and options.channels_last and not options.compile
    assert options.autocast_dtype is torch.bfloat16 and options.use_tf32 and options.is_fast
    assert options.score_options() == {"precision": "bf16", "channels_last": True}
    assert RuntimeOptions(precision=torch.bfloat16).precision == "bf16"
    assert RuntimeOptions(precision="float16").precision == "fp16"
    assert not RuntimeOptions(precision="bf16", tf32=False).use_tf32
    with pytest.raises(ValueError, match="precision"):
        RuntimeOptions(precision="int8")
    with pytest.raises(ValueError, match="compile_mode"):
        RuntimeOptions(compile=True, compile_mode="fastest")
    with pytest.raises(ValueError, match="channels_last"):
        RuntimeOptions(channels_last="yes")
    with pytest.raises(ValueError, match="precision"):
        get_score_fn(VESDE(), nn.Identity(), precision="fp8")


def test_set_fast_math_changes_nothing_off_cuda():
    before = [(ns, name, getattr(ns, name)) for ns, name, _ in runtime._tf32_switches()]
    before.append((torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark))
    state = runtime.set_fast_math(RuntimeOptions(precision="bf16"), device="cpu")
    assert state == []
    assert all(getattr(ns, name) == value for ns, name, value in before)


def test_set_fast_math_on_cuda_sets_and_restores_the_switches():
    # The switches are plain module flags, settable without a GPU: check what a CUDA run sets.
    switches = runtime._tf32_switches()
    before = {(id(ns), name): getattr(ns, name) for ns, name, _ in switches}
    bench_before = torch.backends.cudnn.benchmark
    assert runtime.set_fast_math(RuntimeOptions(), device="cuda") == []  # plain fp32: untouched
    state = runtime.set_fast_math(RuntimeOptions(precision="bf16"), device="cuda")
    try:
        assert all(getattr(ns, name) == fast for ns, name, fast in switches)
        assert torch.backends.cudnn.benchmark is True
    finally:
        runtime.restore_fast_math(state)
    assert {(id(ns), name): getattr(ns, name) for ns, name, _ in switches} == before
    assert torch.backends.cudnn.benchmark == bench_before
    # compile alone: cudnn.benchmark but no TF32 (fp32 numbers unchanged)
    with runtime.fast_math(RuntimeOptions(compile=True), device="cuda"):
        assert torch.backends.cudnn.benchmark is True
        assert {(id(ns), name): getattr(ns, name) for ns, name, _ in switches} == before
    assert torch.backends.cudnn.benchmark == bench_before


def test_fused_adam_kwargs():
    assert runtime.fused_adam_kwargs("cuda") == {"fused": True}
    assert runtime.fused_adam_kwargs(torch.device("cuda", 1)) == {"fused": True}
    assert runtime.fused_adam_kwargs("cpu") == {}
    p = nn.Parameter(torch.ones(3))
    torch.optim.Adam([p], lr=0.1, **runtime.fused_adam_kwargs("cpu"))


# ---------------------------------------------------------------- the score_sde_pytorch fixture


@pytest.fixture(scope="module")
def ve_fixture(score_sde_ncsnpp):
    """The original code's NCSN++ checkpoint and outputs (tests/conftest.py)."""
    return score_sde_ncsnpp


def _fixture_model(fx):
    return networks.load_checkpoint(fx["path"], fx["config"], ema=True)


def _score(fx, model, **options):
    with torch.no_grad():
        score_fn = get_score_fn(fx["sde"], model, fx["continuous"], **options)
        return score_fn(fx["io"]["x"], fx["io"]["t"])


def test_bf16_score_on_fixture_is_close_to_fp32(ve_fixture):
    model = _fixture_model(ve_fixture)
    fp32 = _score(ve_fixture, model)
    torch.testing.assert_close(fp32, ve_fixture["io"]["score_ema"], rtol=1e-5,
                               atol=1e-5 * fp32.abs().max().item())
    bf16 = _score(ve_fixture, model, precision="bf16")
    assert bf16.dtype == torch.float32 and bf16.is_contiguous()
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights untouched
    # measured: rel L2 0.0072, rel max 0.0104 (trained Fourier-embedding NCSN++)
    assert rel_l2(bf16, fp32) < 0.015
    assert rel_max(bf16, fp32) < 0.025
    assert rel_l2(bf16, fp32) > 1e-4  # the network really ran in bf16
    # fp16 goes through the same path (not a recommended setting: bf16 needs no loss scaling)
    fp16 = _score(ve_fixture, model, precision="fp16")
    assert fp16.dtype == torch.float32 and rel_l2(fp16, fp32) < 0.002  # measured 0.00096


def test_bf16_score_keeps_labels_and_std_division_in_fp32():
    """VP: score = -net(x, 999 t) / sigma(t). The labels must reach the network unrounded, and a
    bf16 network output (here exactly 1) must be divided by sigma in fp32: in bf16, -1 / sigma
    would carry a relative rounding error of up to 2^-9."""

    class OnesNet(nn.Module):
        def forward(self, x, labels):
            self.labels = labels
            flat = torch.ones_like(x).flatten(1)
            out = F.linear(flat, torch.eye(flat.shape[1]))  # an autocast op: bf16 ones
            self.out_dtype = out.dtype
            return out.reshape(x.shape)

    sde, net = VPSDE(), OnesNet()
    x = torch.zeros(3, 1, 2, 2)
    t = torch.tensor([0.123457, 0.5, 0.987654])
    got = get_score_fn(sde, net, True, precision="bf16")(x, t)
    assert net.out_dtype == torch.bfloat16
    assert net.labels.dtype == torch.float32 and torch.equal(net.labels, t * 999)
    want = -(1 / sde.marginal_prob(x, t)[1])[:, None, None, None].expand_as(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_channels_last_gives_the_same_score(ve_fixture):
    model = _fixture_model(ve_fixture)
    want = _score(ve_fixture, model)
    model = runtime.prepare_model(model, RuntimeOptions(channels_last=True))
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    got = _score(ve_fixture, model, channels_last=True)
    assert got.is_contiguous()
    assert rel_max(got, want) < 1e-5


def test_compiled_fast_path_gives_the_same_score(ve_fixture):
    model = _fixture_model(ve_fixture)
    eager_fp32 = _score(ve_fixture, model)
    eager_bf16 = _score(ve_fixture, model, precision="bf16", channels_last=True)
    options = RuntimeOptions(precision="bf16", channels_last=True, compile=True,
                             compile_backend="aot_eager", fullgraph=True)
    compiled = runtime.prepare_model(model, options)
    assert runtime.unwrap_model(compiled) is model and compiled is not model
    assert not compiled.training  # eval mode left as it was
    got = _score(ve_fixture, compiled, **options.score_options())
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert rel_l2(got, eager_bf16) < 1e-3  # same bf16 arithmetic, graph-captured
    assert rel_l2(got, eager_fp32) < 0.015
    compiled.train()
    assert model.training


def test_unwrap_model_removes_every_wrapper_and_checkpoints_use_it(tmp_path):
    """DistributedDataParallel, DataParallel and torch.compile, however nested, come off; a module
    that merely has a `.module` attribute is not a wrapper. Checkpoints store the bare network's
    keys through the same function (networks/checkpoint.py has no unwrap of its own)."""
    import torch.distributed as dist

    from networks import checkpoint

    net = nn.Sequential(nn.Linear(3, 3))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(net)
        nested = torch.compile(nn.DataParallel(ddp), backend="eager")
        assert runtime.unwrap_model(ddp) is net
        assert runtime.unwrap_model(nested) is net
        networks.save_checkpoint(tmp_path / "c.pth", nested, None)
    finally:
        dist.destroy_process_group()
    assert set(networks.read_checkpoint(tmp_path / "c.pth")["model"]) == {"0.weight", "0.bias"}

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(2, 2)

    holder = Holder()
    assert runtime.unwrap_model(holder) is holder
    assert networks.unwrap_model is runtime.unwrap_model
    assert not hasattr(checkpoint, "unwrap")


def test_full_size_ddpmpp_bf16_is_close_to_fp32():
    """vp/cifar10_ddpmpp_continuous at full width and depth (61.8M parameters), one 32x32
    image, random init (seed 0): measured rel L2 0.0063 (about 2.5 s on one thread)."""
    config = configs.get_config("vp/cifar10_ddpmpp_continuous")
    torch.manual_seed(0)
    model = networks.create_model(config, device="cpu").eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    t = torch.tensor([0.3])
    sde = VPSDE(config.model.beta_min, config.model.beta_max, config.model.num_scales)
    with torch.no_grad():
        fp32 = get_score_fn(sde, model, True)(x, t)
        bf16 = get_score_fn(sde, model, True, precision="bf16", channels_last=True)(x, t)
    assert bf16.dtype == torch.float32
    assert 1e-4 < rel_l2(bf16, fp32) < 0.015


def test_network_fn_for_discrete_losses(ve_fixture):
    model = _fixture_model(ve_fixture)
    assert runtime.network_fn(model) is model
    x = ve_fixture["io"]["x"]
    sigma = ve_fixture["sde"].marginal_prob(x, ve_fixture["io"]["t"])[1]
    with torch.no_grad():
        want = model(x, sigma)
        got = runtime.network_fn(model, "bf16", channels_last=True)(x, sigma)
    assert got.dtype == torch.float32 and rel_l2(got, want) < 0.015


# ---------------------------------------------------------------- samplers on the exact score


def test_oracle_net_is_the_exact_score():
    mu, cov = gpu.gaussian_problem()
    sde = VPSDE()
    net = gpu.GaussianNoiseNet(sde, mu, cov)
    p_t = oracle.gaussian(mu, cov, event_shape=(1, 4, 4)).marginal(sde)
    t = torch.tensor([0.001, 0.1, 0.5, 1.0])
    x = p_t.sample(t, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(get_score_fn(sde, net, True)(x, t), p_t.score(x, t), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("sampler,options,n", [("heun", {}, 4000), ("pc", {"steps": 250}, 2000)])
def test_sampler_distribution_error_is_the_same_in_bf16(sampler, options, n):
    """Samples of N(mu, Sigma) (D = 16) with the exact score computed in fp32 and in bf16
    autocast (benchmarks.gpu.GaussianNoiseNet: its matmuls run in bf16), from the same seed: the
    errors of the sample mean and covariance against the exact (mu, Sigma) agree to well within
    their Monte Carlo std, and the sampler state stays fp32."""
    import solvers

    mu, cov = gpu.gaussian_problem()
    sde = VPSDE()
    net = gpu.GaussianNoiseNet(sde, mu, cov).eval()
    runs = {}
    for precision in ("fp32", "bf16"):
        score_fn = get_score_fn(sde, net, True, precision=precision)
        result = solvers.sample(score_fn, sde, (n, 1, 4, 4), sampler=sampler,
                                generator=torch.Generator().manual_seed(1), **options)
        assert result.samples.dtype == torch.float32
        runs[precision] = result.samples
    (m32, c32), (mc_mean, mc_cov) = gpu.distribution_errors(runs["fp32"], mu, cov)
    (m16, c16), _ = gpu.distribution_errors(runs["bf16"], mu, cov)
    assert m32 < 4 * mc_mean and c32 < 4 * mc_cov  # the sampler does sample the Gaussian
    # measured: |m16 - m32| < 0.01 MC std, |c16 - c32| < 0.12 MC std
    assert abs(m16 - m32) < 0.5 * mc_mean
    assert abs(c16 - c32) < 0.5 * mc_cov
    diff = rel_l2(runs["bf16"], runs["fp32"])
    assert 1e-4 < diff < 0.03  # bf16 really used (measured 1.0e-2 Heun, 1.8e-3 PC)


# ---------------------------------------------------------------- the benchmark script


TINY = ["--config", "vp/cifar10_ddpmpp_continuous", "--device", "cpu", "--warmup", "1",
        "--repeats", "1", "--override", "data.image_size=8", "model.nf=16", "model.ch_mult=(1,2)",
        "model.num_res_blocks=1", "model.attn_resolutions=(4,)"]


def test_benchmark_runs_on_cpu(tmp_path):
    out = tmp_path / "table.md"
    rows = gpu.main(TINY + ["--what", "all", "--batch", "2", "--train-batch", "2", "--steps", "25",
                            "--fast-steps", "2", "--samplers", "pc", "heun",
                            "--precision", "bf16", "--channels-last", "--output", str(out)])
    whats = {(r["what"], r["path"]) for r in rows}
    for what in ("forward", "train", "sample pc", "sample heun"):
        assert {(what, "fp32-eager"), (what, "fast")} <= {(w, p) for w, p in whats}, what
    assert {r["path"] for r in rows if r["what"] == "ema update"} == {"networks.ema loop",
                                                                       "foreach lerp"}
    for r in rows:
        assert r["ms"] > 0
        if r["what"] != "ema update":
            assert r["images_per_s"] > 0 and r["tflops"] > 0
    assert all(r["nfe"] >= 2 for r in rows if r["what"].startswith("sample"))
    text = out.read_text()
    assert "| forward |" in text and "fp32-eager" in text and "bf16" in text
