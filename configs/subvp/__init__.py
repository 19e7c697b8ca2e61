"""Configs with the sub-VP SDE (Song et al., 2021, Eq. 11)."""
