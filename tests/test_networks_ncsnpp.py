"""NCSN++ / DDPM++ / DDPM networks: FIR resampling against a NumPy definition of upfirdn, layers
against their equations, strict loading of an original score_sde_pytorch checkpoint with its
reference outputs, outputs of the original networks on shrunken configs
(tests/data/score_sde_reference_outputs.pt: the original's networks run once on the CPU, with
`fill_weights` weights; the script that ran them is not kept here, as it runs the original's code),
parameter counts of the released configs, and every released config (shrunk) running forward."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configs import config_names, get_config
from networks import layers, layerspp
from networks import up_or_down_sampling as uds
from networks.ddpm import DDPM
from networks.ncsnpp import NCSNpp
from networks.registry import get_model_class
from networks.utils import get_sigmas

DATA = Path(__file__).resolve().parent / "data"
FIXTURES = DATA / "score_sde_pytorch"


# ----------------------------------------------------------------------------- upfirdn2d

def upfirdn_numpy(x, k, up, down, p0, p1):
    """The definition, one 2-D image at a time: insert up-1 zeros after every sample, pad p0 before
    and p1 after (negative pads crop), convolve with k (true convolution, valid part), keep every
    down-th sample."""
    n, c, h, w = x.shape
    u = np.zeros((n, c, h * up, w * up), dtype=np.float64)
    u[:, :, ::up, ::up] = x
    pad = [(0, 0), (0, 0), (max(p0, 0), max(p1, 0)), (max(p0, 0), max(p1, 0))]
    u = np.pad(u, pad)
    u = u[:, :, max(-p0, 0):u.shape[2] - max(-p1, 0), max(-p0, 0):u.shape[3] - max(-p1, 0)]
    kh, kw = k.shape
    oh, ow = u.shape[2] - kh + 1, u.shape[3] - kw + 1
    y = np.zeros((n, c, oh, ow))
    for a in range(kh):  # y[i, j] = sum_ab u[i + a, j + b] k[kh-1-a, kw-1-b]
        for b in range(kw):
            y += u[:, :, a:a + oh, b:b + ow] * k[kh - 1 - a, kw - 1 - b]
    return y[:, :, ::down, ::down]


KERNELS = {
    "asym3x3": np.array([[1., 2., 0.], [-1., 4., 3.], [0.5, -2., 1.]]),
    "fir1331": np.outer([1., 3., 3., 1.], [1., 3., 3., 1.]) / 64,
    "box2": np.ones((2, 2)) / 4,
    "asym2x4": np.array([[1., -2., 3., 0.5], [2., 1., -1., 4.]]),
}


@pytest.mark.parametrize("kname", sorted(KERNELS))
@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1)), (1, 2, (1, 1)), (2, 2, (1, 2)),
                                         (1, 1, (0, 0)), (3, 1, (-1, 2)), (1, 2, (2, -1))])
def test_upfirdn2d_matches_numpy_definition(kname, up, down, pad):
    k = KERNELS[kname]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 9, generator=g, dtype=torch.float64)
    ref = upfirdn_numpy(x.numpy(), k, up, down, *pad)
    out = uds.upfirdn2d(x, torch.from_numpy(k), up=up, down=down, pad=pad)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-12)
    out32 = uds.upfirdn2d(x.float(), torch.from_numpy(k).float(), up=up, down=down, pad=pad)
    np.testing.assert_allclose(out32.numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1)), (1, 2, (1, 1))])
def test_upfirdn2d_bfloat16_close(up, down, pad):
    k = torch.from_numpy(KERNELS["fir1331"]).float()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = uds.upfirdn2d(x, k, up=up, down=down, pad=pad)
    out = uds.upfirdn2d(x.bfloat16(), k, up=up, down=down, pad=pad)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).norm() / ref.norm() < 1e-2


def test_upfirdn2d_rejects_bad_input():
    k = torch.ones(3, 3)
    with pytest.raises(ValueError, match="shape"):
        uds.upfirdn2d(torch.zeros(3, 8, 8), k)
    with pytest.raises(ValueError, match="larger"):
        uds.upfirdn2d(torch.zeros(1, 1, 2, 2), torch.ones(5, 5))


def test_resampling_helpers():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    # Kernel [1, 1] is nearest-neighbour upsampling and 2x2 average pooling.
    torch.testing.assert_close(uds.upsample_2d(x, (1, 1)), uds.naive_upsample_2d(x))
    torch.testing.assert_close(uds.upsample_2d(x, (1, 1)), F.interpolate(x, scale_factor=2))
    torch.testing.assert_close(uds.downsample_2d(x, (1, 1)), F.avg_pool2d(x, 2))
    torch.testing.assert_close(uds.naive_downsample_2d(x), F.avg_pool2d(x, 2))
    # The FIR upsampler keeps a constant image constant away from the border (gain 1).
    ones = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(uds.upsample_2d(ones, (1, 3, 3, 1))[..., 2:-2, 2:-2],
                               torch.ones(1, 1, 12, 12, dtype=torch.float64))
    torch.testing.assert_close(uds.downsample_2d(ones, (1, 3, 3, 1))[..., 1:-1, 1:-1],
                               torch.ones(1, 1, 2, 2, dtype=torch.float64))
    # The fused up/down-sampling convolutions equal resampling and a 3x3 'same' convolution done
    # separately, away from the border (they differ only in where the zero padding goes).
    x = torch.randn(2, 3, 12, 12, generator=g, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, generator=g, dtype=torch.float64)
    for k in [(1, 3, 3, 1), (1, 2, 1)]:
        fused = uds.upsample_conv_2d(x, w, k)
        split = F.conv2d(uds.upsample_2d(x, k), w, padding=1)
        assert fused.shape == (2, 5, 24, 24)
        torch.testing.assert_close(fused[..., 3:-3, 3:-3], split[..., 3:-3, 3:-3])
        fused = uds.conv_downsample_2d(x, w, k)
        split = uds.downsample_2d(F.conv2d(x, w, padding=1), k)
        assert fused.shape == (2, 5, 6, 6)
        torch.testing.assert_close(fused[..., 2:-2, 2:-2], split[..., 2:-2, 2:-2])
    torch.testing.assert_close(uds.upsample_conv_2d(x, w, (1, 1)),
                               F.conv2d(uds.naive_upsample_2d(x), w, padding=1))


# ----------------------------------------------------------------------------- layers

def test_timestep_embedding_formula():
    t = torch.tensor([0., 1.5, 999.])
    emb = layers.get_timestep_embedding(t, 9)
    half = 4
    freqs = np.exp(-np.log(10000) * np.arange(half) / (half - 1))
    ref = np.concatenate([np.sin(t.numpy()[:, None] * freqs), np.cos(t.numpy()[:, None] * freqs),
                          np.zeros((3, 1))], axis=1)
    np.testing.assert_allclose(emb.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_gaussian_fourier_projection():
    torch.manual_seed(0)
    proj = layerspp.GaussianFourierProjection(embedding_size=6, scale=16.)
    assert not proj.W.requires_grad and proj.W.shape == (6,)
    s = torch.tensor([0.3, -2.])
    arg = 2 * math.pi * s[:, None] * proj.W[None]
    torch.testing.assert_close(proj(s), torch.cat([arg.sin(), arg.cos()], 1))


@pytest.mark.parametrize("skip_rescale", [False, True])
def test_attention_block_equation(skip_rescale):
    torch.manual_seed(0)
    blk = layerspp.AttnBlockpp(8, skip_rescale=skip_rescale, init_scale=1.)
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    blk = blk.double()
    h = blk.GroupNorm_0(x)
    tok = h.flatten(2).transpose(1, 2)  # [B, HW, C]
    q, k, v = (tok @ m.W + m.b for m in (blk.NIN_0, blk.NIN_1, blk.NIN_2))
    a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(8), dim=-1)
    o = (a @ v) @ blk.NIN_3.W + blk.NIN_3.b
    ref = x + o.transpose(1, 2).reshape(x.shape)
    if skip_rescale:
        ref = ref / math.sqrt(2)
    torch.testing.assert_close(blk(x), ref)


# ----------------------------------------------------------------------------- original checkpoint

def fixture_config(entry):
    config = get_config(entry["config_module"])
    for key, value in entry["overrides"].items():
        section, field = key.split(".")
        config[section][field] = tuple(value) if isinstance(value, list) else value
    return config


@pytest.fixture(scope="module")
def ve_fixture():
    entry = json.loads((FIXTURES / "index.json").read_text())["ve_ncsnpp_cifar"]
    ckpt = torch.load(FIXTURES / "ve_ncsnpp_cifar.pth", map_location="cpu", weights_only=True)
    io = torch.load(FIXTURES / "ve_ncsnpp_cifar.io.pt", map_location="cpu", weights_only=True)
    return fixture_config(entry), ckpt, io


def assert_rel_close(out, ref, rtol=1e-5):
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < rtol, f"relative error {err:.2e}"
    torch.testing.assert_close(out, ref, rtol=rtol, atol=rtol * ref.abs().max().item())


def test_original_checkpoint_gives_reference_scores(ve_fixture):
    config, ckpt, io = ve_fixture
    model = NCSNpp(config)
    state = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    m = config.model
    sigma = m.sigma_min * (m.sigma_max / m.sigma_min) ** io["t"]  # VE: sigma(t)
    with torch.no_grad():
        assert_rel_close(model(io["x"], sigma), io["score_model"])

    trainable = [p for p in model.parameters() if p.requires_grad]
    shadow = ckpt["ema"]["shadow_params"]
    assert [p.shape for p in trainable] == [s.shape for s in shadow]
    with torch.no_grad():
        for p, s in zip(trainable, shadow):
            p.copy_(s)
        assert_rel_close(model(io["x"], sigma), io["score_ema"])
        model = model.to(memory_format=torch.channels_last)  # same numbers in NHWC layout
        assert_rel_close(model(io["x"].to(memory_format=torch.channels_last), sigma), io["score_ema"])


def test_original_checkpoint_names_and_strictness(ve_fixture):
    config, ckpt, _ = ve_fixture
    model = NCSNpp(config)
    keys = {k.removeprefix("module.") for k in ckpt["model"]}
    assert set(model.state_dict()) == keys
    assert "sigmas" in dict(model.named_buffers())
    assert not model.all_modules[0].W.requires_grad  # Fourier features are fixed, not in the EMA
    state = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
    config.model.nf = 32  # same keys, other shapes
    with pytest.raises(RuntimeError, match="size mismatch"):
        NCSNpp(config).load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------- released configs

@pytest.mark.parametrize("name,count", [("ve/cifar10_ncsnpp_continuous", 62_758_915),
                                        ("vp/cifar10_ddpmpp_continuous", 61_804_419),
                                        ("ve/cifar10_ncsnpp_deep_continuous", 107_587_075),
                                        ("ve/church_ncsnpp_continuous", 65_574_549),
                                        ("vp/ddpm/cifar10", 35_218_947)])
def test_parameter_count_of_released_configs(name, count):
    config = get_config(name)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = get_model_class(config.model.name)(config)
    assert sum(p.numel() for p in model.parameters()) == count


UNET_CONFIGS = [n for n in config_names() if get_config(n).model.name in ("ncsnpp", "ddpm")]


def shrink(config):
    config.data.image_size = 16
    config.model.nf = 32 if config.model.name == "ddpm" else 16  # DDPM: GroupNorm(32)
    config.model.ch_mult = (1, 2, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (8,)
    return config


def time_input(config, batch):
    """What the original feeds each net: sigma for Fourier NCSN++, integer or 999 t labels else."""
    if config.model.name == "ncsnpp" and config.model.embedding_type == "fourier":
        return torch.tensor([0.01, 3.0, 50.0])[:batch]
    if config.training.continuous:
        return torch.tensor([0.5, 400.7, 999.0])[:batch]
    return torch.tensor([0, 400, 999])[:batch]


@pytest.mark.parametrize("name", UNET_CONFIGS)
def test_shrunk_released_configs_run(name):
    config = shrink(get_config(name))
    torch.manual_seed(0)
    model = (NCSNpp if config.model.name == "ncsnpp" else DDPM)(config).eval()
    x = torch.rand(3, config.data.num_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x, time_input(config, 3))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()


def test_unet_config_list_is_complete():
    assert len(UNET_CONFIGS) >= 25
    assert {"vp/ddpm/cifar10", "ve/cifar10_ddpm", "ve/ffhq_ncsnpp_continuous"} <= set(UNET_CONFIGS)


# ----------------------------------------------------------------------------- switches

SWITCHES = [
    dict(progressive="output_skip", progressive_input="input_skip", progressive_combine="cat"),
    dict(progressive="residual", progressive_input="residual", progressive_combine="sum"),
    dict(progressive="output_skip", progressive_input="input_skip", progressive_combine="sum",
         fir=False, resblock_type="ddpm"),
    dict(progressive="residual", progressive_input="input_skip", progressive_combine="cat",
         resblock_type="ddpm", skip_rescale=False, fir_kernel=(1, 1)),
    dict(embedding_type="positional", resblock_type="biggan", fir=False, resamp_with_conv=False,
         conditional=False, nonlinearity="elu"),
    dict(resblock_type="ddpm", fir=True, resamp_with_conv=True, nonlinearity="lrelu"),
    dict(resblock_type="ddpm", fir=False, resamp_with_conv=False, nonlinearity="relu"),
]


def switch_config(**switches):
    config = shrink(get_config("ve/cifar10_ncsnpp_continuous"))
    config.model.init_scale = 1.  # a non-zero output, so the checks below can fail
    for k, v in switches.items():
        config.model[k] = v
    return config


@pytest.mark.parametrize("switches", SWITCHES)
def test_ncsnpp_switches_forward(switches):
    config = switch_config(**switches)
    torch.manual_seed(0)
    model = NCSNpp(config).eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = time_input(config, 2) if config.model.embedding_type == "fourier" else torch.tensor([3, 700])
    with torch.no_grad():
        out = model(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().max() > 0


def test_scale_by_sigma_centering_and_conditioning():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 16, 16, generator=g)
    sigma = torch.tensor([0.05, 7.0])
    torch.manual_seed(0)
    base = NCSNpp(switch_config()).eval()
    state = base.state_dict()

    def variant(**kw):
        m = NCSNpp(switch_config(**kw)).eval()
        m.load_state_dict(state, strict=True)
        return m

    with torch.no_grad():
        out = base(x, sigma)
        raw = variant(scale_by_sigma=False)(x, sigma)
        torch.testing.assert_close(out, raw / sigma[:, None, None, None])  # s = net / sigma
        cfg = switch_config()
        cfg.data.centered = True
        centered = NCSNpp(cfg).eval()
        centered.load_state_dict(state, strict=True)
        torch.testing.assert_close(centered(2 * x - 1, sigma), out)  # [0, 1] data rescaled to [-1, 1]
        other = base(x, sigma.flip(0))  # the noise level conditions the output
        assert (other - out).abs().max() > 1e-3


def test_ddpm_positional_labels_and_scaling():
    config = shrink(get_config("ve/cifar10_ddpm"))  # DDPM with scale_by_sigma
    torch.manual_seed(0)
    model = DDPM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # the last conv starts at ~0
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 999])
    with torch.no_grad():
        out = model(x, labels)
        model.scale_by_sigma = False
        raw = model(x, labels)
    sig = model.sigmas[labels].float()[:, None, None, None]
    torch.testing.assert_close(out, raw / sig)


def test_fourier_embedding_needs_continuous_training():
    config = switch_config()
    config.training.continuous = False
    with pytest.raises(ValueError, match="continuous"):
        NCSNpp(config)


# ----------------------------------------------------------------------------- original outputs

def fill_weights(state_dict, seed=1):
    """Deterministic weights in state-dict order; the rule the reference outputs were made with."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, v in state_dict.items():
        if key.endswith("sigmas"):
            out[key] = v
            continue
        z = torch.randn(v.shape, generator=g, dtype=torch.float32)
        if v.dim() == 1 and key.endswith(".W"):
            out[key] = 16. * z                      # Fourier features
        elif v.dim() == 1 and key.endswith("weight"):
            out[key] = 1. + 0.1 * z                 # GroupNorm scale
        else:
            out[key] = 0.1 * z
    return out


REFERENCE = torch.load(DATA / "score_sde_reference_outputs.pt", weights_only=True)


@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_outputs_equal_original_networks(case):
    """Every released switch combination (and the unreleased ones) against the original code."""
    ref = REFERENCE[case]
    config = fixture_config(dict(config_module=ref["config"], overrides=json.loads(ref["overrides"])))
    model = get_model_class(config.model.name)(config)
    model.load_state_dict(fill_weights(model.state_dict()), strict=True)  # same key order too
    model.eval()
    with torch.no_grad():
        out = model(ref["x"], ref["labels"])
    assert out.shape == ref["y"].shape and out.dtype == torch.float32
    assert_rel_close(out, ref["y"])


# ----------------------------------------------------------------------------- training, dtypes, errors

def test_backward_reaches_every_trainable_parameter():
    config = shrink(get_config("ve/bedroom_ncsnpp_continuous"))  # output/input skips, FIR
    model = NCSNpp(config)
    model.load_state_dict(fill_weights(model.state_dict()))
    model.train()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    model(x, torch.tensor([0.1, 2.0])).square().mean().backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert model.all_modules[0].W.grad is None


def test_bfloat16_forward_is_close_to_float32():
    model = NCSNpp(shrink(get_config("ve/cifar10_ncsnpp_continuous")))
    model.load_state_dict(fill_weights(model.state_dict()))
    model.eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.5, 5.0])
    with torch.no_grad():
        ref = model(x, sigma)
        out = model.to(torch.bfloat16)(x.bfloat16(), sigma)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).norm() / ref.norm()).item() < 0.1


def test_registry_and_sigmas():
    assert get_model_class("ncsnpp") is NCSNpp and get_model_class("ddpm") is DDPM
    s = get_sigmas(get_config("ve/cifar10_ncsnpp_continuous"))
    assert len(s) == 1000 and s[0] == pytest.approx(50) and s[-1] == pytest.approx(0.01)
    np.testing.assert_allclose(s[1:] / s[:-1], (0.01 / 50) ** (1 / 999), rtol=1e-12)


@pytest.mark.parametrize("field,value", [("progressive", "pyramid"), ("resblock_type", "vgg"),
                                         ("embedding_type", "learned"),
                                         ("progressive_combine", "max"), ("nonlinearity", "gelu"),
                                         ("conv_size", 5), ("attention_type", "legacy"),
                                         ("progressive_input", "skip")])
def test_bad_switch_values_are_refused(field, value):
    config = switch_config(**{field: value})
    with pytest.raises(ValueError, match=field):
        NCSNpp(config)


def test_clear_errors_for_bad_use():
    config = shrink(get_config("vp/ddpm/cifar10"))
    config.model.nf = 16
    with pytest.raises(ValueError, match="divisible by 32"):
        DDPM(config)
    model = NCSNpp(switch_config())
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.zeros(2, 1, 16, 16), torch.ones(2))
    with pytest.raises(ValueError, match="time_cond"):
        model(torch.zeros(2, 3, 16, 16), torch.ones(3))
