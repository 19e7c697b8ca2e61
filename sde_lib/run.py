"""``python -m sde_lib.run [COMMAND] [options]``: the documented entry point of the command line,
which lives in the `sde_cli` package (``python -m sde_lib.run --help`` lists the commands)."""

import sys

from sde_cli.app import main

if __name__ == "__main__":
    sys.exit(main())
