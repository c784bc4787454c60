"""argparse types shared by the command lines (`python -m echoreel_core.*`)."""

from __future__ import annotations

import argparse


def at_least(minimum: int, what: str = "an integer"):
    """An argparse type for integers >= minimum: a bad value becomes a usage error that names the
    option, the value and what is allowed (exit 2), not a traceback from deep in the program."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what} >= {minimum}, got {text!r}")
        return value
    return parse
