"""Regenerate tests/data/original_configs.json: every config of the ORIGINAL score_sde_pytorch
release, as its own files produce it, for tests/test_configs.py.

Not part of the toolkit and not run by the tests. Usage (needs the original's git repository,
bare or checked out, or a plain folder holding its configs/):

    python tests/data/make_original_configs.py /path/to/score_sde_pytorch [out.json]

The original's configs/ is exported to a temporary folder and each file's get_config() is run
there in a separate Python process, with a stand-in `torch` module ahead of the real one: the
originals import torch only to set `config.device`, which is left out of the snapshot. (A
subprocess also keeps the original's `configs` package apart from the toolkit's.) Fields are
flattened to dotted keys; each value is [python type name, value], tuples written as lists, so
the test compares types (int vs float, tuple vs list) as well as values.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata

from sde_base.fileio import write_text

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, 'original_configs.json')

FAKE_TORCH = '''"""Stand-in for torch: the original configs only call torch.device and torch.cuda.is_available."""
def device(*args, **kwargs):
    return 'device-not-recorded'
class cuda:
    @staticmethod
    def is_available():
        return False
'''

# Run inside the exported folder: prints {name: {dotted key: [type name, value]}} as JSON.
DUMP = r'''
import importlib, json, pathlib, sys
sys.path.insert(0, '.')
import ml_collections

def flat(tree, prefix=''):
    out = {}
    for key, value in tree.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(flat(value, prefix + key + '.'))
        elif prefix + key != 'device':
            plain = list(value) if isinstance(value, tuple) else value
            out[prefix + key] = [type(value).__name__, plain]
    return out

result = {}
for path in sorted(pathlib.Path('configs').rglob('*.py')):
    rel = path.relative_to('configs').with_suffix('').as_posix()
    if path.name.startswith(('default_', '_')):
        continue
    module = importlib.import_module('configs.' + rel.replace('/', '.'))
    result[rel] = flat(module.get_config())
print(json.dumps(result))
'''


def export_configs(source, dest):
    """Copy the original's configs/ into `dest`; returns the commit (or 'unknown')."""
    try:
        commit = subprocess.run(['git', '-C', source, 'rev-parse', 'HEAD'], check=True,
                                capture_output=True, text=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        commit = 'unknown'
    if os.path.isdir(os.path.join(source, 'configs')):
        shutil.copytree(os.path.join(source, 'configs'), os.path.join(dest, 'configs'))
    elif commit != 'unknown':
        archive = subprocess.run(['git', '-C', source, 'archive', 'HEAD', 'configs'], check=True,
                                 capture_output=True).stdout
        subprocess.run(['tar', '-x', '-C', dest], input=archive, check=True)
    else:
        raise SystemExit(f"{source!r} is neither a git repository nor a folder with configs/")
    return commit


def dump_original(source):
    """{name: {dotted key: [type, value]}} of every original config, and its commit."""
    with tempfile.TemporaryDirectory() as tmp:
        commit = export_configs(source, tmp)
        with open(os.path.join(tmp, 'torch.py'), 'w') as f:
            f.write(FAKE_TORCH)
        env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
        run = subprocess.run([sys.executable, '-c', DUMP], cwd=tmp, env=env,
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"running the original configs failed:\n{run.stderr}")
        return json.loads(run.stdout), commit


def render(configs, commit):
    """The snapshot text: one field per line, names and fields sorted."""
    how = ("Each original config file's get_config() was run (ml_collections "
           f"{metadata.version('ml_collections')}, with a stand-in torch module since the "
           "originals import torch only for config.device) and its fields flattened to dotted "
           "keys; each value is [python type name, value], tuples written as lists. "
           "config.device is left out.")
    lines = ['{',
             f' "source": {json.dumps(f"github.com/yang-song/score_sde_pytorch@{commit}, configs/")},',
             f' "how": {json.dumps(how)},',
             ' "configs": {']
    names = sorted(configs)
    for i, name in enumerate(names):
        lines.append(f'  {json.dumps(name)}: {{')
        fields = sorted(configs[name].items())
        for j, (key, value) in enumerate(fields):
            comma = ',' if j < len(fields) - 1 else ''
            lines.append(f'   {json.dumps(key)}: {json.dumps(value)}{comma}')
        lines.append('  }' + (',' if i < len(names) - 1 else ''))
    lines += [' }', '}']
    return '\n'.join(lines) + '\n'


def main(source, out_path=DEFAULT_OUT):
    configs, commit = dump_original(source)
    text = render(configs, commit)
    write_text(out_path, text)
    print(f'{len(configs)} configs -> {out_path}')


if __name__ == '__main__':
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
