"""sde_base.values: one parser and one message per kind of value, for flags and sampler options."""

import math

import pytest

from sde_base.values import count, positive_float, positive_int


@pytest.mark.parametrize("parse, text, want", [
    (positive_int, "3", 3), (positive_int, 3, 3), (positive_int, 3.0, 3), (positive_int, " 7 ", 7),
    (count, "0", 0), (count, 0, 0),
    (positive_float, "0.5", 0.5), (positive_float, 2, 2.0), (positive_float, "1e-5", 1e-5),
])
def test_good_values(parse, text, want):
    value = parse(text)
    assert value == want and type(value) is type(want)


@pytest.mark.parametrize("parse, text, message", [
    (positive_int, "0", "must be a positive integer, got 0"),
    (positive_int, "-3", "must be a positive integer, got -3"),
    (positive_int, "2.5", "not an integer: '2.5'"),
    (positive_int, 2.5, "not an integer: 2.5"),
    (positive_int, "ten", "not an integer: 'ten'"),
    (positive_int, True, "not an integer: True"),
    (count, "-1", "must be a non-negative integer, got -1"),
    (positive_float, "0", "must be a finite positive number, got 0.0"),
    (positive_float, "inf", "must be a finite positive number, got inf"),
    (positive_float, "nan", "must be a finite positive number, got nan"),
    (positive_float, "x", "not a number: 'x'"),
    (positive_float, None, "not a number: None"),
])
def test_bad_values_one_message(parse, text, message):
    with pytest.raises(ValueError) as e:
        parse(text)
    assert str(e.value) == message


def test_flags_and_sampler_options_share_the_parsers():
    """A flag (--steps) and a sampler option (--sampler-option) say the same about the same
    text: one parser each, no twin with another message."""
    from sde_cli import flags
    from solvers import declared
    assert declared.positive_int is positive_int and declared.positive_float is positive_float
    import argparse
    for parse, flag_parse in ((positive_int, flags.positive_int),
                              (positive_float, flags.positive_float)):
        for text in ("0", "x", "-2"):
            with pytest.raises(ValueError) as a:
                parse(text)
            with pytest.raises(argparse.ArgumentTypeError) as b:
                flag_parse(text)
            assert str(a.value) == str(b.value)
    assert math.isfinite(flags.positive_float("3"))
