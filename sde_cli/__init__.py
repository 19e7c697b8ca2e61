"""The command line of the toolkit: ``python -m sde_lib.run [COMMAND] [options]``.

One module per command (`main`, `train`, `sample`, `eval`, `likelihood`, `advise`, `inpaint`,
`colorize`, `conditional`), one parser style and one set of shared flags (`sde_cli.options`),
one dispatcher with one error rule (`sde_cli.app`). This package sits on top of every other:
nothing below it imports it except the two documented entry points, `sde_lib/run.py` and
`likelihood/evaluate.py`.
"""
