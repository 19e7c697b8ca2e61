"""``python -m likelihood.evaluate [options]``: bits/dim of a dataset split under a checkpoint,
the documented entry point of the `likelihood` command of `sde_cli` (its --help lists the
options; the config comes from --config or from a toolkit checkpoint)."""

import sys

from sde_cli.likelihood import main

if __name__ == "__main__":
    sys.exit(main())
