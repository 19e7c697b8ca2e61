"""Configs with the variance-exploding (VE) SDE: NCSN++, and NCSN/NCSNv2 as its discrete
special cases."""
