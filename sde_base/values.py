"""Parsers of one value from text (a flag, a sampler option) or from a number: one rule and one
message each, raising ValueError("not an integer: '2.5'") or ("must be a positive integer,
got 0"). The command line turns the ValueError into its one `error:` line."""

import math


def integer(text):
    """An integer from text ('3') or a whole number (3, 3.0); not a bool."""
    if isinstance(text, bool):
        raise ValueError(f"not an integer: {text!r}")
    if isinstance(text, int):
        return text
    if isinstance(text, float):
        if text.is_integer():
            return int(text)
        raise ValueError(f"not an integer: {text!r}")
    try:
        return int(str(text).strip())
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None


def positive_int(text):
    """An integer >= 1."""
    value = integer(text)
    if value < 1:
        raise ValueError(f"must be a positive integer, got {value}")
    return value


def count(text):
    """An integer >= 0."""
    value = integer(text)
    if value < 0:
        raise ValueError(f"must be a non-negative integer, got {value}")
    return value


def positive_float(text):
    """A finite number > 0."""
    if isinstance(text, bool):
        raise ValueError(f"not a number: {text!r}")
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {text!r}") from None
    if not 0 < value < math.inf:
        raise ValueError(f"must be a finite positive number, got {value}")
    return value
