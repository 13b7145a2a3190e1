"""argparse types that refuse a bad value with a message naming what was expected."""

from __future__ import annotations

import argparse
import math
import re
import sys

from ..utils import check_writable  # noqa: F401  (the command lines' output check)


def _number(text: str, kind: type):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def nonneg_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def nonneg_float(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def unit_interval(text: str) -> float:
    """A value in [0, 1): a decay or a dropout probability."""
    value = _number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {value}")
    return value


def int_tuple(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers, e.g. 1,2,2."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,2, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers such as 1,2,2, got {text!r}")
    return values


def float_tuple(text: str) -> tuple[float, ...]:
    """Comma-separated finite numbers, e.g. 1,2.5."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 1,2.5, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: 'prog: error: what is wrong (see --help)', exit status 2."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

    def parse_known_args(self, args=None, namespace=None):
        # argparse reads a value that starts with '-' and is not a plain number ("-1,2", "-1e-3") as an option, and
        # says only "expected one argument": join it to its option ("--x=-1,2") so that the option's own check speaks.
        args = list(sys.argv[1:] if args is None else args)
        for i in range(len(args) - 1, 0, -1):
            action = self._option_string_actions.get(args[i - 1])
            if (action is not None and action.nargs is None and args[i - 1].startswith("--") and action.type is not None
                    and re.match(r"^-[\d.]", args[i])):
                args[i - 1:i + 1] = [f"{args[i - 1]}={args[i]}"]
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
