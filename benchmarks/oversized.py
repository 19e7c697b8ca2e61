"""Oversized requests from files and flags, refused before any allocation: each command-line case
runs in a child process; reported are its exit status, its one line on stderr, its wall and CPU
time and its peak resident memory (`resource.getrusage(RUSAGE_CHILDREN)` of a wrapper process
that runs only that child).

    OMP_NUM_THREADS=1 python -m benchmarks.oversized

(run as a module from the repository root.) Cases: a diffusers folder whose config.json says
layers_per_block = 1000000; one whose block_out_channels are [100000, 100000]; one whose
sample_size is 2^30; a scheduler with num_train_timesteps = 1e12; a 200 KB `.safetensors`
checkpoint whose stored config says nf = 1e9; `train --config.model.nf=1000000000`. Most of the
wall time is importing torch; the CPU time says how much of it the machine's load adds.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile

if not __package__:
    sys.exit("run as a module from the repository root: python -m benchmarks.oversized")

import torch

import configs
import networks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs argv[1:] as its only child and prints that child's peak RSS and CPU time.
_WRAPPER = r'''
import json, resource, subprocess, sys, time
t = time.time()
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": r.returncode, "wall": time.time() - t, "cpu": u.ru_utime + u.ru_stime,
                  "peak_rss_mb": u.ru_maxrss / 1024, "stderr": r.stderr.strip()}))
'''


def diffusers_folder(folder, unet_changes, sched_changes):
    """A small NCSN++ diffusers pipeline folder with `unet_changes` in its config.json and
    `sched_changes` in its scheduler config; its weights file holds one tensor."""
    from safetensors.torch import save_file
    unet = {'_class_name': 'UNet2DModel', 'sample_size': 16, 'in_channels': 3,
            'out_channels': 3, 'time_embedding_type': 'fourier', 'flip_sin_to_cos': True,
            'freq_shift': 1, 'center_input_sample': True, 'block_out_channels': [32, 64],
            'layers_per_block': 1, 'norm_num_groups': None, 'norm_eps': 1e-6,
            'mid_block_scale_factor': 2 ** 0.5, 'attention_head_dim': None,
            'down_block_types': ['SkipDownBlock2D', 'SkipDownBlock2D'],
            'up_block_types': ['SkipUpBlock2D', 'SkipUpBlock2D'], **unet_changes}
    sched = {'_class_name': 'ScoreSdeVeScheduler', 'num_train_timesteps': 100,
             'sigma_min': 0.01, 'sigma_max': 50.0, **sched_changes}
    os.makedirs(os.path.join(folder, 'unet'))
    os.makedirs(os.path.join(folder, 'scheduler'))
    with open(os.path.join(folder, 'unet', 'config.json'), 'w') as f:
        json.dump(unet, f)
    with open(os.path.join(folder, 'scheduler', 'scheduler_config.json'), 'w') as f:
        json.dump(sched, f)
    save_file({'conv_in.weight': torch.zeros(32, 3, 3, 3)},
              os.path.join(folder, 'unet', 'diffusion_pytorch_model.safetensors'))
    return folder


def cases(root):
    """[(name, argv)] of the command lines measured."""
    run = [sys.executable, '-m', 'sde_lib.run']
    out = []
    for name, unet, sched in (
            ('diffusers layers_per_block=1e6', {'layers_per_block': 1000000}, {}),
            ('diffusers block_out_channels=[1e5, 1e5]', {'block_out_channels': [100000, 100000]},
             {}),
            ('diffusers sample_size=2^30', {'sample_size': 2 ** 30}, {}),
            ('diffusers num_train_timesteps=1e12', {}, {'num_train_timesteps': 10 ** 12})):
        folder = diffusers_folder(os.path.join(root, name.split()[1].split('=')[0]), unet, sched)
        out.append((name, run + ['sample', '--diffusers', folder, '-n', '4', '--out',
                                 os.path.join(root, 'out'), '--no-progress']))
    c = configs.get_config('builtin/digits_ve')
    small = networks.create_model(c, device='cpu')
    with c.ignore_type():
        c.model.nf = 10 ** 9
    path = networks.save_checkpoint(os.path.join(root, 'stored_nf.safetensors'), small, c)
    out.append((f'checkpoint ({os.path.getsize(path) // 1024} KB) with stored nf=1e9',
                run + ['sample', '--checkpoint', path, '-n', '4', '--out',
                       os.path.join(root, 'out'), '--no-progress']))
    out.append(('train --config.model.nf=1000000000',
                run + ['train', '--config', 'builtin/digits_ve', '--config.model.nf=1000000000',
                       '--workdir', os.path.join(root, 'w'), '--no-progress']))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name, argv in cases(root):
            r = subprocess.run([sys.executable, '-c', _WRAPPER] + argv, capture_output=True,
                               text=True, cwd=REPO, env=env)
            rows.append((name, json.loads(r.stdout)))
    print(f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, torch {torch.__version__}")
    print("| request | exit | wall (s) | CPU (s) | peak RSS (MB) | message |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        lines = r['stderr'].splitlines()
        print(f"| {name} | {r['rc']} | {r['wall']:.1f} | {r['cpu']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {len(lines)} line: `{lines[-1] if lines else ''}` |")


if __name__ == '__main__':
    main()
