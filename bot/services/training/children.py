"""How the training service starts its child processes (the held-out measurement, lm.train, the step timing
of a plan): niced so that replies come first on a small CPU, sent SIGTERM when the bot dies, and given an
environment without the Telegram token."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from pathlib import Path

from bot.config import Settings

ROOT = Path(__file__).resolve().parents[2]  # holds the `bot` and `lm` packages the children import


def child_setup() -> None:
    """Runs in the child before exec: lower priority, and SIGTERM when the bot dies (lm.train checkpoints)."""
    with contextlib.suppress(OSError):
        os.nice(10)
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)


def child_env(settings: Settings) -> dict[str, str]:
    """The bot's environment minus DOCENT_TELEGRAM_* (the token), with `bot` and `lm` importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCENT_TELEGRAM")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["DOCENT_CACHE_DIR"] = str(settings.cache_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env
