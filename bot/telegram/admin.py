"""Admin handlers: retraining from Telegram (/retrain, /train_status, /train_cancel), model versions
(/models, /rollback) and the per-chat training opt-in (/training on|off).

Everything that changes the model is for admins only; anyone else gets a refusal and nothing is stored.
The run itself lives in `bot.services.training.service`; this module turns commands and buttons into calls to it
and its progress into one edited status message, a loss-curve photo and a final report.
"""

from __future__ import annotations

import logging

from telegram import BotCommand, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import ChatType
from telegram.error import TelegramError
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, ContextTypes

from bot.db import chats as chats_db
from bot.services.training.plan import format_duration
from bot.services.training.service import RunOutcome, TrainingBusy, TrainingService, format_loss
from bot.telegram.access import is_admin
from bot.telegram.context import Runtime
from bot.telegram.documents import StatusLine

log = logging.getLogger(__name__)

COMMANDS = [
    BotCommand("training", "use this chat's conversations for training: /training on|off"),
    BotCommand("retrain", "admins: retrain the model on opted-in chats (force, resume)"),
    BotCommand("train_status", "admins: the current or last training run"),
    BotCommand("train_cancel", "admins: stop the training run (it can be resumed)"),
    BotCommand("models", "admins: list model versions"),
    BotCommand("rollback", "admins: switch model version: /rollback ID or /rollback base"),
]
NOT_ADMIN = "Only the bot's admins can do that."


def _runtime(context: ContextTypes.DEFAULT_TYPE) -> Runtime:
    return context.application.bot_data["runtime"]


def _service(rt: Runtime) -> TrainingService:
    service = rt.extras.get("training")
    if service is None:
        service = rt.extras["training"] = TrainingService(rt.settings, rt.sessions, rt.models)
    return service


async def _admin(update: Update, rt: Runtime) -> bool:
    """True for an admin; anyone else is told so, and nothing else happens."""
    user = update.effective_user
    if is_admin(rt.settings.telegram, user.id if user else None):
        return True
    if update.callback_query is not None:
        await update.callback_query.answer(NOT_ADMIN)
    elif update.effective_message is not None:
        await update.effective_message.reply_text(NOT_ADMIN)
    return False


# ---------------------------------------------------------------------------------------- /training


async def training_optin(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Show or set whether this chat's conversations may be used for training."""
    rt = _runtime(context)
    if not await rt.admit(update):
        return
    chat, user, message = update.effective_chat, update.effective_user, update.effective_message
    args = [a.lower() for a in context.args or []]
    async with rt.sessions() as s:
        prefs = await chats_db.get_chat_settings(s, chat.id)
    default = rt.settings.training.use_chats_by_default
    current = prefs.allow_training if prefs is not None and prefs.allow_training is not None else None
    if not args:
        state = "on" if (default if current is None else current) else "off"
        await message.reply_text(f"Training on this chat's conversations is {state}"
                                 f"{' (the default)' if current is None else ''}. Change it with /training on|off.")
        return
    if args[0] not in ("on", "off") or len(args) > 1:
        await message.reply_text("Usage: /training on  or  /training off")
        return
    own_private = chat.type == ChatType.PRIVATE and user is not None and user.id == chat.id
    if not (own_private or is_admin(rt.settings.telegram, user.id if user else None)):
        await message.reply_text("Only admins can change this for a group.")
        return
    await rt.ensure_chat(update)
    await rt.set_chat_settings(chat.id, allow_training=args[0] == "on")
    await message.reply_text("This chat's conversations may now be used to train the model." if args[0] == "on"
                             else "This chat's conversations will not be used for training.")


# ---------------------------------------------------------------------------------------- /retrain


async def retrain(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Show what a run would train on, with Start / Cancel buttons; `resume` continues a stopped run."""
    rt = _runtime(context)
    if not await _admin(update, rt):
        return
    message = update.effective_message
    args = [a.lower() for a in context.args or []]
    if args and args[0] not in ("force", "resume") or len(args) > 1:
        await message.reply_text("Usage: /retrain, /retrain force (activate whatever the loss) or /retrain resume")
        return
    service = _service(rt)
    if service.busy:
        await message.reply_text(f"A training run is already in progress. {service.job.describe()}\n"
                                 "See /train_status, or stop it with /train_cancel.")
        return
    if args == ["resume"]:
        run = await service.resumable()
        if run is None:
            await message.reply_text("There is no stopped run to resume. Start a new one with /retrain.")
            return
        await rt.ensure_chat(update)
        await service.reserve(run)
        status = await message.reply_text(f"Resuming training run #{run.id}…")
        _follow(context, service, status, run.id, resume=True)
        return
    # reading every chat and document and timing training steps takes a while: say so at once, then edit
    shown = await message.reply_text("Preparing a retraining plan: reading the opted-in chats and documents, "
                                     "then timing a few training steps…")
    try:
        plan = await service.plan(force=args == ["force"])
    except Exception:
        log.exception("could not plan a training run")
        await shown.edit_text("I could not prepare a training run: the configured base model or the stored data "
                              "could not be read, or its timed trial steps failed. The bot's log has the details.")
        return
    if not plan.ready:  # the plan says why, and offers nothing to start
        await shown.edit_text(plan.describe())
        service.drop_plan(plan.token)
        return
    buttons = InlineKeyboardMarkup([[InlineKeyboardButton("▶️ Start", callback_data=f"train:start:{plan.token}"),
                                     InlineKeyboardButton("✖️ Cancel", callback_data=f"train:drop:{plan.token}")]])
    await shown.edit_text(plan.describe(), reply_markup=buttons)
    plan.shown_in = (shown.chat_id, shown.message_id)


async def on_train_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Start or drop a plan shown by /retrain."""
    rt = _runtime(context)
    query = update.callback_query
    if not await _admin(update, rt):
        return
    _, action, token = (query.data or "::").split(":", 2)
    service = _service(rt)
    if action == "drop":
        service.drop_plan(token)
        await query.answer("Cancelled")
        await query.edit_message_text("Retraining cancelled; nothing was trained.")
        return
    plan = service.take_plan(token)
    if plan is None:
        await query.answer("This plan has expired.")
        await query.edit_message_text("This plan has expired or was already used. Send /retrain again.")
        return
    await rt.ensure_chat(update)
    try:
        run = await service.start(plan, update.effective_user.id)
    except TrainingBusy as e:
        await query.answer(f"Busy: {e}")
        return
    except Exception:
        log.exception("could not start a training run")
        await query.answer("Could not start")
        await query.edit_message_text("The training run could not start: its data could not be written on the "
                                      "server. The bot's log has the details.")
        return
    await query.answer(f"Training run #{run.id} started")
    status = await query.edit_message_text(f"Training run #{run.id}: starting…")
    _follow(context, service, status, run.id, resume=False)


def _follow(context: ContextTypes.DEFAULT_TYPE, service: TrainingService, message, run_id: int,
            resume: bool) -> None:
    """Run the training in the background, editing `message` with progress, then report the outcome."""
    bot = context.bot
    status = StatusLine(message, interval=1.0)

    async def work() -> RunOutcome:
        with status:
            outcome = await service.run(run_id, progress=status.set, resume=resume)
        await status.done(outcome.describe())
        if outcome.plot is not None and outcome.plot.is_file():
            try:
                await bot.send_photo(message.chat_id, photo=outcome.plot.read_bytes(),
                                     caption=f"Loss curve of training run #{run_id}")
            except TelegramError as e:
                log.warning("could not send the loss curve of run %s: %s", run_id, e)
        return outcome

    service.launch(work())


# ---------------------------------------------------------------------------------------- status, cancel


async def train_status(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The run in flight, or else the most recent runs."""
    rt = _runtime(context)
    if not await _admin(update, rt):
        return
    service = _service(rt)
    if service.busy:
        await update.effective_message.reply_text(service.job.describe())
        return
    runs = await service.runs(limit=3)
    if not runs:
        await update.effective_message.reply_text("No training runs yet. Start one with /retrain.")
        return
    lines = []
    for r in runs:
        losses = ""
        if r.heldout_loss_before is not None or r.heldout_loss_after is not None:
            losses = f", held-out {format_loss(r.heldout_loss_before)} → {format_loss(r.heldout_loss_after)}"
        took = ""
        if r.started_at and r.finished_at:
            took = f", took {format_duration((r.finished_at - r.started_at).total_seconds())}"
        version = f", version #{r.result_version_id}" if r.result_version_id else ""
        error = f"\n   {r.error}" if r.error and r.status != "succeeded" else ""
        lines.append(f"#{r.id} {r.status}{losses}{took}{version}{error}")
    await update.effective_message.reply_text("Recent training runs:\n" + "\n".join(lines))


async def train_cancel(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Stop the run in flight; lm.train saves a checkpoint so /retrain resume can continue it."""
    rt = _runtime(context)
    if not await _admin(update, rt):
        return
    service = _service(rt)
    run_id = await service.cancel()
    plans = service.drop_plans()
    for plan in plans:  # its message loses its buttons and says why
        if plan.shown_in is not None:
            try:
                await context.bot.edit_message_text("Retraining cancelled with /train_cancel; nothing was trained.",
                                                    chat_id=plan.shown_in[0], message_id=plan.shown_in[1])
            except TelegramError as e:
                log.warning("could not mark a cancelled plan: %s", e)
    if run_id is not None:
        text = (f"Stopping training run #{run_id}; it saves a checkpoint at its next step. "
                "The active model is unchanged.")
    elif plans:
        text = "Cancelled the open retraining plan; nothing was trained."
    else:
        text = "No training run is in progress and no plan is open."
    await update.effective_message.reply_text(text)


# ---------------------------------------------------------------------------------------- versions


async def models_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """List model versions: id, base, created, data size, held-out loss, active."""
    rt = _runtime(context)
    if not await _admin(update, rt):
        return
    versions = await _service(rt).versions()
    active = next((v for v in versions if v.is_active), None)
    lines = [f"base – {rt.settings.model.name} (configured){'  ✅ active' if active is None else ''}"]
    for v in versions:
        loss = f"{v.heldout_loss:.4f}" if v.heldout_loss is not None else "?"
        size = f"{v.data_size:,} tokens" if v.data_size is not None else "? tokens"
        lines.append(f"#{v.id} {v.name} – base {v.base}, {v.created_at:%Y-%m-%d %H:%M} UTC, {size}, "
                     f"held-out {loss}{'  ✅ active' if v.is_active else ''}")
    await update.effective_message.reply_text("Model versions:\n" + "\n".join(lines) +
                                              "\n\nSwitch with /rollback ID or /rollback base.")


async def rollback(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Serve another version (or the configured base model) without a restart."""
    rt = _runtime(context)
    if not await _admin(update, rt):
        return
    message = update.effective_message
    args = context.args or []
    if len(args) != 1 or not (args[0].lower() == "base" or args[0].lstrip("#").isdigit()):
        await message.reply_text("Usage: /rollback ID (see /models) or /rollback base")
        return
    target = None if args[0].lower() == "base" else int(args[0].lstrip("#"))
    try:
        version = await _service(rt).activate(target)
    except ValueError as e:
        await message.reply_text(str(e))
        return
    except Exception:
        log.exception("could not switch to model version %s", target)
        which = "The configured base model" if target is None else f"Version #{target}"
        await message.reply_text(f"{which} could not be loaded: its files are damaged or not a model I can read. "
                                 "The current one stays active; the bot's log has the details.")
        return
    await message.reply_text(f"Now serving {rt.settings.model.name} (the configured base model)." if version is None
                             else f"Now serving version #{version.id} ({version.name}).")


def register(app: Application, runtime: Runtime) -> None:
    runtime.extras.setdefault("training", TrainingService(runtime.settings, runtime.sessions, runtime.models))
    app.add_handler(CommandHandler("training", training_optin))
    app.add_handler(CommandHandler("retrain", retrain))
    app.add_handler(CommandHandler("train_status", train_status))
    app.add_handler(CommandHandler("train_cancel", train_cancel))
    app.add_handler(CommandHandler("models", models_command))
    app.add_handler(CommandHandler("rollback", rollback))
    app.add_handler(CallbackQueryHandler(on_train_button, pattern=r"^train:(start|drop):"))
    app.bot_data.setdefault("commands", []).extend(COMMANDS)
