"""The experiment configs of the original score_sde_pytorch release, as ml_collections
ConfigDicts, under the same relative names with the same fields and values, plus the
toolkit's built-in small configs (`builtin/...`).

    import configs
    config = configs.get_config('ve/cifar10_ncsnpp_continuous')
    config = configs.load_config('vp/ddpm/cifar10_continuous', ['model.nf=64', 'seed=1'])
    configs.config_names()                      # every available name

Each file also works on its own, as with the original: `--config configs/ve/....py` with
`--config.a.b=value` overrides through ml_collections.config_flags.

Differences from the original, all outside the original's fields:
  * `config.device` is the string 'auto' instead of a torch.device; the run code turns it into
    a device with `resolve_device` ('cuda' when available, else 'cpu').
  * `config.runtime` holds toolkit-only settings of how to run: `precision` ('fp32'),
    `compile` (False), `channels_last` (False).
Configs loaded through `get_config`/`load_config` are normalised the same way, whatever file
they come from (an original config file's torch.device becomes its string).
"""

from configs._checks import check_values, value_problems
from configs._json import config_from_json, config_to_json, to_plain
from configs._overrides import OPTIONAL_FIELDS, apply_overrides
from configs._registry import config_names, get_config, load_config, save_config
from configs._runtime import AUTO_DEVICE, RUNTIME_DEFAULTS, resolve_device, runtime_defaults

__all__ = [
    'get_config', 'load_config', 'save_config', 'config_names', 'apply_overrides',
    'config_to_json', 'config_from_json', 'resolve_device', 'runtime_defaults',
    'OPTIONAL_FIELDS', 'AUTO_DEVICE', 'RUNTIME_DEFAULTS', 'check_values', 'value_problems',
    'to_plain',
]
