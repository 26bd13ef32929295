"""Chat handlers: /start, /help, /reset, /settings, text messages with streamed replies, feedback buttons."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import ChatAction, ChatType
from telegram.error import BadRequest, TelegramError
from telegram.ext import ContextTypes

from bot.services import lm_gateway as gateway  # lm's Queued and Started, imported when the first one comes
from bot.services.assistant import Accepted, AlreadyAnswered, Done, Incoming
from bot.services.chat_settings import ChatPrefs
from bot.telegram import texts
from bot.telegram.access import is_admin, strip_mention
from bot.telegram.context import Runtime, origin_of
from bot.telegram.handlers import guarded
from bot.telegram.incoming import update_key
from bot.telegram.live_messages import StreamingMessage
from bot.text.reply_text import strip_invented_sources

log = logging.getLogger(__name__)
TEMPERATURES = (0.0, 0.3, 0.7, 1.0)
FEEDBACK = {"fb:1": 1, "fb:-1": -1}


def help_text(update: Update, rt: Runtime) -> str:
    """HELP, with the admin commands for an admin in a private chat (a group need not learn them)."""
    user, chat = update.effective_user, update.effective_chat
    admin = is_admin(rt.settings.telegram, user.id if user else None) and chat is not None \
        and chat.type == ChatType.PRIVATE
    return texts.HELP + (texts.ADMIN_HELP if admin else "")


def feedback_markup() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton("👍", callback_data="fb:1"),
                                  InlineKeyboardButton("👎", callback_data="fb:-1")]])


@guarded()
async def start(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Greet the user."""
    name = update.effective_user.first_name if update.effective_user else "there"
    await update.effective_message.reply_text(texts.hello(name, help_text(update, rt)))


@guarded()
async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Explain what the bot does."""
    await update.effective_message.reply_text(help_text(update, rt))


@guarded()
async def reset(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Start a new conversation; the old one stays stored."""
    await rt.services.chats.reset(origin_of(update))
    await update.effective_message.reply_text(texts.RESET_DONE)


@guarded()
async def settings_command(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Show or change this chat's system prompt and temperature."""
    args = context.args or []
    if args and args[0] in ("system", "prompt"):
        prompt = " ".join(args[1:]).strip()
        if len(prompt) > 2000:
            await update.effective_message.reply_text(texts.SYSTEM_PROMPT_TOO_LONG)
            return
        await rt.services.chats.change(origin_of(update), system_prompt=prompt or None)
        await update.effective_message.reply_text(texts.SYSTEM_PROMPT_SET if prompt else texts.SYSTEM_PROMPT_RESET)
        return
    text, keyboard = _settings_view(await rt.services.chats.prefs(origin_of(update)))
    await update.effective_message.reply_text(text, reply_markup=keyboard)


def _settings_view(prefs: ChatPrefs) -> tuple[str, InlineKeyboardMarkup]:
    """The /settings message for a chat's current settings, the current temperature marked with •."""
    buttons = [[InlineKeyboardButton(("• " if abs(prefs.temperature - t) < 1e-6 else "") + f"{t:g}",
                                     callback_data=f"temp:{t:g}") for t in TEMPERATURES]]
    return texts.settings_text(prefs.system_prompt, prefs.temperature), InlineKeyboardMarkup(buttons)


def button_temperature(data: str) -> float | None:
    """The temperature a "temp:" button asks for, or None unless it is a number from 0 to 2 (the range chat
    settings accept): callback data comes from the client and can be anything."""
    try:
        value = float(data.removeprefix("temp:"))
    except ValueError:
        return None
    return value if math.isfinite(value) and 0.0 <= value <= 2.0 else None


@guarded()
async def on_button(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Inline buttons: temperature choice and 👍/👎 feedback; every press is answered, a bad one refused."""
    query = update.callback_query
    data = query.data or ""
    if data.startswith("temp:"):
        await _set_temperature(rt, update, button_temperature(data))
    elif data in FEEDBACK:  # a group member who never wrote to the bot may vote too
        ok = await rt.services.chats.rate(origin_of(update), query.message.message_id, FEEDBACK[data])
        await query.answer(texts.THANKS_FOR_FEEDBACK if ok else texts.UNKNOWN_REPLY)
    else:
        await query.answer(texts.BAD_BUTTON)


async def _set_temperature(rt: Runtime, update: Update, value: float | None) -> None:
    """Store a temperature chosen with a /settings button and mark it in the message."""
    query = update.callback_query
    if value is None:
        await query.answer(texts.BAD_BUTTON)
        return
    prefs = await rt.services.chats.change(origin_of(update), temperature=value)
    await query.answer(texts.temperature_set(value))
    text, keyboard = _settings_view(prefs)
    try:  # the message now marks the new choice
        await query.edit_message_text(text, reply_markup=keyboard)
    except BadRequest as exc:
        if "not modified" not in str(exc):  # the same button pressed again changes nothing
            raise


@guarded(rate_limited=True, addressed=True)  # group chatter that is not for us is ignored
async def on_text(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Reply to a text message with a streamed answer from the model."""
    message = update.effective_message  # never without text: registered for filters.TEXT
    text = strip_mention(message.text, context.bot.username)
    if not text:
        await message.reply_text(texts.EMPTY_MENTION)
        return
    await answer_text(rt, update, context, text)


async def answer_text(rt: Runtime, update: Update, context: ContextTypes.DEFAULT_TYPE, text: str,
                      force_documents: bool = False) -> None:
    """Answer a user's text (length-checked, one reply in flight per user), streaming the reply as it is
    written into one Telegram message."""
    message, user = update.effective_message, update.effective_user
    limit = rt.settings.telegram.max_input_chars
    if len(text) > limit:
        await message.reply_text(texts.too_long(len(text), limit))
        return
    private = message.chat.type == ChatType.PRIVATE
    interval = rt.settings.telegram.edit_interval_private_s if private else rt.settings.telegram.edit_interval_group_s
    stream = StreamingMessage(context.bot, message.chat.id, min_interval=interval,
                              reply_to_message_id=message.message_id)
    placeholder = None

    @contextlib.asynccontextmanager
    async def queue(shown: Callable[[int], Awaitable[None]]) -> AsyncIterator[None]:
        async def tell_it_waits() -> None:
            nonlocal placeholder
            placeholder = await message.reply_text(texts.AFTER_YOUR_PREVIOUS)
            await shown(placeholder.message_id)  # a restart while it waits finds this message

        async with rt.turn_of(user.id if user else message.chat.id, on_wait=tell_it_waits):
            yield

    async def show_first(starting_up: bool) -> int:
        try:  # "typing…" is a courtesy: the reply does not depend on it
            await context.bot.send_chat_action(message.chat.id, ChatAction.TYPING)
        except TelegramError as e:
            log.warning("could not show 'typing' in chat %s: %s", message.chat.id, e)
        opening = texts.STARTING_UP if starting_up else "…"
        if placeholder is None:
            return (await stream.start(opening)).message_id
        stream.adopt(placeholder, texts.AFTER_YOUR_PREVIOUS)
        await stream.update(opening, urgent=True)
        return placeholder.message_id

    replied = message.reply_to_message
    # "turn:": /ask comes here too, after the boundary claimed its own key (bot.telegram.incoming)
    incoming = Incoming(origin_of(update), "turn:" + update_key(update), text, message.message_id,
                        replied.message_id if replied else None)
    written = ""  # the reply's text so far: the model streams it piece by piece
    # the message and its reply row are stored before it waits for its turn (queue): a restart finds them
    async with contextlib.aclosing(rt.services.assistant.reply(incoming, force_documents, queue)) as events:
        async for event in events:
            if isinstance(event, str):
                written += event
                if shown := strip_invented_sources(written, partial=True):  # as the final text will read
                    await stream.update(shown, formatted=True)  # rendered as the final text will be, not raw Markdown
            elif isinstance(event, Accepted):  # the assistant stores the id before it goes on: a restart edits it
                event.shown_in = await show_first(event.starting_up)
            else:
                await _show(stream, event)


async def _show(stream: StreamingMessage, event) -> None:
    """One event of a reply (bot.services.assistant) in its Telegram message, other than its text and start."""
    if isinstance(event, Done):
        text = texts.TOO_LONG_FOR_ME if event.too_long else event.text
        await stream.finish(text, reply_markup=feedback_markup() if event.rated else None)
    elif isinstance(event, AlreadyAnswered):
        return
    elif isinstance(event, gateway.Queued):
        await stream.update(texts.queued_text(event.ahead), urgent=True)
    elif isinstance(event, gateway.Started):
        await stream.update("…", urgent=True)  # replaces a queued note
