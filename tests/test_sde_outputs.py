"""Outputs for fixed seeds are unchanged by changes to how the SDEs are written: samples of every
sampler family, log-likelihoods and bits/dim, training losses, network labels and scores, on the
oracle and on a tiny network, for VE, VP and sub-VP, against values captured from the code
before the SDEs moved to one file each (tests/sde_outputs.py wrote tests/data/sde_outputs.json)."""

import json
import math

import pytest

import sde_outputs

REFERENCE = json.loads(sde_outputs.FILE.read_text())


@pytest.fixture(scope="module")
def current():
    return sde_outputs.compute()


def test_every_captured_output_is_reproduced(current):
    assert set(current) == set(REFERENCE)
    bad = []
    for key, ref in REFERENCE.items():
        now = current[key]
        if key.endswith("/description"):
            if [list(p) for p in now] != ref:
                bad.append(key)
            continue
        if len(now) != len(ref) or any(not math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
                                       for a, b in zip(now, ref)):
            bad.append(key)
    assert not bad, f"changed outputs: {bad}"
