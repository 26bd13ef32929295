"""How a handler is declared and registered, the same way in every handler module.

`guarded` is the prelude every handler shares, as a decorator: it finds the Runtime, runs the guards
(Runtime.admit: allow-list, rate limit, admins only; optionally "addressed to the bot" in groups) and calls
the handler with the Runtime as a third argument only when they let the update through. `add_commands`
registers commands with their entry in the bot's command menu, so a command cannot be answered without
being listed there, nor listed without being answered.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping

from telegram import BotCommand, Update
from telegram.ext import Application, CommandHandler, ContextTypes

from bot.telegram.access import addressed_to_bot
from bot.telegram.context import Runtime, runtime

Context = ContextTypes.DEFAULT_TYPE
Handler = Callable[[Update, Context, Runtime], Awaitable[None]]
Callback = Callable[[Update, Context], Awaitable[None]]


def guarded(*, rate_limited: bool = False, addressed: bool = False, admins: bool = False) -> Callable[[Handler],
                                                                                                        Callback]:
    """The handler runs only for an update the guards let through, with the Runtime as its third argument.

    `addressed`: a message in a group must be for the bot (a mention, a reply to it, or a command), else it is
    ignored in silence, before any other guard (group chatter is neither refused nor rate-limited).
    `rate_limited`: the user's messages count against the rate limit. `admins`: for the bot's admins only (the
    allow-list does not apply: an admin may always reach the admin commands)."""

    def decorate(handler: Handler) -> Callback:
        @functools.wraps(handler)
        async def run(update: Update, context: Context) -> None:
            rt = runtime(context)
            if addressed:
                message = update.effective_message
                if message is None or not addressed_to_bot(message, context.bot.id, context.bot.username):
                    return
            if await rt.admit(update, rate_limited=rate_limited, admins=admins):
                await handler(update, context, rt)

        return run

    return decorate


def add_commands(app: Application, callbacks: Mapping[str, Callback], menu: Mapping[str, str]) -> None:
    """A CommandHandler for each command, and its line of the command menu (what `menu` says it does; a command
    missing there is a KeyError at start-up, not a command the menu hides)."""
    for name, callback in callbacks.items():
        app.add_handler(CommandHandler(name, callback))
        app.bot_data.setdefault("commands", []).append(BotCommand(name, menu[name]))
