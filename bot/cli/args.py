"""Argument types the `docent` subcommands share."""

from __future__ import annotations

import argparse


def bounded(kind: type, low: float, high: float | None = None, low_open: bool = False):
    """An argparse type: a number of `kind` in [low, high] ((low, high] when low_open), else a clear error
    naming the accepted range (argparse then exits with status 2, before anything is loaded)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if (value <= low if low_open else value < low) or (high is not None and value > high):
            where = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {where}, not {text}")
        return value
    return parse
