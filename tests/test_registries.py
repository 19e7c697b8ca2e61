"""One registry implementation (`sde_base.registry.Registry`) behind every name lookup: models,
training objectives, samplers, predictors, correctors, time grids."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import networks
import solvers
from networks import registry as model_registry
from sde_base.registry import Registry, UnknownNameError
from training import objectives

ROOT = Path(__file__).resolve().parents[1]


def test_every_name_lookup_uses_the_one_registry_class():
    from sde_cli.app import COMMANDS

    for reg in [model_registry.MODELS, objectives.OBJECTIVES, solvers.SAMPLERS,
                solvers.PREDICTORS, solvers.CORRECTORS, solvers.GRIDS, COMMANDS]:
        assert type(reg) is Registry, reg


def test_unknown_names_list_the_known_ones():
    with pytest.raises(KeyError, match="unknown model 'no_such_net'.*ddpm.*ncsnpp") as e:
        networks.get_model_class("no_such_net")
    assert isinstance(e.value, ValueError) and isinstance(e.value, UnknownNameError)
    assert not str(e.value).startswith(("'", '"'))  # the message, not KeyError's repr of it
    with pytest.raises(ValueError, match="unknown objective 'nope'.*exact_sm.*ssm"):
        objectives.get_objective("nope")


def test_models_register_by_class_name_or_alias_and_refuse_duplicates():
    import torch.nn as nn

    assert {"ncsnpp", "ddpm", "ncsn", "ncsnv2", "ncsnv2_64", "ncsnv2_128", "ncsnv2_256",
            "ncsnv2_deeper", "ncsnv2_deepest"} <= set(networks.model_names())

    @networks.register_model
    class _TestOnlyNet(nn.Module):
        pass

    try:
        assert networks.get_model_class("_TestOnlyNet") is _TestOnlyNet
        with pytest.raises(ValueError, match="already registered"):
            networks.register_model(_TestOnlyNet)
        with pytest.raises(ValueError, match="already registered"):
            networks.register_model(_TestOnlyNet, name="ncsnpp")
    finally:
        model_registry.MODELS._items.pop("_TestOnlyNet")


def test_a_missing_model_module_fails_the_import_of_networks():
    """Every model module ships with the package: if one cannot be imported, `import networks`
    fails at once (no silent 'not present in this installation' fallback)."""
    code = textwrap.dedent("""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "networks.ncsnv2":
                    raise ModuleNotFoundError("blocked for the test", name=name)
                return None

        sys.meta_path.insert(0, Block())
        try:
            import networks
        except ImportError as e:
            print("failed:", "ncsnv2" in str(e))
        else:
            print("imported")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "failed: True", out.stdout + out.stderr
