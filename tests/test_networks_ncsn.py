"""NCSN / NCSNv2 networks: every original config builds and runs; state-dict names and parameter
order are score_sde_pytorch's; the normalisations against hand computations."""

import numpy as np
import pytest
import torch

import configs
import networks
from networks.ncsn_layers import ResidualBlock
from networks.normalization import (ConditionalInstanceNorm2dPlus, InstanceNorm2dPlus,
                                    get_normalization)

NCSN_FAMILY = {"ncsn", "ncsnv2", "ncsnv2_64", "ncsnv2_128", "ncsnv2_256", "ncsnv2_deeper",
               "ncsnv2_deepest"}


def _ncsn_config_names():
    out = []
    for name in configs.config_names():
        if configs.get_config(name).model.name in NCSN_FAMILY:
            out.append(name)
    return out


NCSN_CONFIGS = _ncsn_config_names()


def small(config_name, nf=4, image_size=None, model_name=None):
    c = configs.get_config(config_name)
    c.model.nf = nf
    if image_size is not None:
        c.data.image_size = image_size
    if model_name is not None:
        c.model.name = model_name
    c.device = "cpu"
    return c


def test_every_original_ncsn_config_is_found():
    # 8 NCSN (v1, with and without the NCSNv2 techniques) and 3 NCSNv2 configs in the original.
    assert sum(configs.get_config(n).model.name == "ncsn" for n in NCSN_CONFIGS) == 8
    assert sum(configs.get_config(n).model.name.startswith("ncsnv2") for n in NCSN_CONFIGS) == 3


@pytest.mark.parametrize("name", NCSN_CONFIGS)
def test_config_builds_and_runs(name):
    torch.manual_seed(0)
    c = small(name)
    model = networks.create_model(c)
    s = c.data.image_size
    x = torch.rand(2, c.data.num_channels, s, s, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, c.model.num_scales - 1])
    with torch.no_grad():
        out = model(x, y)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("model_name", ["ncsnv2_64", "ncsnv2_128", "ncsnv2_256"])
def test_ncsnv2_output_is_network_over_sigma(model_name):
    """NCSNv2 Technique 3: s(x, sigma_i) = net(x) / sigma_i, one unconditional net."""
    torch.manual_seed(0)
    c = small("ve/ncsnv2/cifar10", image_size=16, model_name=model_name)
    model = networks.create_model(c).eval()
    sigmas = np.exp(np.linspace(np.log(c.model.sigma_max), np.log(c.model.sigma_min),
                                c.model.num_scales))
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)).repeat(3, 1, 1, 1)
    y = torch.tensor([0, 7, c.model.num_scales - 1])
    with torch.no_grad():
        out = model(x, y)
    scaled = out * torch.tensor(sigmas[y.numpy()], dtype=out.dtype).view(-1, 1, 1, 1)
    torch.testing.assert_close(scaled[1], scaled[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scaled[2], scaled[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.sigmas, torch.tensor(sigmas))
    assert model.sigmas.dtype == torch.float64  # as in the original's state dicts


def test_ncsn_is_noise_conditional():
    torch.manual_seed(0)
    c = small("ve/ncsn/cifar10", image_size=16)
    model = networks.create_model(c).eval()
    with torch.no_grad():  # make the per-level embeddings differ clearly
        for m in model.modules():
            if isinstance(m, ConditionalInstanceNorm2dPlus):
                m.embed.weight.normal_(1.0, 0.5)
    x = torch.rand(1, 3, 16, 16).repeat(2, 1, 1, 1)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 9]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    assert not hasattr(model, "sigmas")  # NCSN (v1) outputs the score itself


# Names read from score_sde_pytorch models/ncsnv2.py, models/layers.py, models/normalization.py.
V2_KEYS = {
    "sigmas": None,
    "begin_conv.weight": (4, 3, 3, 3),
    "normalizer.alpha": (4,), "normalizer.gamma": (4,), "normalizer.beta": (4,),
    "end_conv.bias": (3,),
    "res1.0.conv1.weight": (4, 4, 3, 3),
    "res1.0.normalize1.alpha": (4,),
    "res1.1.normalize2.gamma": (4,),
    "res2.0.conv2.conv.weight": (8, 4, 3, 3),      # ConvMeanPool
    "res2.0.shortcut.conv.weight": (8, 4, 1, 1),   # ConvMeanPool, kernel 1
    "res3.0.shortcut.weight": (8, 8, 3, 3),        # dilated: plain 3x3 conv
    "res4.1.conv2.bias": (8,),
    "refine1.adapt_convs.0.1_1_conv.weight": (8, 8, 3, 3),
    "refine1.adapt_convs.0.2_2_conv.weight": (8, 8, 3, 3),
    "refine1.crp.convs.1.weight": (8, 8, 3, 3),
    "refine1.output_convs.1_2_conv.weight": (8, 8, 3, 3),
    "refine2.msf.convs.1.weight": (8, 8, 3, 3),
    "refine2.msf.convs.1.bias": (8,),
    "refine3.msf.convs.0.weight": (4, 8, 3, 3),
    "refine4.output_convs.3_2_conv.weight": (4, 4, 3, 3),  # end block: 3 RCUs
}
V1_KEYS = {
    "normalizer.embed.weight": (10, 12),           # (num_scales, 3 nf): gamma, alpha, beta
    "res1.0.normalize1.embed.weight": (10, 12),
    "res2.0.normalize2.embed.weight": (10, 12),
    "refine1.adapt_convs.0.1_1_norm.embed.weight": (10, 24),
    "refine1.crp.norms.1.embed.weight": (10, 24),
    "refine2.msf.norms.0.embed.weight": (10, 24),
    "refine4.output_convs.3_2_norm.embed.weight": (10, 12),
    "refine4.output_convs.3_2_conv.weight": (4, 4, 3, 3),
}


def test_state_dict_names_match_original():
    v2 = networks.create_model(small("ve/ncsnv2/cifar10")).state_dict()
    for k, shape in V2_KEYS.items():
        assert k in v2, k
        if shape is not None:
            assert tuple(v2[k].shape) == shape, (k, tuple(v2[k].shape))
    assert "refine1.msf.convs.0.weight" not in v2   # the first (coarsest) block has no fusion
    assert "refine1.crp.norms.0.embed.weight" not in v2

    v1 = networks.create_model(small("ve/ncsn/cifar10")).state_dict()
    for k, shape in V1_KEYS.items():
        assert tuple(v1[k].shape) == shape, (k, tuple(v1[k].shape) if k in v1 else None)
    assert "sigmas" not in v1

    deep = networks.create_model(small("ve/ncsnv2/bedroom")).state_dict()
    assert tuple(deep["res4.0.conv2.weight"].shape) == (16, 8, 3, 3)  # 2 nf -> 4 nf, dilated
    assert "refine5.output_convs.3_1_conv.weight" in deep


def test_parameter_order_is_originals():
    """EMA shadow_params follow parameters() order, which is the original's attribute order."""
    model = networks.create_model(small("ve/ncsnv2/bedroom", model_name="ncsnv2_256"))
    tops = []
    for name, _ in model.named_parameters():
        top = name.split(".")[0]
        if top not in tops:
            tops.append(top)
    assert tops == ["begin_conv", "normalizer", "end_conv", "res1", "res2", "res3", "res31",
                    "res4", "res5", "refine1", "refine2", "refine3", "refine31", "refine4",
                    "refine5"]
    block = [n.split(".", 2)[2] for n, _ in model.named_parameters() if n.startswith("res2.0.")]
    assert block == ["conv1.weight", "conv1.bias", "normalize2.alpha", "normalize2.gamma",
                     "normalize2.beta", "conv2.conv.weight", "conv2.conv.bias",
                     "shortcut.conv.weight", "shortcut.conv.bias", "normalize1.alpha",
                     "normalize1.gamma", "normalize1.beta"]


def test_aliases_build_the_same_networks():
    for alias, name in [("ncsnv2", "ncsnv2_64"), ("ncsnv2_deeper", "ncsnv2_128"),
                        ("ncsnv2_deepest", "ncsnv2_256")]:
        assert networks.get_model_class(alias) is networks.get_model_class(name)


def test_instance_norm_plus_against_hand_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64) * 2 + 1
    norm = InstanceNorm2dPlus(3).double()
    with torch.no_grad():
        norm.alpha.copy_(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
        norm.gamma.copy_(torch.tensor([1.5, 0.7, -0.3], dtype=torch.float64))
        norm.beta.copy_(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    a = x.numpy()
    mu = a.mean(axis=(2, 3))                                   # [B, C]
    var = a.var(axis=(2, 3))                                   # biased, as instance norm
    mu_t = (mu - mu.mean(1, keepdims=True)) / np.sqrt(mu.var(1, ddof=1, keepdims=True) + 1e-5)
    h = (a - mu[..., None, None]) / np.sqrt(var[..., None, None] + 1e-5)
    h = h + mu_t[..., None, None] * np.array([0.5, -1.0, 2.0])[:, None, None]
    gamma, beta = np.array([1.5, 0.7, -0.3]), np.array([0.1, 0.2, 0.3])
    expected = gamma[:, None, None] * h + beta[:, None, None]
    np.testing.assert_allclose(norm(x).detach().numpy(), expected, rtol=1e-10, atol=1e-10)


def test_conditional_norm_picks_the_row_of_its_noise_level():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 6, 6, generator=g)
    cond = ConditionalInstanceNorm2dPlus(4, num_classes=5)
    with torch.no_grad():
        cond.embed.weight.copy_(torch.randn(5, 12, generator=g))
    y = torch.tensor([4, 0, 2])
    out = cond(x, y)
    for b, level in enumerate(y.tolist()):
        plain = InstanceNorm2dPlus(4)
        gamma, alpha, beta = cond.embed.weight[level].detach().chunk(3)
        with torch.no_grad():
            plain.gamma.copy_(gamma)
            plain.alpha.copy_(alpha)
            plain.beta.copy_(beta)
        torch.testing.assert_close(out[b:b + 1], plain(x[b:b + 1]))


def test_residual_block_resolution():
    norm = InstanceNorm2dPlus
    x = torch.randn(1, 4, 16, 16)
    assert ResidualBlock(4, 8, norm, resample="down")(x).shape == (1, 8, 8, 8)
    assert ResidualBlock(4, 8, norm, resample="down", dilation=2)(x).shape == (1, 8, 16, 16)
    assert ResidualBlock(4, 4, norm, resample=None, dilation=4)(x).shape == (1, 4, 16, 16)
    assert ResidualBlock(4, 8, norm, resample=None)(x).shape == (1, 8, 16, 16)


def test_bad_labels_and_normalization_are_clear_errors():
    c = small("ve/ncsnv2/cifar10", image_size=16)
    model = networks.create_model(c)
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(TypeError, match="continuous=False"):
        model(x, torch.tensor([0.5, 0.1]))
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        model(x, torch.tensor([1, 2, 3]))
    c.model.normalization = "GroupNorm"
    with pytest.raises(ValueError, match="GroupNorm"):
        get_normalization(c)


def test_discrete_ve_score_fn_drives_ncsnv2():
    """get_score_fn(VESDE, ncsnv2, continuous=False): t = T is the largest noise level (index 0),
    t = 0 the smallest (index N - 1)."""
    from sde_lib import VESDE
    c = small("ve/ncsnv2/cifar10", image_size=16)
    model = networks.create_model(c).eval()
    sde = VESDE(c.model.sigma_min, c.model.sigma_max, c.model.num_scales)
    score_fn = networks.get_score_fn(sde, model, continuous=False)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        got = score_fn(x, torch.tensor([1.0, 0.0]))
        want = model(x, torch.tensor([0, c.model.num_scales - 1]))
    torch.testing.assert_close(got, want)
