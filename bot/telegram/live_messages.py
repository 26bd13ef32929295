"""Messages the bot keeps editing: a reply streamed while it is generated (StreamingMessage), and the status
line of a long job (StatusLine), both throttled to what Telegram allows."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import warnings
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from telegram import Bot, Chat, InlineKeyboardMarkup, Message, ReplyParameters
from telegram.constants import ParseMode
from telegram.error import BadRequest, NetworkError, RetryAfter

from bot.telegram.render import (
    TELEGRAM_LIMIT,
    markdown_to_telegram_html,
    split_message,
    streaming_view,
    truncate_utf16,
)

log = logging.getLogger(__name__)

Markup = InlineKeyboardMarkup | None


def _retry_seconds(exc: RetryAfter) -> float:
    with warnings.catch_warnings():  # PTB 22 warns that retry_after becomes a timedelta
        warnings.simplefilter("ignore")
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class StreamingMessage:
    """One reply shown while it is generated.

    `start()` sends a placeholder; `update()` edits it with the text so far (plain, or rendered as the final text
    will be, at most once per `min_interval` seconds: Telegram allows about 1 edit/s in private chats and 20 messages/min in groups);
    `finish()` puts the final formatted text in place, split over several messages when it is longer than
    one. Intermediate edits are best effort; the final text is retried until delivered."""

    def __init__(self, bot: Bot, chat_id: int, *, min_interval: float, reply_to_message_id: int | None = None,
                 message_thread_id: int | None = None, limit: int = TELEGRAM_LIMIT,
                 max_attempts: int = 5) -> None:
        self.bot, self.chat_id, self.min_interval = bot, chat_id, min_interval
        self.reply_to_message_id, self.message_thread_id = reply_to_message_id, message_thread_id
        self.limit, self.max_attempts = limit, max_attempts
        self.message: Message | None = None  # the first message, edited as text arrives
        self.edits = 0  # intermediate edits actually made
        self._shown = ""  # the text Telegram shows now
        self._last_edit = -math.inf  # time.monotonic() of the last edit attempt
        self._blocked_until = 0.0  # after a 429, no intermediate edit before this
        self._lost = False  # the message vanished (deleted by the user): finish sends new ones
        self._plain_partials = False  # Telegram refused a partial's HTML: show the rest of them plain

    @classmethod
    def resume(cls, bot: Bot, chat_id: int, message_id: int, **kwargs) -> StreamingMessage:
        """Adopt a message an earlier run started (restart recovery), so that finish() completes it."""
        stream = cls(bot, chat_id, min_interval=0.0, **kwargs)
        stream.message = Message(message_id, datetime.now(UTC), Chat(chat_id, Chat.PRIVATE))
        stream.message.set_bot(bot)
        return stream

    def _where(self) -> str:
        message_id = self.message.message_id if self.message else None
        return f"chat {self.chat_id} message {message_id}"

    async def start(self, placeholder: str = "…") -> Message:
        """Sends the first message (a reply to `reply_to_message_id` when given)."""
        self.message = await self._deliver(lambda text, mode, markup: self.bot.send_message(
            self.chat_id, text, parse_mode=mode, reply_markup=markup,
            message_thread_id=self.message_thread_id, reply_parameters=self._reply_parameters()),
            placeholder, None, formatted=False)
        self._shown, self._last_edit = placeholder, time.monotonic()
        return self.message

    def adopt(self, message: Message, shown: str) -> Message:
        """Stream into a message already sent (a placeholder showing `shown`) instead of sending one."""
        self.message, self._shown, self._last_edit = message, shown, time.monotonic()
        return message

    def _reply_parameters(self) -> ReplyParameters | None:
        if self.reply_to_message_id is None:
            return None
        return ReplyParameters(self.reply_to_message_id, allow_sending_without_reply=True)

    def _partial(self, text_so_far: str, formatted: bool) -> tuple[str, str | None]:
        """(text, parse_mode) of an intermediate edit: plain, or the reply so far rendered as its final text
        will be (render.streaming_view holds back what is still unfinished), its first part when it is long."""
        text = text_so_far.strip()
        if not formatted or self._plain_partials:
            return truncate_utf16(text, self.limit), None
        parts = split_message(streaming_view(text), self.limit)
        return (markdown_to_telegram_html(parts[0]), ParseMode.HTML) if parts else ("", None)

    async def update(self, text_so_far: str, urgent: bool = False, formatted: bool = False) -> bool:
        """Shows the text so far if `min_interval` has passed since the last edit (or at once: a change of
        state, such as a place in the queue, that must not wait for the next edit); True if it edited.
        `formatted`: the text is the model's Markdown, shown as the final text will show it (not raw)."""
        if self.message is None:
            raise RuntimeError("StreamingMessage.update() before start()")
        now = time.monotonic()
        early = now - self._last_edit < self.min_interval and not urgent
        if self._lost or now < self._blocked_until or early:
            return False
        shown, mode = self._partial(text_so_far, formatted)
        if not shown or shown == self._shown:
            return False
        self._last_edit = now
        try:
            await self.bot.edit_message_text(shown, chat_id=self.chat_id, message_id=self.message.message_id,
                                             parse_mode=mode)
        except RetryAfter as exc:
            self._blocked_until = time.monotonic() + _retry_seconds(exc)
            log.info("flood control on %s: intermediate edits paused for %.0f s", self._where(),
                     _retry_seconds(exc))
            return False
        except BadRequest as exc:
            reason = str(exc).lower()
            if "not modified" in reason:
                self._shown = shown
            elif "not found" in reason or "can't be edited" in reason:
                self._lost = True
                log.info("streamed %s is gone (%s); the final text will be sent anew", self._where(), exc)
            elif mode is not None and "can't parse entities" in reason:
                self._plain_partials = True  # the next edits go plain; the final text has its own fallback
                log.warning("Telegram refused a partial's HTML for %s (%s)", self._where(), exc)
            else:
                log.warning("intermediate edit of %s rejected: %s", self._where(), exc)
            return False
        except NetworkError as exc:  # timeouts and connection errors: the next update tries again
            log.warning("intermediate edit of %s failed: %s", self._where(), exc)
            return False
        self._shown = shown
        self.edits += 1
        return True

    async def finish(self, final_text: str, reply_markup: InlineKeyboardMarkup | None = None,
                     formatted: bool = True) -> list[Message]:
        """Puts the final text, formatted (Markdown -> HTML) unless told not to, in place: part 1 in the streamed
        message, the rest as new messages (`reply_markup` on the last). Returns the messages that hold it."""
        parts = split_message(final_text, self.limit)
        if not parts:
            log.warning("empty final text for %s", self._where())
            parts = ["(empty reply)"]
        sent: list[Message] = []
        for n, part in enumerate(parts):
            markup = reply_markup if n == len(parts) - 1 else None
            if n == 0 and self.message is not None and not self._lost:
                message_id = self.message.message_id
                edited = await self._deliver(lambda text, mode, markup, message_id=message_id:
                                             self.bot.edit_message_text(
                                                 text, chat_id=self.chat_id, message_id=message_id,
                                                 parse_mode=mode, reply_markup=markup), part, markup, formatted)
                if edited is not None:
                    self.message = edited
                    sent.append(edited)
                    continue
                self._lost = True  # the streamed message is gone: part 1 goes out as a new message
            reply = self._reply_parameters() if n == 0 else None
            sent.append(await self._deliver(lambda text, mode, markup, reply=reply: self.bot.send_message(
                self.chat_id, text, parse_mode=mode, reply_markup=markup,
                message_thread_id=self.message_thread_id, reply_parameters=reply), part, markup, formatted))
        return sent

    async def _deliver(self, call: Callable[[str, str | None, Markup], Awaitable[object]], part: str,
                       markup: Markup, formatted: bool = True) -> Message | None:
        """Runs `call(text, parse_mode, markup)` until Telegram takes it: HTML first, plain text if the HTML
        is refused, waiting out flood control. None when the message to edit no longer exists."""
        html_text = markdown_to_telegram_html(part) if formatted else part
        as_html = formatted
        last: Exception | None = None
        for attempt in range(1, self.max_attempts + 1):
            text = html_text if as_html else truncate_utf16(part, self.limit)
            try:
                result = await call(text, ParseMode.HTML if as_html else None, markup)
                return result if isinstance(result, Message) else self.message
            except RetryAfter as exc:
                wait = _retry_seconds(exc)
                log.info("flood control on %s: retrying in %.0f s (attempt %d)", self._where(), wait, attempt)
                last = exc
                if attempt < self.max_attempts:
                    await asyncio.sleep(wait)
            except BadRequest as exc:
                reason = str(exc).lower()
                if "not modified" in reason:
                    return self.message
                if as_html and "can't parse entities" in reason:
                    log.warning("Telegram refused the HTML for %s (%s); sending plain text",
                                self._where(), exc)
                    as_html = False
                    last = exc
                elif "message to edit not found" in reason or "can't be edited" in reason:
                    return None
                else:
                    log.error("final text for %s refused: %s", self._where(), exc)
                    raise
            except NetworkError as exc:
                log.warning("sending to %s failed: %s (attempt %d)", self._where(), exc, attempt)
                last = exc
                if attempt < self.max_attempts:
                    await asyncio.sleep(min(0.5 * 2**attempt, 8.0))
        assert last is not None
        log.error("giving up on %s after %d attempts: %s", self._where(), self.max_attempts, last)
        raise last


class StatusLine:
    """The status line of a long job (an upload being indexed, a summary being written): one message whose text
    `set()` may change from any thread, shown once per `interval` seconds by a background task while the job
    runs (`with status:`), then `done()` puts the final text in place, delivered as surely as a reply's."""

    def __init__(self, message: Message, interval: float = 1.0):
        self.message, self.interval = message, interval
        self._stream = StreamingMessage(message.get_bot(), message.chat_id, min_interval=interval)
        self._stream.adopt(message, message.text)
        self._latest = message.text
        self._task: asyncio.Task | None = None

    def set(self, text: str) -> None:  # called from worker threads: a str assignment that the ticker reads
        self._latest = text

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._stream.update(self._latest, urgent=True)  # the sleep is the throttle

    def start(self) -> None:
        """Show `set()`'s text from now on, once per interval."""
        self._task = asyncio.get_running_loop().create_task(self._tick())

    def stop(self) -> None:
        if self._task:
            self._task.cancel()

    def __enter__(self) -> StatusLine:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    async def done(self, text: str) -> None:
        """The final status, as plain text (a file name's _ and * stay literal)."""
        self._latest = text
        await self._stream.finish(text, formatted=False)
