"""Parsers that misbehave on purpose, for the tests of the parse sandbox (tests/unit/test_parse.py).

A test puts one in place of `bot.documents.parse.parse_bytes`; the sandboxed child imports it by name and runs
it under its real limits, so the test sees what a hanging or memory-hungry parse of a real file would cause.
"""

from __future__ import annotations

import resource
import time


def sleep_for_an_hour(data: bytes, filename: str, mime: str | None) -> None:
    time.sleep(3600)


def allocate_past_the_memory_limit(data: bytes, filename: str, mime: str | None) -> None:
    """Allocates (without touching) twice the address-space limit: only RLIMIT_AS makes that fail."""
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    bytearray(2 * limit)
