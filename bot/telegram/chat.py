"""Chat handlers: /start, /help, /reset, /settings, text messages with streamed replies, feedback buttons."""

from __future__ import annotations

import asyncio
import logging
import math
import time

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import ChatAction, ChatType
from telegram.error import BadRequest
from telegram.ext import ContextTypes

from bot.safe_text import replace_lone_surrogates
from bot.services.assistant import Incoming, Queued, Started
from bot.services.jobs import CANCELLED
from bot.telegram.access import addressed_to_bot, is_admin, is_allowed, strip_mention
from bot.telegram.context import Runtime
from bot.telegram.render import StreamingMessage

log = logging.getLogger(__name__)

HELP = (
    "I am docent, a chat assistant running a small local language model.\n\n"
    "Just write to me. In groups, mention me or reply to my messages.\n\n"
    "Send a PDF, DOCX, HTML, Markdown or text file as a document and ask about it: I answer from it with the "
    "document and the sentence the answer comes from, or say that it is not there.\n\n"
    "/ask QUESTION – answer only from this chat's documents\n"
    "/docs – the documents of this chat\n"
    "/forget NAME – remove a document and the answers drawn from it (in groups: its uploader or an admin)\n"
    "/summarize – summarize a document (reply to it or name it) or else this conversation\n"
    "/cancel – stop the reply, summary or upload of yours that is still running\n"
    "/reset – start a new conversation\n"
    "/settings – system prompt and temperature for this chat\n"
    "/stats – your messages, reply tokens and documents in this chat, today and in all\n"
    "/training – whether this chat's messages may be used to improve the model (on / off)\n"
    "/start – say hello\n"
    "/help – this message\n\n"
    "Rate my replies with the 👍/👎 buttons under them: rated replies guide retraining."
)
ADMIN_HELP = (
    "\n\nAdmin commands:\n"
    "/retrain – plan a fine-tune on what the bot has seen, then start it (/retrain resume continues one)\n"
    "/train_status – the run in flight or the latest runs\n"
    "/train_cancel – stop the run in flight\n"
    "/models – the model versions\n"
    "/rollback ID – serve another version (/rollback base for the configured model)\n"
    "/stats – here, also every chat's totals and the model version in use"
)


def help_text(update: Update, rt: Runtime) -> str:
    """HELP, with the admin commands for an admin in a private chat (a group need not learn them)."""
    user, chat = update.effective_user, update.effective_chat
    admin = is_admin(rt.settings.telegram, user.id if user else None) and chat is not None \
        and chat.type == ChatType.PRIVATE
    return HELP + (ADMIN_HELP if admin else "")


TEMPERATURES = (0.0, 0.3, 0.7, 1.0)
STARTING_UP = "Starting up, one moment…"  # the placeholder while the model still loads after a start
AFTER_YOUR_PREVIOUS = "⏳ I'll answer this right after your previous message."
STOPPED_BY_USER = "\n\n⏹️ (stopped with /cancel)"


def _runtime(context: ContextTypes.DEFAULT_TYPE) -> Runtime:
    return context.application.bot_data["runtime"]


def feedback_markup() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton("👍", callback_data="fb:1"),
                                  InlineKeyboardButton("👎", callback_data="fb:-1")]])


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Greet the user."""
    rt = _runtime(context)
    if not await rt.admit(update):
        return
    name = update.effective_user.first_name if update.effective_user else "there"
    await update.effective_message.reply_text(f"Hello {name}! {help_text(update, rt)}")


async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Explain what the bot does."""
    rt = _runtime(context)
    if not await rt.admit(update):
        return
    await update.effective_message.reply_text(help_text(update, rt))


async def reset(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Start a new conversation; the old one stays stored."""
    rt = _runtime(context)
    if not await rt.admit(update):
        return
    chat = update.effective_chat
    await rt.ensure_chat(update)
    await rt.assistant.reset(chat.id)
    await update.effective_message.reply_text("Started a new conversation. I no longer see the earlier messages.")


async def settings_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Show or change this chat's system prompt and temperature."""
    rt = _runtime(context)
    if not await rt.admit(update):
        return
    chat = update.effective_chat
    await rt.ensure_chat(update)
    args = context.args or []
    if args and args[0] in ("system", "prompt"):
        prompt = replace_lone_surrogates(" ".join(args[1:]).strip())
        if len(prompt) > 2000:
            await update.effective_message.reply_text("That system prompt is too long (2,000 characters at most).")
            return
        await rt.set_chat_settings(chat.id, system_prompt=prompt or None)
        await update.effective_message.reply_text("System prompt reset to the default." if not prompt
                                                  else "System prompt updated.")
        return
    text, keyboard = await _settings_view(rt, chat.id)
    await update.effective_message.reply_text(text, reply_markup=keyboard)


async def _settings_view(rt: Runtime, chat_id: int) -> tuple[str, InlineKeyboardMarkup]:
    """The /settings message for a chat's current settings, the current temperature marked with •."""
    sampling = await rt.assistant.sampling_for(chat_id)
    system = await rt.assistant.system_prompt(chat_id)
    buttons = [[InlineKeyboardButton(("• " if abs(sampling.temperature - t) < 1e-6 else "") + f"{t:g}",
                                     callback_data=f"temp:{t:g}") for t in TEMPERATURES]]
    text = (f"System prompt:\n{system}\n\nTemperature: {sampling.temperature:g}\n\n"
            "Change the prompt with /settings system YOUR PROMPT (empty for the default). Pick a temperature:")
    return text, InlineKeyboardMarkup(buttons)


def button_temperature(data: str) -> float | None:
    """The temperature a "temp:" button asks for, or None unless it is a number from 0 to 2 (the range chat
    settings accept): callback data comes from the client and can be anything."""
    try:
        value = float(data.removeprefix("temp:"))
    except ValueError:
        return None
    return value if math.isfinite(value) and 0.0 <= value <= 2.0 else None


FEEDBACK = {"fb:1": 1, "fb:-1": -1}
BAD_BUTTON = "That button is not valid any more. Send /settings or ask again."


async def on_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Inline buttons: temperature choice and 👍/👎 feedback; every press is answered, a bad one refused."""
    rt = _runtime(context)
    query = update.callback_query
    if not is_allowed(rt.settings.telegram, update):
        await query.answer("You are not allowed to use this bot.")
        return
    data = query.data or ""
    if data.startswith("temp:"):
        await _set_temperature(rt, update, button_temperature(data))
    elif data in FEEDBACK:
        await rt.ensure_chat(update)  # a group member who never wrote to the bot may vote too
        ok = await rt.assistant.set_feedback(update.effective_chat.id, query.message.message_id,
                                             update.effective_user.id, FEEDBACK[data])
        await query.answer("Thanks for the feedback!" if ok else "That reply is no longer known.")
    else:
        await query.answer(BAD_BUTTON)


async def _set_temperature(rt: Runtime, update: Update, value: float | None) -> None:
    """Store a temperature chosen with a /settings button and mark it in the message."""
    query = update.callback_query
    if value is None:
        await query.answer(BAD_BUTTON)
        return
    await rt.ensure_chat(update)
    await rt.set_chat_settings(update.effective_chat.id, temperature=value)
    await query.answer(f"Temperature set to {value:g}")
    text, keyboard = await _settings_view(rt, update.effective_chat.id)
    try:  # the message now marks the new choice
        await query.edit_message_text(text, reply_markup=keyboard)
    except BadRequest as exc:
        if "not modified" not in str(exc):  # the same button pressed again changes nothing
            raise


async def on_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Reply to a text message with a streamed answer from the model."""
    rt = _runtime(context)
    message = update.effective_message
    if message is None or not message.text:
        return
    if not addressed_to_bot(message, context.bot.id, context.bot.username):
        return  # group chatter that is not for us
    if not await rt.admit(update, rate_limited=True):
        return
    text = strip_mention(message.text, context.bot.username)
    if not text:
        await message.reply_text("Yes? Ask me something.")
        return
    await answer_text(rt, update, context, text)


async def answer_text(rt: Runtime, update: Update, context: ContextTypes.DEFAULT_TYPE, text: str,
                      force_documents: bool = False) -> None:
    """Store a user's text once (length-checked, one reply in flight per user) and stream the reply."""
    message, user = update.effective_message, update.effective_user
    text = replace_lone_surrogates(text)  # JSON may carry a lone "\ud83d": UTF-8 (SQL, the tokenizer) cannot
    if len(text) > rt.settings.telegram.max_input_chars:
        await message.reply_text(f"That message is too long ({len(text):,} characters); "
                                 f"I take at most {rt.settings.telegram.max_input_chars:,}.")
        return
    placeholder = None

    async def tell_it_waits() -> None:
        nonlocal placeholder
        placeholder = await message.reply_text(AFTER_YOUR_PREVIOUS)

    async with rt.turn_of(user.id if user else message.chat.id, on_wait=tell_it_waits):
        replied = message.reply_to_message
        stored = await rt.assistant.accept(Incoming(
            update_id=update.update_id, chat_id=message.chat.id, chat_type=message.chat.type,
            user_id=user.id if user else None, text=text, telegram_message_id=message.message_id,
            username=user.username if user else None, first_name=user.first_name if user else None,
            title=message.chat.title, reply_to_telegram_message_id=replied.message_id if replied else None))
        if stored is None:  # Telegram delivered this update again; it was handled before
            if placeholder is not None:
                await placeholder.delete()
            return
        await reply_streaming(rt, context, message.chat.id, message.chat.type, message.message_id, stored,
                              force_documents, placeholder)


async def reply_streaming(rt: Runtime, context: ContextTypes.DEFAULT_TYPE, chat_id: int, chat_type: str,
                          reply_to: int | None, stored, force_documents: bool = False, placeholder=None) -> None:
    """Generate the reply to a stored user message, editing one Telegram message as text arrives (the
    `placeholder` already sent for it, if any)."""
    interval = rt.settings.telegram.edit_interval_private_s if chat_type == ChatType.PRIVATE \
        else rt.settings.telegram.edit_interval_group_s
    await context.bot.send_chat_action(chat_id, ChatAction.TYPING)
    stream = StreamingMessage(context.bot, chat_id, min_interval=interval, reply_to_message_id=reply_to)
    opening = "…" if rt.models.loaded else STARTING_UP
    if placeholder is not None:
        first = stream.adopt(placeholder, AFTER_YOUR_PREVIOUS)
        await stream.update(opening, urgent=True)
    else:
        first = await stream.start(opening)
    # the reply row exists before the model may take a while to load, so a restart meanwhile finds it
    reply = await rt.assistant.begin_reply(stored, first.message_id)
    try:
        model = await rt.models.current()
    except Exception:
        log.exception("could not load the chat model")
        failed = "Sorry, my language model could not be loaded. An admin has to look at the logs."
        await stream.finish(failed)
        await rt.assistant.finish_reply(reply, failed, "failed")
        return
    text, status, note = "", "complete", ""
    try:
        prepared = await rt.assistant.prepare(model, stored, reply, force_documents)
        if prepared.answer is not None:
            text = prepared.answer.render()
        else:
            text, note = await _generate(rt, model, prepared.messages, chat_id, stored.user_id, stream)
            if note and not text.strip():
                status = "failed"  # stopped before any text: nothing to keep as a turn of the conversation
    except Exception as e:
        from lm.engine import ContextOverflow

        status = "failed"
        if isinstance(e, ContextOverflow):
            note = str(e)
        else:
            log.exception("reply failed in chat %s", chat_id)
            note = "Sorry, something went wrong while writing the reply."
    final = (text.strip() + note) if text.strip() else (note.strip() or "(no reply)")
    if status != "complete":
        await rt.assistant.finish_reply(reply, final, status, version_id=model.version_id)
        await stream.finish(final)
        return
    # the final text goes to SQL before Telegram, still "streaming" but with its token count: a crash between
    # the two then redelivers it on restart instead of leaving a half-streamed message behind
    await rt.assistant.finish_reply(reply, final, "streaming", token_count=model.count_tokens(final),
                                    version_id=model.version_id)
    await stream.finish(final, reply_markup=feedback_markup())
    await rt.assistant.finish_reply(reply, final, "complete")


async def _generate(rt: Runtime, model, messages: list[dict], chat_id: int, user_id: int | None,
                    stream: StreamingMessage, **overrides) -> tuple[str, str]:
    """Stream the model's reply into the Telegram message until it ends, times out or its user sends /cancel;
    returns (text, note about how it ended)."""
    sampling = await rt.assistant.sampling_for(chat_id, **overrides)
    limit = rt.settings.telegram.generation_timeout_s
    text, started = "", time.monotonic()
    try:
        # the time limit counts from the start of generation: a reply waiting for its turn is not late
        with rt.jobs.replying(chat_id, user_id) as reply:
            async with asyncio.timeout(None) as deadline:
                async for event in rt.assistant.stream(model, messages, sampling, reply.cancel):
                    if isinstance(event, str):
                        text += event
                        await stream.update(text)
                    elif isinstance(event, Queued):
                        await stream.update(queued_text(event.ahead), urgent=True)
                    elif isinstance(event, Started):
                        started = time.monotonic()
                        deadline.reschedule(asyncio.get_running_loop().time() + limit)
                        await stream.update("…", urgent=True)  # replaces a queued note
    except TimeoutError:
        log.warning("generation timeout in chat %s after %.0fs", chat_id, time.monotonic() - started)
        return text, "\n\n⏱️ (stopped: the reply took too long)"
    return text, STOPPED_BY_USER if reply.reason == CANCELLED else ""


def queued_text(ahead: int) -> str:
    """The placeholder of a reply waiting for a place in the batch."""
    return "⏳ queued: you are next…" if ahead == 0 else f"⏳ queued: {ahead} ahead of you…"
