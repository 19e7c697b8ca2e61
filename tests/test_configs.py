"""configs: every config of the original score_sde_pytorch release, field by field, against a
snapshot made by running the original files; names, overrides, JSON, plain values only."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_collections
import pytest

import configs
from configs._json import to_plain

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = json.loads((REPO / "tests" / "data" / "original_configs.json").read_text())["configs"]
ORIGINAL_NAMES = sorted(SNAPSHOT)
TOOLKIT_ONLY = ("device", "runtime")  # not compared with the original
# Fields the toolkit adds to an original config, each documented in that config's file.
ADDED = {"ve/ncsn/celeba": {"training.sde": ["str", "vesde"]}}  # the original's training.loss slip


def flat(tree, prefix=""):
    """{'a.b': [type name, value]} with tuples written as lists, as in the snapshot."""
    if isinstance(tree, ml_collections.ConfigDict):
        tree = tree.to_dict()
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            plain = list(value) if isinstance(value, tuple) else value
            out[prefix + key] = [type(value).__name__, plain]
    return out


def original_fields(config):
    return {k: v for k, v in flat(config).items() if k.split(".")[0] not in TOOLKIT_ONLY}


# ----------------------------------------------------------------------------- original configs

def test_every_original_config_has_a_name():
    assert len(ORIGINAL_NAMES) == 39
    names = configs.config_names()
    assert set(ORIGINAL_NAMES) <= set(names)
    assert not [n for n in names if Path(n).name.startswith(("default_", "_"))]
    for sub in ("ve", "ve/ncsn", "ve/ncsnv2", "vp", "vp/ddpm", "subvp"):  # importable packages
        assert (REPO / "configs" / sub / "__init__.py").is_file(), sub


@pytest.mark.parametrize("name", ORIGINAL_NAMES)
def test_config_equals_original_field_by_field(name):
    ours, ref = original_fields(configs.get_config(name)), SNAPSHOT[name]
    added = ADDED.get(name, {})
    assert {k: ours.get(k) for k in added} == added and not set(added) & set(ref)
    ours = {k: v for k, v in ours.items() if k not in added}
    assert sorted(set(ref) - set(ours)) == [], "fields missing"
    assert sorted(set(ours) - set(ref)) == [], "fields the original does not have"
    wrong = {k: (ours[k], ref[k]) for k in ref if ours[k] != ref[k]}  # type and value
    assert wrong == {}


# Numbers read from the original files by hand (independent of the snapshot).
HAND_READ = {
    "ve/cifar10_ncsnpp_continuous": {
        "model.nf": 128, "model.ch_mult": (1, 2, 2, 2), "model.sigma_max": 50,
        "model.sigma_min": 0.01, "training.n_iters": 1300001, "sampling.snr": 0.16,
        "model.num_res_blocks": 4, "model.fir": True, "model.progressive_input": "residual",
        "model.embedding_type": "fourier", "training.sde": "vesde", "training.continuous": True,
        "sampling.predictor": "reverse_diffusion", "sampling.corrector": "langevin",
        "model.ema_rate": 0.999, "data.centered": False},
    "vp/ddpm/cifar10_continuous": {
        "training.sde": "vpsde", "training.continuous": True, "training.reduce_mean": True,
        "sampling.predictor": "euler_maruyama", "sampling.corrector": "none",
        "data.centered": True, "model.name": "ddpm", "model.ema_rate": 0.9999,
        "model.num_res_blocks": 2, "model.beta_min": 0.1, "model.beta_max": 20.0},
    "subvp/cifar10_ddpmpp_deep_continuous": {
        "training.sde": "subvpsde", "model.num_res_blocks": 8, "training.n_iters": 950001,
        "model.fir": False, "model.embedding_type": "positional",
        "model.progressive_input": "none"},
    "ve/ncsn/cifar10": {
        "model.name": "ncsn", "model.sigma_max": 1, "model.num_scales": 10,
        "sampling.n_steps_each": 100, "sampling.snr": 0.316, "sampling.corrector": "ald",
        "sampling.predictor": "none", "model.ema_rate": 0.0, "optim.lr": 1e-3,
        "optim.grad_clip": -1.0, "training.continuous": False},
    "ve/ncsn/cifar10_1245": {"model.num_scales": 232, "sampling.snr": 0.176,
                             "model.ema_rate": 0.999},
    "ve/ncsnv2/bedroom": {
        "data.image_size": 128, "model.num_scales": 1086, "model.sigma_max": 190,
        "sampling.snr": 0.095, "sampling.n_steps_each": 3, "training.batch_size": 128,
        "model.ema_rate": 0.9999, "model.name": "ncsnv2_128",
        "training.continuous": True, "training.continuouse": False},  # the original's typo
    "ve/ncsn/celeba": {"training.loss": "vesde", "model.sigma_max": 1.0, "sampling.snr": 0.316,
                       "training.sde": "vesde"},  # the one field the toolkit adds (ADDED)
    "ve/ffhq_ncsnpp_continuous": {
        "data.image_size": 1024, "model.nf": 16, "model.ch_mult": (1, 2, 4, 8, 16, 32, 32, 32),
        "model.sigma_max": 1348, "model.num_scales": 2000, "training.batch_size": 8,
        "sampling.snr": 0.15, "training.reduce_mean": True, "data.dataset": "FFHQ"},
    "ve/celebahq_ncsnpp_continuous": {"training.reduce_mean": False, "data.dataset": "CelebAHQ"},
    "vp/ddpm/bedroom": {
        "optim.lr": 2e-5, "model.ch_mult": (1, 1, 2, 2, 4, 4), "data.category": "bedroom",
        "data.image_size": 256, "sampling.snr": 0.075, "model.num_scales": 1000},
    "ve/celeba_ncsnpp": {"model.sigma_max": 90.0, "model.sigma_begin": 90, "sampling.snr": 0.17,
                         "training.continuous": False, "data.image_size": 64},
}


@pytest.mark.parametrize("name", sorted(HAND_READ))
def test_selected_values_read_from_the_original(name):
    config = configs.get_config(name)
    for key, expected in HAND_READ[name].items():
        section, leaf = key.rsplit(".", 1)
        value = config[section][leaf]
        assert value == expected and type(value) is type(expected), (key, value, expected)


def test_original_quirks_kept():
    assert configs.get_config("ve/ncsn/celeba").training.loss == "vesde"  # the original's slip
    assert "loss" not in configs.get_config("ve/ncsn/cifar10").training
    assert "fourier_scale" not in configs.get_config("ve/cifar10_ncsnpp").model
    assert "conv_size" not in configs.get_config("vp/ddpm/cifar10").model


# ----------------------------------------------------------------------------- plain values

def _leaves(tree, path=""):
    for key, value in tree.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value, f"{path}{key}.")
        else:
            yield path + key, value


def _is_plain(value):
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return type(value) in (bool, int, float, str, type(None))


@pytest.mark.parametrize("name", configs.config_names())
def test_plain_values_device_string_and_runtime(name):
    config = configs.get_config(name)
    bad = {k: type(v).__name__ for k, v in _leaves(config) if not _is_plain(v)}
    assert bad == {}
    assert isinstance(config.device, str)
    if name in SNAPSHOT:
        assert config.device == "auto"
    assert dict(config.runtime) == dict(configs.RUNTIME_DEFAULTS) == {
        "precision": "fp32", "compile": False, "channels_last": False}
    assert config.sampling.get("eps", "absent") == "absent"  # nothing added outside runtime
    assert configs.get_config(name) is not config  # fresh each call


def test_importing_configs_does_not_import_torch():
    code = ("import sys, configs\n"
            "[configs.get_config(n) for n in configs.config_names()]\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr


def test_resolve_device():
    import torch
    assert configs.resolve_device("cpu") == "cpu"
    assert configs.resolve_device("cuda:1") == "cuda:1"
    assert configs.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- JSON

@pytest.mark.parametrize("name", configs.config_names())
def test_json_round_trip(name):
    config = configs.get_config(name)
    back = configs.config_from_json(configs.config_to_json(config))
    assert back == config
    assert flat(back) == flat(config)  # types too: tuples stay tuples, ints stay ints


def test_json_is_plain_readable_json_and_rejects_live_objects(tmp_path):
    config = configs.get_config("ve/cifar10_ncsnpp_continuous")
    tree = json.loads(configs.config_to_json(config))
    assert tree["model"]["ch_mult"] == [1, 2, 2, 2]
    assert ["model", "ch_mult"] in tree["__tuples__"]
    assert ["model", "fir_kernel"] not in tree["__tuples__"]  # a list in the original
    nested = ml_collections.ConfigDict({"a": ((1, 2), [3, (4,)])})
    assert configs.config_from_json(configs.config_to_json(nested)).a == ((1, 2), [3, (4,)])

    path = configs.save_config(config, tmp_path / "c.json")
    assert configs.load_config(path) == config
    assert configs.load_config(path, ["model.ch_mult=(1, 2)"]).model.ch_mult == (1, 2)
    assert sorted(os.listdir(tmp_path)) == ["c.json"]

    config.model.act = object()
    with pytest.raises(TypeError, match=r"model\.act"):
        configs.config_to_json(config)
    with pytest.raises(ValueError, match="does not parse"):
        configs.config_from_json("{not json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        configs.load_config(tmp_path / "missing.json")


# ----------------------------------------------------------------------------- names and files

def test_name_forms_and_files(tmp_path):
    ref = configs.get_config("vp/ddpm/cifar10_continuous")
    for form in ("vp/ddpm/cifar10_continuous.py", "configs/vp/ddpm/cifar10_continuous.py",
                 str(REPO / "configs" / "vp" / "ddpm" / "cifar10_continuous.py"),
                 REPO / "configs" / "vp" / "ddpm" / "cifar10_continuous.py"):
        assert configs.get_config(form) == ref, form

    mine = tmp_path / "mine.py"
    mine.write_text(textwrap.dedent("""
        from configs.default_cifar10_configs import get_default_configs
        def get_config():
            config = get_default_configs()
            config.model.nf = 32
            return config
    """))
    assert configs.get_config(str(mine)).model.nf == 32

    # An original-style file: a torch.device and no runtime section.
    orig = tmp_path / "orig.py"
    orig.write_text(textwrap.dedent("""
        import ml_collections, torch
        def get_config():
            config = ml_collections.ConfigDict()
            config.model = ml_collections.ConfigDict({'nf': 8})
            config.device = torch.device('cpu')
            return config
    """))
    c = configs.load_config(str(orig))
    assert c.device == "cpu" and type(c.device) is str
    assert dict(c.runtime) == dict(configs.RUNTIME_DEFAULTS)

    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no get_config"):
        configs.get_config(str(empty))


def test_unknown_name_lists_close_names():
    with pytest.raises(ValueError) as e:
        configs.get_config("ve/cifar10_ncsnpp_continous")
    assert "ve/cifar10_ncsnpp_continuous" in str(e.value) and "Available" in str(e.value)
    with pytest.raises(ValueError, match="vp/ddpm/cifar10"):
        configs.get_config("ddpm/cifar10")
    with pytest.raises(ValueError, match="unknown config"):
        configs.get_config("default_cifar10_configs")  # defaults are not configs
    with pytest.raises(ValueError, match="unknown config"):
        configs.get_config("no/such/file.py")


# ----------------------------------------------------------------------------- overrides

def test_text_overrides_parse_by_field_type():
    base = configs.get_config("ve/cifar10_ncsnpp_continuous")
    c = configs.load_config("ve/cifar10_ncsnpp_continuous", [
        "model.nf=16", "--config.model.ch_mult=(1, 2, 2)", "model.attn_resolutions=8",
        "training.continuous=False", "optim.lr=1e-3", "model.sigma_max=60", "model.beta_max=25",
        "data.dataset=SVHN", "model.fir_kernel=[1, 1]", "runtime.precision=bf16",
        "data.path=/data/x.npz", "sampling.steps=10", "+model.note=[1, 2]", "+extra.flag=yes"])
    expected = {"model.nf": 16, "model.ch_mult": (1, 2, 2), "model.attn_resolutions": (8,),
                "training.continuous": False, "optim.lr": 1e-3, "model.sigma_max": 60,
                "model.beta_max": 25.0, "data.dataset": "SVHN", "model.fir_kernel": [1, 1],
                "runtime.precision": "bf16", "data.path": "/data/x.npz", "sampling.steps": 10,
                "model.note": [1, 2], "extra.flag": "yes"}
    for key, want in expected.items():
        section, leaf = key.rsplit(".", 1)
        got = c[section][leaf]
        assert got == want and type(got) is type(want), (key, got)
    assert base == configs.get_config("ve/cifar10_ncsnpp_continuous")  # no shared state


def test_dict_overrides_and_apply_overrides_copies():
    base = configs.get_config("vp/cifar10_ddpmpp_continuous")
    c = configs.apply_overrides(base, {"model.nf": 16, "model.ch_mult": [1, 2], "optim.lr": 1,
                                       "data": {"image_size": 8}, "training.grad_accum": 2})
    assert c.model.nf == 16 and c.model.ch_mult == (1, 2) and c.data.image_size == 8
    assert c.optim.lr == 1.0 and type(c.optim.lr) is float and c.training.grad_accum == 2
    assert base.model.nf == 128 and base.model.ch_mult == (1, 2, 2, 2)
    assert configs.load_config(base, {"model.nf": 8}).model.nf == 8 and base.model.nf == 128


@pytest.mark.parametrize("override, message", [
    (["model.nff=3"], r"'model\.nff'.*no field 'nff' in model; did you mean 'nf'"),
    (["modle.nf=3"], r"'modle\.nf'.*did you mean 'model'"),
    (["model.nf=1.5"], r"'model\.nf'.*expected an int"),
    (["training.continuous=maybe"], r"'training\.continuous'.*expected a bool"),
    (["model.ch_mult=abc"], r"'model\.ch_mult'.*tuple"),
    (["model=3"], r"'model'.*section"),
    (["model.nf"], r"not of the form a\.b=value"),
    ({"model.nf": "16"}, r"'model\.nf'.*type int"),
    ({"model.nf": True}, r"'model\.nf'.*type int"),
    ({"training.sde": 3}, r"'training\.sde'.*type str"),
    ({"sampling.steps": 2.5}, r"'sampling\.steps'.*type int"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        configs.load_config("ve/cifar10_ncsnpp_continuous", override)


def test_config_flags_with_file_path_and_overrides():
    """`--config path/to/file.py --config.a.b=value` through ml_collections.config_flags."""
    code = textwrap.dedent("""
        import sys
        from absl import flags
        from ml_collections import config_flags
        CONFIG = config_flags.DEFINE_config_file('config')
        flags.FLAGS(sys.argv)
        c = CONFIG.value
        print(c.model.nf, c.model.ch_mult, c.training.sde, c.device, c.runtime.compile)
    """)
    r = subprocess.run([sys.executable, "-c", code, "--config", "configs/vp/cifar10_ddpmpp.py",
                        "--config.model.nf=32", "--config.model.ch_mult=(1,2)",
                        "--config.runtime.compile=true"],
                       cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["32", "(1,", "2)", "vpsde", "auto", "True"]


# ----------------------------------------------------------------------------- checkpoint fixture

def test_fixture_config_matches_its_module_and_overrides():
    index = REPO / "tests" / "data" / "score_sde_pytorch" / "index.json"
    entries = json.loads(index.read_text())
    assert entries
    for key, entry in entries.items():
        config = configs.load_config(entry["config_module"], entry["overrides"])
        ours = {k: v for k, v in to_plain(config).items() if k not in TOOLKIT_ONLY}
        stored = {k: v for k, v in entry["config"].items() if k not in TOOLKIT_ONLY}
        assert flat(ours) == flat(stored), key  # values and JSON types (int vs float)


# ----------------------------------------------------------------------------- value checks
@pytest.mark.parametrize("name", configs.config_names())
def test_every_builtin_config_passes_the_value_checks(name):
    assert configs.value_problems(configs.get_config(name)) == []


@pytest.mark.parametrize("field, value, rule", [
    ("model.sigma_max", float("inf"), "must be a finite positive number"),
    ("model.sigma_max", float("nan"), "must be a finite positive number"),
    ("optim.lr", -1.0, "must be a finite positive number"),
    ("training.batch_size", 0, "must be a positive integer"),
    ("training.batch_size", 2.5, "must be a positive integer"),
    ("training.continuous", 1, "must be True or False"),
    ("data.centered", "yes", "must be True or False"),
    ("model.ch_mult", (), "must be a non-empty tuple of positive integers"),
    ("model.ch_mult", (1, 0), "must be a non-empty tuple of positive integers"),
    ("model.attn_resolutions", (16, -8), "must be a tuple of positive integers (may be empty)"),
    ("model.fir_kernel", [1, float("inf")], "must be a non-empty list of finite numbers"),
    ("model.init_scale", -0.5, "must be a finite number >= 0"),
    ("model.conv_size", 0, "must be a positive integer"),
    ("eval.begin_ckpt", -1, "must be a non-negative integer"),
    ("seed", -3, "must be a non-negative integer"),
    ("training.dist_timeout", 0.0, "must be a finite positive number"),
])
def test_value_checks_name_the_field_and_the_rule(field, value, rule):
    # Not type-safe, as a config from a JSON file or built by hand may be.
    config = ml_collections.ConfigDict(
        configs.get_config("ve/cifar10_ncsnpp_continuous").to_dict(), type_safe=False)
    with config.unlocked():
        if "." in field:
            section, key = field.split(".")
            config[section][key] = value
        else:
            config[field] = value
    problems = configs.value_problems(config)
    assert problems == [f"config.{field} {rule}, got {value!r}"]
    with pytest.raises(ValueError, match=f"config.{field}"):
        configs.check_values(config)


def test_value_checks_orders():
    config = configs.get_config("ve/cifar10_ncsnpp_continuous")
    config.eval.begin_ckpt, config.eval.end_ckpt = 9, 9  # equal is fine here
    assert configs.value_problems(config) == []
    config.eval.begin_ckpt = 10
    assert configs.value_problems(config) == [
        "config.eval.begin_ckpt (10) must be at most config.eval.end_ckpt (9)"]
    config.eval.begin_ckpt, config.model.sigma_min = 9, 50.0  # sigma_max is 50
    assert configs.value_problems(config) == [
        "config.model.sigma_min (50.0) must be below config.model.sigma_max (50)"]


def test_train_checks_values_before_any_work(tmp_path):
    """A direct library call, not only the command line, refuses a value that cannot be right
    before the workdir is created."""
    from training.train import train
    config = configs.get_config("builtin/digits_ve")
    config.model.sigma_max = float("inf")
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"config.model.sigma_max must be a finite positive "
                                         r"number, got inf"):
        train(config, str(workdir), device="cpu", progress=False)
    assert not workdir.exists()
