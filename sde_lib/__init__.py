"""The SDE library: forward SDEs (one file each, registered by name), their reverses, and an
exact-score oracle."""

from sde_lib.sdes import (SDE, SDES, ReverseSDE, expand_to, get_sde, register_sde,
                          sde_from_description, sde_names)
from sde_lib.ve import VESDE, geometric_sigmas
from sde_lib.vp import VPSDE, BetaSchedule
from sde_lib.subvp import subVPSDE
from sde_lib.cosine_vp import CosineVPSDE
from sde_lib.edm import EDMVESDE
from sde_lib import oracle

__all__ = ["SDE", "SDES", "BetaSchedule", "CosineVPSDE", "EDMVESDE", "ReverseSDE", "VESDE",
           "VPSDE", "subVPSDE", "expand_to", "geometric_sigmas", "get_sde", "oracle",
           "register_sde", "sde_from_description", "sde_names"]
