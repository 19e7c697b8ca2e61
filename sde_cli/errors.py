"""The one kind of expected failure of the command line: `CLIError`, printed as one
``error:`` line with status 1 (`sde_cli.app`)."""


class CLIError(Exception):
    """An expected failure (bad flag value, missing file, ...): printed as one ``error:`` line."""
