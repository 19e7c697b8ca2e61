"""The package layers, read from the source with `ast` (nothing is imported or run).

Layers, bottom to top; a module imports only its own layer or lower, with no cycle between
packages or between modules (imports inside functions count too):

    0 sde_base (file I/O, registries)   1 configs, sde_lib   2 networks   3 solvers
    4 likelihood   5 training   6 evaluation   7 sde_cli (the command line)

The two documented entry points `python -m sde_lib.run` and `python -m likelihood.evaluate` are
thin shims over `sde_cli` and the only modules below it allowed to import it.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"sde_base": 0, "configs": 1, "sde_lib": 1, "networks": 2, "solvers": 3,
          "likelihood": 4, "training": 5, "evaluation": 6, "sde_cli": 7}
ENTRY_POINTS = {"sde_lib.run", "likelihood.evaluate"}  # may import sde_cli
# importable without the rest:
LIBRARY = ("sde_base", "sde_lib", "networks", "solvers", "likelihood")


def module_files():
    """{module name: path} of every module of the layered packages."""
    out = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = module_files()


def _is_package(name):
    return MODULES[name].name == "__init__.py"


def _project_module(name):
    """The most specific project module a dotted name lies in (`a.b.attr` -> `a.b`), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _resolve(module, node):
    """The project modules one import statement names (the most specific module each)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's package, one level up per extra dot
            parts = module.split(".") if _is_package(module) else module.split(".")[:-1]
            parts = parts[:len(parts) - (node.level - 1)] + ([base] if base else [])
            base = ".".join(parts)
        # `from pkg import sub` names the submodule when there is one, else pkg itself
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                 for a in node.names]
    return {_project_module(name) for name in names} - {None}


def _dynamic_import(node):
    """The module of a call `importlib.import_module('literal.name')`, else None (a computed name
    cannot be read without running the code)."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name != "import_module" or not node.args:
        return None
    arg = node.args[0]
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def imports_of(module):
    """[(imported module, line)] of every import anywhere in `module` (ast.walk: functions and
    classes too), `importlib.import_module` of a literal name included."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out += [(target, node.lineno) for target in sorted(_resolve(module, node))]
        elif isinstance(node, ast.Call) and _project_module(_dynamic_import(node)):
            out.append((_project_module(_dynamic_import(node)), node.lineno))
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def package_of(module):
    return module.split(".")[0]


def _allowed_upward(source, target):
    return source in ENTRY_POINTS and package_of(target) == "sde_cli"


def _where(module, line):
    return f"{MODULES[module].relative_to(ROOT)}:{line}"


def _cycles(edges):
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _cycle_report(component, edges, lines):
    """One readable loop through a strongly connected component, with file:line per edge."""
    inside = set(component)
    path, seen, node = [component[0]], {component[0]}, component[0]
    while True:
        node = min(w for w in edges[node] if w in inside)
        if node in seen:
            path = path[path.index(node):] + [node]
            break
        path.append(node)
        seen.add(node)
    loop = " -> ".join(f"{a} ({lines[a, b]})" for a, b in zip(path, path[1:]))
    return f"{', '.join(component)} import each other, e.g. {loop} -> {path[-1]}"


def test_the_scan_sees_every_package_and_known_imports():
    """Guards the scanner itself: every layered package is found, with its modules, and imports
    written in every form (plain, from, relative, inside functions) are resolved."""
    assert set(LAYERS) <= {package_of(m) for m in MODULES}
    assert len(MODULES) > 60
    assert "sde_lib.sdes" in {t for t, _ in GRAPH["sde_lib"]}
    assert "networks.ncsnpp" in {t for t, _ in GRAPH["networks.ddpm"]}
    tree = ast.parse("from . import layers\nfrom .utils import get_act\nimport networks.ema\n"
                     "import torch.nn\ndef f():\n    from ..sde_lib import sdes\n")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= _resolve("networks.ddpm", node)
    assert found == {"networks.layers", "networks.utils", "networks.ema", "sde_lib.sdes"}
    call = ast.parse("importlib.import_module('training.data')").body[0].value
    assert _dynamic_import(call) == "training.data"


def test_no_module_imports_a_higher_layer():
    upward = [f"{_where(m, line)}: {m} (layer {LAYERS[package_of(m)]}) imports {t} "
              f"(layer {LAYERS[package_of(t)]})"
              for m, imports in GRAPH.items() for t, line in imports
              if LAYERS[package_of(t)] > LAYERS[package_of(m)] and not _allowed_upward(m, t)]
    assert upward == [], "upward imports:\n" + "\n".join(upward)


def test_no_import_cycle_between_packages():
    edges, lines = {}, {}
    for m, imports in GRAPH.items():
        for t, line in imports:
            a, b = package_of(m), package_of(t)
            if a != b and not _allowed_upward(m, t):
                edges.setdefault(a, set()).add(b)
                lines.setdefault((a, b), _where(m, line))
    cycles = [_cycle_report(c, edges, lines) for c in _cycles(edges)]
    assert cycles == [], "package cycles:\n" + "\n".join(cycles)


def test_no_import_cycle_between_modules():
    edges, lines = {}, {}
    for m, imports in GRAPH.items():
        for t, line in imports:
            if t != m:
                edges.setdefault(m, set()).add(t)
                lines.setdefault((m, t), _where(m, line))
    cycles = [_cycle_report(c, edges, lines) for c in _cycles(edges)]
    assert cycles == [], "module cycles:\n" + "\n".join(cycles)


def test_no_private_name_is_imported_from_another_package():
    """A name with a leading underscore is its package's own business (sde_lib's beta schedule
    is public as `BetaSchedule` because solvers use it)."""
    private = []
    for m in MODULES:
        tree = ast.parse(MODULES[m].read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] in LAYERS and package_of(node.module) != package_of(m):
                    private += [f"{_where(m, node.lineno)}: {node.module}.{a.name}"
                                for a in node.names if a.name.startswith("_")]
    assert private == [], "private names imported across packages:\n" + "\n".join(private)


def test_the_library_imports_no_training_evaluation_or_command_module():
    code = ("import sys; import sde_base, sde_lib, networks, solvers, likelihood; "
            "print('\\n'.join(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('training', 'evaluation', 'sde_cli'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [], f"importing {', '.join(LIBRARY)} imported {out.stdout.split()}"


# ----------------------------------------------------------------------------- standing alone

OUTSIDE = re.compile(r"\.\./shared|/work/shared|PITFALLS\.md|parent\s*/\s*[\"']shared[\"']")
PROJECT = "|".join(LAYERS)
SKIP_OWN = re.compile(rf"importorskip\(\s*[\"']({PROJECT}|benchmarks)\b")


def _project_files():
    """The repository's text files (git's list; without git, the packages, tests, benchmarks and
    the top-level files)."""
    suffixes = (".py", ".md", ".toml", ".cfg", ".txt")
    try:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split()
        paths = [ROOT / f for f in files]
    except (OSError, subprocess.CalledProcessError):
        paths = [p for d in [*LAYERS, "tests", "benchmarks"] for p in (ROOT / d).rglob("*")]
        paths += list(ROOT.glob("*"))
    return [p for p in paths if p.suffix in suffixes and p.is_file()]


@pytest.mark.parametrize("pattern,what", [(OUTSIDE, "a path outside the repository"),
                                          (SKIP_OWN, "an importorskip of the project's code")])
def test_the_repository_stands_alone(pattern, what):
    """No file points outside the repository (its fixtures are in tests/data), and no test skips
    when one of the project's own modules fails to import."""
    me = Path(__file__).resolve()
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
            for p in _project_files() if p.resolve() != me
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if pattern.search(line)]
    assert hits == [], f"{what}:\n" + "\n".join(hits)
