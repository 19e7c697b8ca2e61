"""The error and the result record of the diffusers bridge."""

from dataclasses import dataclass, field

from networks.checkpoint import CheckpointError


class DiffusersError(CheckpointError):
    """A diffusers model or scheduler that cannot be read, or that the toolkit cannot represent."""


@dataclass
class DiffusersInfo:
    """What `from_diffusers` derived: `config` (a full toolkit ConfigDict: model, data, training,
    sampling), `family` ('ncsnpp' or 'ddpm'), `continuous` (the flag for `get_score_fn`),
    `convention` (in words), `source`, the diffusers `unet_config` and `scheduler_config` as
    read, and `notes` (defaults that were assumed)."""
    config: object
    family: str
    continuous: bool
    convention: str
    source: str
    unet_config: dict
    scheduler_config: dict = None
    notes: list = field(default_factory=list)
