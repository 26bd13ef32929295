"""Keep secrets out of every log line: a log-record factory that masks registered strings.

python-telegram-bot logs its API URLs (which contain the bot token) at DEBUG level and HTTP errors carry
them too, so masking at the source of every record, exception text included, is the one place that
covers all loggers and all handlers.
"""

from __future__ import annotations

import logging
import traceback

MASK = "***"
_secrets: set[str] = set()
_installed = False


def _mask(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, MASK)
    return text


def redact(*secrets: str) -> None:
    """Mask these strings (and nothing shorter than 8 characters, to avoid masking common words)."""
    global _installed
    _secrets.update(s for s in secrets if s and len(s) >= 8)
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if not _secrets:
            return record
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging's own error report
            return record
        masked = _mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = _mask("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
