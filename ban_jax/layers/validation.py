"""Checks shared by the layer and model config dataclasses.

Each raises ValueError (TypeError for a wrong type) with the field's name as the user wrote it:
the configs pass names such as "model.attention", so a command-line user reads the flag they
set. The command line's boundary (config validation) turns these into its own error type.
"""

import numbers


def check_choice(name: str, value, choices: tuple):
  """Raises ValueError unless `value` is one of `choices`."""
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not one of {choices}.")


def check_int(name: str, value, *, low: int = 1):
  """Raises unless `value` is an int (not a bool) >= `low`."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be an integer, got {value!r}.")
  if value < low:
    raise ValueError(f"{name}={value!r} must be >= {low}.")


def check_range(name: str, value, low: float, high: float, *, low_open: bool = False,
                high_open: bool = False):
  """Raises unless `value` is a real number in the interval low..high (open ends as flagged)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{name} must be a number, got {value!r}.")
  too_low = value <= low if low_open else value < low
  too_high = value >= high if high_open else value > high
  if too_low or too_high:
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    raise ValueError(f"{name}={value!r} must lie in {interval}.")
