"""Toolkit checkpoints in the safetensors format: exact round trip, and no pickle on load."""

import pickle

import pytest
import torch

import configs
import networks
from networks import CheckpointError, ExponentialMovingAverage


def _small():
    config = configs.get_config('builtin/digits_vp')
    torch.manual_seed(0)
    model = networks.create_model(config, device='cpu')
    ema = ExponentialMovingAverage(model.parameters(), decay=0.99)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    ema.update(model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return config, model, ema


def _no_pickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle was called while loading a safetensors checkpoint")
    monkeypatch.setattr(pickle, 'load', refuse)
    monkeypatch.setattr(pickle, 'loads', refuse)
    monkeypatch.setattr(pickle, 'Unpickler', refuse)
    monkeypatch.setattr(torch, 'load', refuse)


@pytest.mark.parametrize('how', ['suffix', 'format'])
def test_safetensors_checkpoint_round_trips_exactly_without_pickle(tmp_path, monkeypatch, how):
    config, model, ema = _small()
    if how == 'suffix':
        path = networks.save_checkpoint(tmp_path / 'ckpt.safetensors', model, config, ema=ema,
                                        step=1234, extra={'note': 'x', 'loss': [1.5, 2.0]})
    else:  # any name; the reader recognises the safetensors header
        path = networks.save_checkpoint(tmp_path / 'ckpt.bin', model, config, ema=ema,
                                        step=1234, extra={'note': 'x', 'loss': [1.5, 2.0]},
                                        format='safetensors')
    with open(path, 'rb') as f:
        assert f.read(16)[8:9] == b'{'  # a safetensors header, not a zip/pickle
    _no_pickle(monkeypatch)

    ckpt = networks.read_checkpoint(path)
    assert ckpt['step'] == 1234 and ckpt['extra'] == {'note': 'x', 'loss': [1.5, 2.0]}
    assert ckpt['optimizer'] is None
    assert configs.config_to_json(configs.config_from_json(ckpt['config'])) == \
        configs.config_to_json(config)
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt['model'][k], v) and ckpt['model'][k].dtype == v.dtype
    assert ckpt['ema']['decay'] == 0.99 and ckpt['ema']['num_updates'] == ema.num_updates
    for a, b in zip(ckpt['ema']['shadow_params'], ema.shadow_params):
        assert torch.equal(a, b)

    live = networks.load_checkpoint(path, config, ema=False)
    for (k, a), b in zip(live.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    averaged = networks.load_checkpoint(path, config, ema=True)
    trainable = [p for p in averaged.parameters() if p.requires_grad]
    for a, b in zip(trainable, ema.shadow_params):
        assert torch.equal(a, b)

    # resuming the weights and the EMA works the same way (the optimizer is not stored)
    fresh = networks.create_model(config, device='cpu')
    fresh_ema = ExponentialMovingAverage(fresh.parameters(), decay=0.5)
    step, extra = networks.load_state(path, fresh, ema=fresh_ema)
    assert step == 1234 and extra['note'] == 'x' and fresh_ema.decay == 0.99


def test_safetensors_checkpoint_refuses_what_it_cannot_hold_and_reports_corruption(tmp_path):
    config, model, ema = _small()
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match='not optimizer state'):
        networks.save_checkpoint(tmp_path / 'a.safetensors', model, config, optimizer=opt)
    with pytest.raises(ValueError, match="format must be 'torch' or 'safetensors'"):
        networks.save_checkpoint(tmp_path / 'a.pth', model, config, format='onnx')
    assert not list(tmp_path.iterdir())

    path = networks.save_checkpoint(tmp_path / 'b.safetensors', model, config, ema=ema)
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match='not a toolkit safetensors checkpoint'):
        networks.load_checkpoint(path, config)

    from safetensors.torch import save_file  # a safetensors file of something else
    save_file({'w': torch.zeros(2)}, str(tmp_path / 'c.safetensors'))
    with pytest.raises(CheckpointError, match="without the toolkit's metadata"):
        networks.load_checkpoint(tmp_path / 'c.safetensors', config)

    # a mismatched model is named, as for .pth checkpoints
    other = configs.get_config('builtin/digits_vp')
    with other.ignore_type():
        other.model.nf = other.model.nf * 2
    networks.save_checkpoint(tmp_path / 'd.safetensors', networks.create_model(other, 'cpu'),
                             other)
    with pytest.raises(CheckpointError, match='model.nf'):
        networks.load_checkpoint(tmp_path / 'd.safetensors', config)


def _rewrite(path, change):
    """Rewrite safetensors file `path` with change(name, tensor) applied, metadata kept."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), framework='pt') as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file({k: change(k, v) for k, v in tensors.items()}, str(path), metadata=meta)


def test_non_float_weights_are_refused_by_name(tmp_path):
    config, model, ema = _small()
    path = networks.save_checkpoint(tmp_path / 'm.safetensors', model, config, ema=ema)
    victim = next(k for k in model.state_dict() if k.endswith('weight'))
    _rewrite(path, lambda k, v: v.to(torch.int8) if k == f'model/{victim}' else v)
    with pytest.raises(CheckpointError, match=rf'non-float weights.*{victim} \(int8\)'):
        networks.load_checkpoint(path, config, ema=False)
    _rewrite(path, lambda k, v: v.float() if k.startswith('model/') else v.to(torch.int16))
    with pytest.raises(CheckpointError, match=r'non-float weights.*EMA .* \(int16\)'):
        networks.load_checkpoint(path, config, ema=True)


@pytest.mark.parametrize('dtype', [torch.float16, torch.float64])
def test_float_weights_of_another_precision_are_cast_with_a_note(tmp_path, dtype):
    config, model, ema = _small()
    path = networks.save_checkpoint(tmp_path / 'm.safetensors', model, config, ema=ema)
    _rewrite(path, lambda k, v: v.to(dtype))
    name = str(dtype).replace('torch.', '')
    with pytest.warns(networks.checkpoint.CheckpointNote, match=f'stored as {name} were cast '
                                                                f'to float32'):
        live = networks.load_checkpoint(path, config, ema=False)
    for k, v in model.state_dict().items():
        assert torch.equal(live.state_dict()[k], v.to(dtype).to(v.dtype)), k
