"""Configs with the variance-preserving (VP) SDE: DDPM++, NCSN++, and DDPM as its discrete
special case."""
