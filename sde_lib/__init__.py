"""The SDE library: forward SDEs, their reverses, and an exact-score oracle."""

from sde_lib.sdes import (SDE, SDES, BetaSchedule, ReverseSDE, VESDE, VPSDE, expand_to, get_sde,
                          subVPSDE)
from sde_lib import oracle

__all__ = ["SDE", "SDES", "BetaSchedule", "ReverseSDE", "VESDE", "VPSDE", "subVPSDE", "expand_to",
           "get_sde", "oracle"]
