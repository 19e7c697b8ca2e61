"""Sizes from configs and files are checked before anything is allocated (networks/sizes.py):
oversized or malformed requests from a config, a checkpoint's stored config or a diffusers
config.json fail with one line naming the field, using little memory."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import configs
import networks
from benchmarks.oversized import diffusers_folder
from networks.sizes import ModelConfigError, check_against_weights, check_model_config

REPO = Path(__file__).resolve().parents[1]


def _with(name, **fields):
    c = configs.get_config(name)
    with c.ignore_type():
        for dotted, value in fields.items():
            section, field = dotted.split('__')
            c[section][field] = value
    return c


@pytest.mark.parametrize('field,value,named', [
    ('model__nf', 10 ** 9, 'config.model.nf = 1000000000'),
    ('model__num_res_blocks', 10 ** 6, 'config.model.num_res_blocks = 1000000'),
    ('model__ch_mult', (1, 100000), r'config.model.ch_mult = \(1, 100000\)'),
    ('data__image_size', 2 ** 30, 'config.data.image_size = 1073741824'),
    ('model__num_scales', 10 ** 12, 'config.model.num_scales = 1000000000000'),
    ('model__nf', -3, 'config.model.nf = -3: must be at least 1'),
    ('model__nf', None, 'config.model.nf = None: must be a whole number'),
    ('model__nf', 2.5, 'config.model.nf = 2.5: must be a whole number'),
    ('model__ch_mult', (1, 0), r'config.model.ch_mult\[1\] = 0'),
])
def test_size_fields_that_cannot_fit_or_be_are_named(field, value, named):
    c = _with('ve/cifar10_ncsnpp_continuous', **{field: value})
    with pytest.raises(ModelConfigError, match=named) as err:
        check_model_config(c)
    assert '\n' not in str(err.value)
    with pytest.raises(ModelConfigError, match=named):  # before anything is built
        networks.create_model(c, device='cpu')


def test_a_training_batch_that_cannot_fit_is_named():
    c = _with('ve/cifar10_ncsnpp_continuous', training__batch_size=10 ** 7)
    check_model_config(c)  # the network fits
    with pytest.raises(ModelConfigError, match='config.training.batch_size = 10000000'):
        from training.train import build_state
        build_state(c, 'cpu')


def test_every_shipped_config_passes():
    """Lower bounds only: no published or built-in config is refused."""
    for name in configs.config_names():
        c = configs.get_config(name)
        check_model_config(c, batch=int(c.training.batch_size), copies=5, grad=True)


def test_the_lower_bound_is_below_every_network_it_bounds():
    from networks.sizes import _values, lower_bounds
    for name in ('ve/cifar10_ncsnpp_continuous', 'vp/ddpm/cifar10', 'builtin/digits_ve',
                 've/ncsnv2/cifar10', 've/ncsn/cifar10', 'vp/cifar10_ddpmpp'):
        c = configs.get_config(name)
        model = networks.create_model(c, device='cpu')
        count = sum(p.numel() for p in model.parameters())
        assert lower_bounds(_values(c))[0] <= count, name


def test_a_weights_file_too_small_for_its_config_is_refused_before_building():
    c = configs.get_config('builtin/digits_ve')
    model = networks.create_model(c, device='cpu')
    count = sum(t.numel() for t in model.state_dict().values())
    check_against_weights(c, count)
    big = _with('builtin/digits_ve', model__nf=4 * int(c.model.nf))
    with pytest.raises(ModelConfigError, match=r'config.model.nf = \d+: the network has at '
                                               r'least .* weights, but the checkpoint holds'):
        check_against_weights(big, count)


# Runs argv[1:] as its only child and reports the child's output and peak resident memory. (A
# process forked from pytest itself would count pytest's memory at the fork in its own peak.)
_WRAPPER = r'''
import json, resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({'rc': r.returncode, 'stdout': r.stdout, 'stderr': r.stderr[-3000:],
                  'peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
'''

# One child runs every oversized case (a memory ceiling guards the machine should a check be
# missing) and reports each error and its own peak resident memory.
_CHILD = r'''
import json, os, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
import torch
import configs, networks
from networks.checkpoint import read_checkpoint, stored_config
root, out = sys.argv[1], []
def case(name, fn):
    t = time.process_time()
    try:
        fn()
        out.append([name, None, None])
    except Exception as e:
        out.append([name, type(e).__name__, str(e)])
for sub in sorted(os.listdir(os.path.join(root, 'diffusers'))):
    case(sub, lambda: networks.from_diffusers(os.path.join(root, 'diffusers', sub)))
path = os.path.join(root, 'stored_nf.safetensors')
case('stored_nf', lambda: networks.load_checkpoint(path, stored_config(read_checkpoint(path))))
def train_nf():
    from training.train import train
    c = configs.get_config('builtin/digits_ve')
    c.model.nf = 10 ** 9
    train(c, os.path.join(root, 'workdir'), device='cpu', progress=False, lock=False)
case('train_nf', train_nf)
print(json.dumps({'cases': out}))
'''

# case -> (config.json changes, scheduler_config.json changes, what the error must name)
_DIFFUSERS = {
    'layers_per_block': ({'layers_per_block': 1000000}, {},
                         'config.json: layers_per_block = 1000000: the diffusers model would '
                         'need at least'),
    'wide': ({'block_out_channels': [100000, 100000]}, {},
             r'config.json: block_out_channels = \[100000, 100000\]: .* would need'),
    'sample_size': ({'sample_size': 2 ** 30}, {}, 'config.json: sample_size = 1073741824: '),
    'timesteps': ({}, {'num_train_timesteps': 10 ** 12},
                  'scheduler config: num_train_timesteps = 1000000000000: the SDE of the '
                  'scheduler would need'),
    'timesteps_float': ({}, {'num_train_timesteps': 1e12},
                        'scheduler config: num_train_timesteps = 1000000000000.0: the SDE'),
    'negative': ({'block_out_channels': [-32, 64]}, {},
                 r'config.json: block_out_channels\[0\] = -32: must be at least 1'),
    'null': ({'layers_per_block': None}, {},
             'config.json: layers_per_block = None: must be a whole number'),
    'sigma_inf': ({}, {'sigma_max': float('inf')},
                  'scheduler config: sigma_max = inf: must be a finite positive number'),
}


def test_oversized_requests_fail_naming_the_field_with_little_memory(tmp_path):
    for name, (unet, sched, _) in _DIFFUSERS.items():
        diffusers_folder(tmp_path / 'diffusers' / name, unet, sched)
    c = configs.get_config('builtin/digits_ve')
    small = networks.create_model(c, device='cpu')  # a small file whose config says nf = 1e9
    with c.ignore_type():
        c.model.nf = 10 ** 9
    networks.save_checkpoint(tmp_path / 'stored_nf.safetensors', small, c)

    env = {'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': '1', 'PATH': '/usr/bin:/bin'}
    r = subprocess.run([sys.executable, '-c', _WRAPPER, sys.executable, '-c', _CHILD,
                        str(tmp_path)], capture_output=True, text=True, cwd=REPO, env=env,
                       timeout=600)
    wrapped = json.loads(r.stdout)
    assert wrapped['rc'] == 0, wrapped['stderr']
    report = json.loads(wrapped['stdout'].strip().splitlines()[-1])
    got = {name: (kind, message) for name, kind, message in report['cases']}
    import re
    for name, (_, _, named) in _DIFFUSERS.items():
        kind, message = got[name]
        assert kind == 'DiffusersError' and re.search(named, message), (name, kind, message)
        assert '\n' not in message
    kind, message = got['stored_nf']
    assert kind == 'ModelConfigError' and 'config.model.nf = 1000000000' in message, message
    kind, message = got['train_nf']
    assert kind == 'ModelConfigError' and 'config.model.nf = 1000000000' in message, message
    assert not (tmp_path / 'workdir').exists()  # refused before anything was written
    assert wrapped['peak_rss_mb'] < 1024, wrapped['peak_rss_mb']
