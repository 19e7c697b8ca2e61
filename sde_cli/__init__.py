"""The command line of the toolkit: ``python -m sde_lib.run [COMMAND] [options]``.

One module per command (`main`, `train`, `sample`, `eval`, `likelihood`, `advise`, `inpaint`,
`colorize`, `conditional`, `metrics`), each registering itself with `@sde_cli.app.command` when
this package is imported; one dispatcher with one error rule (`sde_cli.app`); the shared pieces one
module per job: the parser style and shared flags (`sde_cli.flags`), the config and checkpoint
of a run (`sde_cli.configuration`), device and threads (`sde_cli.machine`), filesystem checks
and the folder lock (`sde_cli.folders`), the expected-error type (`sde_cli.errors`), sample
files (`sde_cli.outputs`). This package sits on top of every other: nothing below it imports it
except the two documented entry points, `sde_lib/run.py` and `likelihood/evaluate.py`.
"""

from sde_cli import (advise, colorize, conditional, eval, inpaint, likelihood,  # noqa: F401
                     main, metrics, sample, train)  # importing a module registers its command
