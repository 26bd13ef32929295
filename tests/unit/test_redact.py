"""bot.redact: a registered secret never reaches a log line, in messages, arguments or tracebacks."""

from __future__ import annotations

import io
import logging

from bot.redact import MASK, redact

SECRET = "987654:AAH-very-secret-token-value"


def test_secret_is_masked_in_messages_arguments_and_tracebacks():
    redact(SECRET)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger("test.redact")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        log.debug("Set Bot API URL: https://api.telegram.org/bot%s", SECRET)
        log.info(f"inline https://api.telegram.org/bot{SECRET}/getMe")
        try:
            raise RuntimeError(f"request to /bot{SECRET}/sendMessage failed")
        except RuntimeError:
            log.exception("send failed")
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert SECRET not in out
    assert out.count(MASK) == 3 and "RuntimeError" in out and "send failed" in out
