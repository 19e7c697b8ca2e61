"""DDPM (Ho et al., 2020) as discrete (and continuous) VP models."""
