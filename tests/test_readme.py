"""The README's first lines and its tour run as written (the snippets that need a downloaded
checkpoint or a hub model are left out)."""

import re
from pathlib import Path

import torch

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_first_lines_are_the_install_and_test_commands():
    block = README.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert block[0].endswith("python -m sde_lib.run --sde ve --sampler pc")
    assert block[1] == "python -m pip install -e '.[test]' && python -m pytest -q"
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert block[1] in ci


def test_tour_snippets_run_in_order():
    tour = README.split("## Tour", 1)[1].split("### Command line", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", tour, flags=re.S)
    runnable = [b for b in blocks if "checkpoint_" not in b and "google/" not in b]
    assert len(runnable) >= 5
    torch.manual_seed(0)
    namespace = {}
    for block in runnable:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    assert namespace["res"].logp.shape == (16,) and torch.isfinite(namespace["res"].logp).all()


def _section(title):
    return README.split(title, 1)[1].split("\n## ", 1)[0]


def test_the_writing_guarantee_names_the_one_file_that_is_appended():
    """The README's guarantee is exact: the files written in place (append mode) are named as
    such; every other file goes through the atomic writer."""
    import ast
    root = Path(__file__).resolve().parents[1]
    appending = set()
    for package in ("configs", "sde_lib", "networks", "solvers", "likelihood", "training",
                    "evaluation", "sde_cli"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open"
                        and any(isinstance(a, ast.Constant) and str(a.value).startswith("a")
                                for a in node.args[1:2])):
                    appending.add(path.relative_to(root).as_posix())
    assert appending == {"training/logs.py"}  # log.jsonl
    guarantee = " ".join(_section("## What is never unpickled").split())
    assert "The one exception is `log.jsonl`, appended one JSON line per record" in guarantee
    assert "A config file given as `.py` is executed (it is Python)" in guarantee


def test_the_readme_says_what_colorize_needs_and_what_tmpd_costs():
    text = " ".join(README.split())
    assert "Colorization needs an RGB model" in text
    assert "`--method tmpd`" in text and "times the cost of a step" in text
    assert "2 idle CPU cores" in text  # timings say on what machine state they were taken
