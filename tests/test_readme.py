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
