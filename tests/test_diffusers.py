"""networks.from_diffusers / to_diffusers against diffusers' own UNet2DModel.

Reduced copies of the hosted families' configurations (same block types, embeddings,
resampling and attention placement; fewer channels, levels and pixels), randomly initialised
and saved with diffusers' `save_pretrained`, are loaded into the toolkit's networks; the score
from `get_score_fn` must equal the one defined by diffusers' forward pass and scheduler:
NCSN++ (ScoreSdeVe): the net takes sigma and returns the score; DDPM: the net takes the
integer step and predicts the noise, score = -eps / sqrt(1 - alphabar).
"""

import math
import os

import pytest
import torch

import huggingface_hub
from diffusers import DDPMScheduler, ScoreSdeVeScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

import configs
import networks
from networks.diffusers import DiffusersError
from sde_lib import VESDE, VPSDE

from cases import Payload


def _randomize(unet, seed):
    """Random weights everywhere (diffusers zero-initialises nothing here, but make the
    comparison sensitive to every tensor, including biases and norms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return unet.eval()


def ncsnpp_unet(seed=0):
    """google/ncsnpp-celebahq-256 in small: fourier embedding of sigma, NCSN++ skip blocks
    (BigGAN residual blocks with FIR up/down sampling, input_skip/output_skip pyramids, 1/sqrt(2)
    rescaling), attention at one inner resolution and in the middle."""
    return _randomize(UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, time_embedding_type='fourier',
        flip_sin_to_cos=True, freq_shift=1, center_input_sample=True,  # data in [0, 1]
        block_out_channels=(32, 64, 128, 128), layers_per_block=2, norm_num_groups=None,
        norm_eps=1e-6, mid_block_scale_factor=math.sqrt(2.0), attention_head_dim=None,
        down_block_types=('SkipDownBlock2D', 'SkipDownBlock2D', 'AttnSkipDownBlock2D',
                          'SkipDownBlock2D'),
        up_block_types=('SkipUpBlock2D', 'AttnSkipUpBlock2D', 'SkipUpBlock2D', 'SkipUpBlock2D'),
    ), seed)


def ncsnpp_heads_unet(seed=2):
    """diffusers' own NCSN++ test layout: narrow levels (attention on 64 channels, where
    diffusers' skip blocks count GroupNorm groups otherwise than NCSN++) and
    attention_head_dim 8, so 8 heads in the attention layers."""
    return _randomize(UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, time_embedding_type='fourier',
        flip_sin_to_cos=True, freq_shift=1, center_input_sample=False,
        block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_num_groups=None,
        norm_eps=1e-6, mid_block_scale_factor=math.sqrt(2.0), attention_head_dim=8,
        down_block_types=('SkipDownBlock2D', 'AttnSkipDownBlock2D', 'SkipDownBlock2D',
                          'SkipDownBlock2D'),
        up_block_types=('SkipUpBlock2D', 'SkipUpBlock2D', 'AttnSkipUpBlock2D', 'SkipUpBlock2D'),
    ), seed)


def ncsnpp_narrow_unet(seed=3):
    """One head (attention_head_dim None), attention at the 32-channel top level and two blocks
    per level: only the group rule differs from NCSN++'s."""
    return _randomize(UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, time_embedding_type='fourier',
        flip_sin_to_cos=True, freq_shift=1, center_input_sample=True,
        block_out_channels=(32, 64), layers_per_block=2, norm_num_groups=None, norm_eps=1e-6,
        mid_block_scale_factor=math.sqrt(2.0), attention_head_dim=None,
        down_block_types=('AttnSkipDownBlock2D', 'SkipDownBlock2D'),
        up_block_types=('SkipUpBlock2D', 'AttnSkipUpBlock2D'),
    ), seed)


def ddpm_unet(seed=1):
    """google/ddpm-cifar10-32 in small: positional embedding [sin, cos] with freq_shift 1,
    DDPM residual blocks, 'SAME' stride-2 conv downsampling (downsample_padding 0), attention
    at the second resolution (after every up-path block) and in the middle."""
    return _randomize(UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, time_embedding_type='positional',
        flip_sin_to_cos=False, freq_shift=1, center_input_sample=False,
        block_out_channels=(32, 64, 64), layers_per_block=2, norm_num_groups=32, norm_eps=1e-6,
        mid_block_scale_factor=1, attention_head_dim=None, downsample_padding=0,
        down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D'),
        up_block_types=('UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'),
    ), seed)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _pipeline_dir(tmp_path, unet, scheduler, safe=True):
    unet.save_pretrained(tmp_path / 'unet', safe_serialization=safe)
    scheduler.save_pretrained(tmp_path / 'scheduler')
    return tmp_path


def test_ncsnpp_family_score_equals_diffusers(tmp_path):
    unet = ncsnpp_unet()
    sched = ScoreSdeVeScheduler(num_train_timesteps=200, sigma_min=0.02, sigma_max=90.0,
                                snr=0.075)
    folder = _pipeline_dir(tmp_path, unet, sched)
    model, sde, info = networks.from_diffusers(folder)
    assert isinstance(sde, VESDE) and info.family == 'ncsnpp' and info.continuous
    assert (sde.sigma_min, sde.sigma_max, sde.N) == (0.02, 90.0, 200)
    assert info.config.model.name == 'ncsnpp' and info.config.model.attn_resolutions == (4,)
    assert info.config.sampling.snr == 0.075
    assert info.config.data.centered is False  # the net maps [0, 1] to [-1, 1] itself

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 16, 16, generator=g)
    t = torch.tensor([1e-5, 0.3, 1.0])
    score_fn = networks.get_score_fn(sde, model, continuous=info.continuous)
    with torch.no_grad():
        ours = score_fn(x, t)
        sigma = sde.marginal_prob(x, t)[1]
        theirs = unet(x, sigma).sample  # diffusers' NCSN++ takes sigma and returns the score
    assert _rel(ours, theirs) < 1e-5

    # The SDE's noise levels are the scheduler's.
    sched.set_sigmas(200)
    std = sde.marginal_prob(torch.zeros(200, 1), sched.timesteps.float())[1]
    assert torch.allclose(std, sched.sigmas.float(), rtol=1e-5)
    assert torch.allclose(sde.discrete_sigmas.float(), sched.discrete_sigmas.float(), rtol=1e-5)


def test_ddpm_family_score_equals_diffusers(tmp_path):
    unet = ddpm_unet()
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                          beta_schedule='linear')
    folder = _pipeline_dir(tmp_path, unet, sched, safe=False)  # .bin, read weights_only
    model, sde, info = networks.from_diffusers(folder)
    assert isinstance(sde, VPSDE) and info.family == 'ddpm' and not info.continuous
    assert sde.N == 1000
    assert info.config.model.attn_resolutions == (8,) and info.config.data.centered

    # The SDE's discrete noise schedule is the scheduler's.
    assert torch.allclose(sde.discrete_betas, sched.betas, rtol=1e-5, atol=1e-9)
    assert torch.allclose(sde.alphas_cumprod, sched.alphas_cumprod, rtol=1e-5)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 16, 16, generator=g)
    steps = torch.tensor([0, 500, 999])
    t = steps.double().div(sde.N - 1).float()
    score_fn = networks.get_score_fn(sde, model, continuous=info.continuous)
    assert torch.equal(score_fn.noise_labels(x, t).round().long(), steps)
    with torch.no_grad():
        ours = score_fn(x, t)
        eps = unet(x, steps).sample  # diffusers' DDPM predicts the noise at integer steps
        theirs = -eps / torch.sqrt(1 - sched.alphas_cumprod[steps]).view(-1, 1, 1, 1)
    assert _rel(ours, theirs) < 1e-5


def test_instance_and_model_folder_and_load_for_sampling(tmp_path):
    unet = ddpm_unet(seed=3)
    unet.save_pretrained(tmp_path / 'm')
    DDPMScheduler(num_train_timesteps=100, beta_start=1e-3, beta_end=0.05).save_pretrained(
        tmp_path / 'sched')
    model_a, sde_a, info_a = networks.from_diffusers(unet)
    assert any('defaults' in n for n in info_a.notes) and sde_a.N == 1000
    model_b, sde_b, config = networks.diffusers.load_for_sampling(
        tmp_path / 'm', device='cpu', scheduler=tmp_path / 'sched')
    assert sde_b.N == 100 and math.isclose(sde_b.beta_1, 5.0)
    assert (config.data.image_size, config.data.num_channels) == (16, 3)
    assert config.training.sde == 'vpsde' and config.training.continuous is False
    for (ka, va), (kb, vb) in zip(model_a.named_parameters(), model_b.named_parameters()):
        assert ka == kb and torch.equal(va, vb)
    # the derived config builds the same network and survives the JSON round trip
    again = configs.config_from_json(configs.config_to_json(config))
    assert networks.create_model(again, device='cpu').state_dict().keys() == \
        model_b.state_dict().keys()


def _weights(folder):
    return folder / 'diffusion_pytorch_model.safetensors'


def test_missing_unknown_and_misshaped_weights_are_named(tmp_path):
    unet = ncsnpp_unet(seed=4)
    unet.save_pretrained(tmp_path)
    state = load_file(_weights(tmp_path))

    missing = dict(state)
    del missing['up_blocks.1.attentions.0.to_q.weight']
    save_file(missing, _weights(tmp_path))
    with pytest.raises(DiffusersError, match=r"missing weights: up_blocks\.1\.attentions\.0\.to_q"):
        networks.from_diffusers(tmp_path)

    extra = dict(state, **{'down_blocks.0.extra.weight': torch.zeros(3)})
    save_file(extra, _weights(tmp_path))
    with pytest.raises(DiffusersError, match=r"unknown weights: down_blocks\.0\.extra\.weight"):
        networks.from_diffusers(tmp_path)

    shaped = dict(state, **{'conv_in.weight': torch.zeros(32, 3, 1, 1)})
    save_file(shaped, _weights(tmp_path))
    with pytest.raises(DiffusersError,
                       match=r"mis-shaped weights: conv_in\.weight \(32, 3, 1, 1\)"):
        networks.from_diffusers(tmp_path)


def _advises_unsafe_loading(message):
    text = message.lower()
    return 'weights_only=false' in text or 'weights_only` set to `false' in text or \
        're-running' in text


def test_a_pickle_in_the_weights_is_refused_without_advising_unsafe_loading(tmp_path):
    unet = ddpm_unet(seed=6)
    unet.save_pretrained(tmp_path, safe_serialization=False)
    marker = tmp_path / 'was_unpickled'
    state = torch.load(tmp_path / 'diffusion_pytorch_model.bin', weights_only=True)
    torch.save({**state, 'payload': Payload(str(marker))},
               tmp_path / 'diffusion_pytorch_model.bin')
    with pytest.raises(DiffusersError, match='posix.makedirs|os.makedirs') as err:
        networks.from_diffusers(tmp_path)
    assert not marker.exists()
    assert not _advises_unsafe_loading(str(err.value)), str(err.value)


def test_old_attention_names_load(tmp_path):
    """Hub files written by early diffusers name attention query/key/value/proj_attn."""
    unet = ddpm_unet(seed=5)
    unet.save_pretrained(tmp_path)
    state = load_file(_weights(tmp_path))
    old = {}
    for k, v in state.items():
        for new, was in (('to_q', 'query'), ('to_k', 'key'), ('to_v', 'value'),
                         ('to_out.0', 'proj_attn')):
            k = k.replace(f'.{new}.', f'.{was}.')
        old[k] = v
    save_file(old, _weights(tmp_path))
    model, sde, info = networks.from_diffusers(tmp_path)
    x, steps = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        assert _rel(model(x, steps), unet(x, steps).sample) < 1e-5


def test_configs_and_schedulers_that_do_not_map_are_refused(tmp_path):
    heads = UNet2DModel(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                        norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1,
                        downsample_padding=0, attention_head_dim=8,
                        down_block_types=('DownBlock2D', 'AttnDownBlock2D'),
                        up_block_types=('AttnUpBlock2D', 'UpBlock2D'))
    with pytest.raises(DiffusersError, match='attention_head_dim 8 gives several attention heads'):
        networks.from_diffusers(heads)
    cosine = DDPMScheduler(beta_schedule='squaredcos_cap_v2')
    with pytest.raises(DiffusersError, match="beta_schedule 'squaredcos_cap_v2'"):
        networks.from_diffusers(ddpm_unet(), scheduler=cosine)
    with pytest.raises(DiffusersError, match='ScoreSdeVeScheduler with a DDPM network'):
        networks.from_diffusers(ddpm_unet(), scheduler=ScoreSdeVeScheduler())
    with pytest.raises(DiffusersError, match='no such folder'):
        networks.from_diffusers(str(tmp_path / 'nowhere' / 'x' / 'y'))


def test_hub_id_offline_gives_clear_error(tmp_path, monkeypatch):
    hub = huggingface_hub
    monkeypatch.setattr(hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(hub.constants, 'HF_HUB_CACHE', str(tmp_path))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path))
    with pytest.raises(DiffusersError, match=r"'google/ddpm-cifar10-32' is not a local folder, "
                                             r"and the hub model .* cannot be fetched.*"
                                             r"huggingface-cli download"):
        networks.from_diffusers('google/ddpm-cifar10-32')


def test_hub_id_reads_the_snapshot_folder(tmp_path, monkeypatch):
    """A hub id goes through huggingface_hub (here a stand-in serving a local snapshot):
    configs first, then only the unet's weights, safetensors first."""
    snapshot = tmp_path / 'snapshots' / 'abc123'
    unet = ncsnpp_unet(seed=8)
    _pipeline_dir(snapshot, unet, ScoreSdeVeScheduler(num_train_timesteps=50))
    weights = snapshot / 'unet' / 'diffusion_pytorch_model.safetensors'
    stash = tmp_path / 'stash.safetensors'
    weights.rename(stash)  # "not downloaded yet"
    calls = []

    def snapshot_download(repo_id, allow_patterns=None, **kw):
        calls.append(('snapshot', repo_id, tuple(allow_patterns)))
        return str(snapshot)

    def hf_hub_download(repo_id, filename, subfolder=None, revision=None, **kw):
        calls.append(('file', filename, subfolder, revision))
        if not filename.endswith('.safetensors'):
            raise AssertionError('the .bin is fetched only when no .safetensors exists')
        stash.rename(weights)
        return str(weights)

    monkeypatch.setattr(huggingface_hub, 'snapshot_download', snapshot_download)
    monkeypatch.setattr(huggingface_hub, 'hf_hub_download', hf_hub_download)
    model, sde, info = networks.from_diffusers('google/ncsnpp-celebahq-256')
    assert calls == [('snapshot', 'google/ncsnpp-celebahq-256', ('*.json',)),
                     ('file', 'diffusion_pytorch_model.safetensors', 'unet', 'abc123')]
    assert sde.N == 50 and info.source == 'hub:google/ncsnpp-celebahq-256'
    assert info.config.data.dataset == 'CelebAHQ'


@pytest.mark.parametrize('make', [ncsnpp_heads_unet, ncsnpp_narrow_unet])
def test_ncsnpp_with_several_heads_and_diffusers_group_counts_scores_as_diffusers(make):
    unet = make()
    model, sde, info = networks.from_diffusers(unet, scheduler=ScoreSdeVeScheduler(
        num_train_timesteps=100, sigma_min=0.01, sigma_max=50.0))
    m = info.config.model
    assert m.group_rule == 'diffusers'
    assert m.get('attention_head_dim', None) == unet.config.attention_head_dim
    size = unet.config.sample_size
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, size, size, generator=g)
    if info.config.data.centered:
        x = 2 * x - 1
    t = torch.tensor([1e-5, 0.3, 1.0])
    score_fn = networks.get_score_fn(sde, model, continuous=info.continuous)
    with torch.no_grad():
        ours = score_fn(x, t)
        theirs = unet(x, sde.marginal_prob(x, t)[1]).sample
    assert _rel(ours, theirs) < 1e-5

    # NCSN++'s own rule on the same layout is another network, and diffusers cannot hold it
    with info.config.ignore_type():
        info.config.model.group_rule = 'ncsnpp'
    other = networks.create_model(info.config, device='cpu')
    with pytest.raises(DiffusersError, match="GroupNorm groups .*model.group_rule='diffusers'"):
        networks.to_diffusers(other, info.config, 'unused')


@pytest.mark.parametrize('make', [ncsnpp_unet, ddpm_unet, ncsnpp_heads_unet, ncsnpp_narrow_unet])
def test_to_diffusers_round_trip(tmp_path, make):
    unet = make(seed=7)
    model, sde, info = networks.from_diffusers(unet)
    out = networks.to_diffusers(model, info.config, tmp_path / 'out')
    back = UNet2DModel.from_pretrained(out).eval()
    size = unet.config.sample_size
    x = torch.randn(2, 3, size, size)
    label = sde.marginal_prob(x, torch.tensor([0.2, 0.9]))[1] if info.family == 'ncsnpp' \
        else torch.tensor([20, 800])
    with torch.no_grad():
        assert _rel(back(x, label).sample, unet(x, label).sample) < 1e-6
        assert _rel(back(x, label).sample, model(x, label)) < 1e-5
    # and as a pipeline folder, read back with its scheduler
    networks.to_diffusers(model, info.config, tmp_path / 'pipe', pipeline=True)
    model2, sde2, info2 = networks.from_diffusers(tmp_path / 'pipe')
    assert type(sde2) is type(sde) and sde2.N == sde.N
    for (ka, a), (kb, b) in zip(model.named_parameters(), model2.named_parameters()):
        assert ka == kb and torch.equal(a, b)


@pytest.mark.parametrize('name', ['vp/ddpm/cifar10', 've/celebahq_256_ncsnpp_continuous'])
def test_to_diffusers_of_a_toolkit_model(tmp_path, name):
    """A network trained here (random weights from create_model) shared as diffusers."""
    config = configs.get_config(name)
    with config.ignore_type():
        config.model.nf, config.model.ch_mult = 32, (1, 2, 4)
        config.model.num_res_blocks, config.data.image_size = 1, 16
        config.model.attn_resolutions = (4,)
        config.model.attn_every_up_block = True  # DDPM only; NCSN++ ignores it
    model = networks.create_model(config, device='cpu').eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    networks.to_diffusers(model, config, tmp_path)
    back = UNet2DModel.from_pretrained(tmp_path).eval()
    assert back.config.center_input_sample == (not config.data.centered)
    x = torch.rand(2, 3, 16, 16)
    label = torch.tensor([0.3, 20.0]) if config.model.name == 'ncsnpp' else torch.tensor([5, 600])
    with torch.no_grad():
        assert _rel(back(x, label).sample, model(x, label)) < 1e-5


def test_to_diffusers_names_what_it_cannot_represent(tmp_path):
    config = configs.get_config('vp/cifar10_ddpmpp_continuous')
    with pytest.raises(DiffusersError, match=r"embedding_type 'positional'.*progressive 'none'"):
        networks.to_diffusers(None, config, tmp_path)
    config = configs.get_config('vp/ddpm/cifar10')  # score_sde's DDPM: one attention per level
    with pytest.raises(DiffusersError, match='attn_every_up_block'):
        networks.to_diffusers(None, config, tmp_path)
    assert not os.listdir(tmp_path)


def test_diffusers_weights_of_another_dtype_are_cast_with_a_note_or_refused(tmp_path):
    unet = ddpm_unet(seed=7)
    unet.save_pretrained(tmp_path)
    state = load_file(_weights(tmp_path))
    save_file({k: v.half() for k, v in state.items()}, _weights(tmp_path))
    model, _, info = networks.from_diffusers(tmp_path)
    assert any('stored as float16 were cast to float32' in n for n in info.notes), info.notes
    assert all(p.dtype == torch.float32 for p in model.parameters())
    save_file({k: (v.to(torch.int8) if k == 'conv_in.weight' else v) for k, v in state.items()},
              _weights(tmp_path))
    with pytest.raises(DiffusersError, match=r'non-float weights.*\(int8\)'):
        networks.from_diffusers(tmp_path)
