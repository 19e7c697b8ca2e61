"""``python -m sde_lib.run colorize``: colorize the grey versions of the first -n images of a
split with an RGB score model (the machinery of `sde_cli.inpaint`)."""

from sde_cli.app import command
from sde_cli.inpaint import add_inverse_arguments, solve


@command("colorize", "Colorize the grey versions of the first -n images of a split (RGB models): "
         "<stem>_original/_before/_after.png and <stem>.json.",
         add_inverse_arguments)
def run(args):
    """Colorize the grey versions of the first -n images of the split."""
    return solve(args, "colorize")
