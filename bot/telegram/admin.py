"""Admin handlers: retraining from Telegram (/retrain, /train_status, /train_cancel), model versions
(/models, /rollback) and the per-chat training opt-in (/training on|off).

Everything that changes the model is for admins only; anyone else gets a refusal and nothing is stored.
The run itself lives in `bot.services.training` (TrainingService, reached as rt.services.training); this
module turns commands and buttons into calls to it and its progress into one edited status message, a
loss-curve photo and a final report.
"""

from __future__ import annotations

import logging
import re

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import ChatType
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot.services.training.report import RunOutcome
from bot.services.training.service import TrainingBusy
from bot.services.training.versions import UnknownVersion, VersionFilesMissing
from bot.telegram import training_texts
from bot.telegram.access import is_admin
from bot.telegram.context import Runtime, origin_of
from bot.telegram.handlers import guarded
from bot.telegram.live_messages import StatusLine

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------- /training


@guarded()
async def training_optin(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Show or set whether this chat's conversations may be used for training."""
    chat, user, message = update.effective_chat, update.effective_user, update.effective_message
    args = [a.lower() for a in context.args or []]
    if not args:
        prefs = await rt.services.chats.prefs_of(chat.id)
        await message.reply_text(training_texts.training_state(prefs.training, prefs.allow_training is None))
        return
    if args[0] not in ("on", "off") or len(args) > 1:
        await message.reply_text(training_texts.TRAINING_USAGE)
        return
    own_private = chat.type == ChatType.PRIVATE and user is not None and user.id == chat.id
    if not (own_private or is_admin(rt.settings.telegram, user.id if user else None)):
        await message.reply_text(training_texts.TRAINING_GROUP_ADMINS_ONLY)
        return
    await rt.services.chats.change(origin_of(update), allow_training=args[0] == "on")
    await message.reply_text(training_texts.TRAINING_ON if args[0] == "on" else training_texts.TRAINING_OFF)


# ---------------------------------------------------------------------------------------- /retrain


class RunStatus:
    """A training run's status message while it runs in the background (bot.services.training.service.RunView):
    its progress, then the outcome, and the loss curve as a photo."""

    def __init__(self, message, interval: float):
        # an admin retrains from a private chat: its edit rate (a 3-step run on a fast CPU ends within 1 s)
        self.line = StatusLine(message, interval=interval)
        self.line.start()

    def progress(self, job) -> None:
        self.line.set(training_texts.job_text(job))

    def stop(self) -> None:
        self.line.stop()

    async def finish(self, outcome: RunOutcome) -> None:
        await self.line.done(training_texts.outcome_text(outcome))
        if outcome.plot is not None and outcome.plot.is_file():
            message = self.line.message
            try:
                await message.get_bot().send_photo(message.chat_id, photo=outcome.plot.read_bytes(),
                                                   caption=training_texts.loss_curve_caption(outcome.run_id))
            except TelegramError as e:
                log.warning("could not send the loss curve of run %s: %s", outcome.run_id, e)


class RetrainStatus:
    """/retrain's reply (bot.services.training.service.RetrainView): the plan being prepared, as its steps run,
    or the status of the run it resumes."""

    def __init__(self, command, interval: float):
        self.command, self.interval = command, interval  # the /retrain message; the edit rate of a run's status
        self.shown: StatusLine | None = None  # the plan's message, once shown

    async def planning(self) -> None:
        self.shown = StatusLine(await self.command.reply_text(training_texts.PREPARING_PLAN))
        self.shown.start()

    def plan_progress(self, progress) -> None:
        self.shown.set(training_texts.plan_progress(progress))

    def stop(self) -> None:
        if self.shown is not None:
            self.shown.stop()

    async def resuming(self, run_id: int) -> RunStatus:
        return RunStatus(await self.command.reply_text(training_texts.resuming(run_id)), self.interval)


@guarded(admins=True)
async def retrain(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Show what a run would train on, with Start / Cancel buttons; `resume` continues a stopped run."""
    message = update.effective_message
    args = [a.lower() for a in context.args or []]
    if args and args[0] not in ("force", "resume") or len(args) > 1:
        await message.reply_text(training_texts.RETRAIN_USAGE)
        return
    view = RetrainStatus(message, rt.settings.telegram.edit_interval_private_s)
    try:
        done = await rt.services.training.retrain(origin_of(update), view, force=args == ["force"],
                                                  resume=args == ["resume"])
    except Exception:
        view.stop()
        if view.shown is None:  # not planning: the error handler logs it, as before
            raise
        log.exception("could not plan a training run")
        await view.shown.message.edit_text(training_texts.PLAN_FAILED)
        return
    view.stop()  # before the plan is shown: a late progress edit must not overwrite it
    if done.busy is not None:
        await message.reply_text(training_texts.training_busy(done.busy))
    elif args == ["resume"]:
        if done.resumed is None:
            await message.reply_text(training_texts.NOTHING_TO_RESUME)
    elif not done.plan.ready:  # the plan says why, and offers nothing to start
        await view.shown.message.edit_text(training_texts.plan_text(done.plan))
    else:
        plan, shown = done.plan, view.shown.message
        buttons = InlineKeyboardMarkup([[
            InlineKeyboardButton(training_texts.START_BUTTON, callback_data=f"train:start:{plan.token}"),
            InlineKeyboardButton(training_texts.DROP_BUTTON, callback_data=f"train:drop:{plan.token}")]])
        await shown.edit_text(training_texts.plan_text(plan), reply_markup=buttons)
        plan.shown_in = (shown.chat_id, shown.message_id)


@guarded(admins=True)
async def on_train_button(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Start or drop a plan shown by /retrain."""
    query = update.callback_query
    _, action, token = (query.data or "::").split(":", 2)
    service = rt.services.training
    if action == "drop":
        service.drop_plan(token)
        await query.answer(training_texts.PLAN_DROPPED_ANSWER)
        await query.edit_message_text(training_texts.PLAN_DROPPED)
        return
    plan = service.take_plan(token)
    if plan is None:
        await query.answer(training_texts.PLAN_EXPIRED_ANSWER)
        await query.edit_message_text(training_texts.PLAN_EXPIRED)
        return
    try:
        run = await service.start(plan, origin_of(update))
    except TrainingBusy as e:
        await query.answer(training_texts.busy_answer(e))
        return
    except Exception:
        log.exception("could not start a training run")
        await query.answer(training_texts.RUN_NOT_STARTED_ANSWER)
        await query.edit_message_text(training_texts.RUN_NOT_STARTED)
        return
    await query.answer(training_texts.run_started_answer(run.id))
    status = await query.edit_message_text(training_texts.run_starting(run.id))
    service.watch(run.id, RunStatus(status, rt.settings.telegram.edit_interval_private_s))


# ---------------------------------------------------------------------------------------- status, cancel


@guarded(admins=True)
async def train_status(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """The run in flight, or else the most recent runs."""
    service = rt.services.training
    if service.busy:
        await update.effective_message.reply_text(training_texts.job_text(service.job))
        return
    runs = await service.runs(limit=3)
    await update.effective_message.reply_text(training_texts.runs_text(runs) if runs else training_texts.NO_RUNS)


@guarded(admins=True)
async def train_cancel(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Stop the run in flight; lm.train saves a checkpoint so /retrain resume can continue it."""
    run_id, plans = await rt.services.training.cancel_all()
    for plan in plans:  # its message loses its buttons and says why
        if plan.shown_in is not None:
            try:
                await context.bot.edit_message_text(training_texts.PLAN_CANCELLED, chat_id=plan.shown_in[0],
                                                    message_id=plan.shown_in[1])
            except TelegramError as e:
                log.warning("could not mark a cancelled plan: %s", e)
    await update.effective_message.reply_text(training_texts.train_cancel_text(run_id, bool(plans)))


# ---------------------------------------------------------------------------------------- versions


@guarded(admins=True)
async def models_command(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """List model versions: id, base, created, data size, held-out loss, active."""
    versions = await rt.services.training.versions()
    await update.effective_message.reply_text(training_texts.versions_text(versions, rt.settings.model.name))


@guarded(admins=True)
async def rollback(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Serve another version (or the configured base model) without a restart."""
    message = update.effective_message
    args = context.args or []
    # ASCII digits only: str.isdigit() and int() also take "١٢" (Arabic-Indic) or "¹", read as another number
    if len(args) != 1 or not (args[0].lower() == "base" or re.fullmatch(r"#?[0-9]+", args[0])):
        await message.reply_text(training_texts.ROLLBACK_USAGE)
        return
    target = None if args[0].lower() == "base" else int(args[0].lstrip("#"))
    try:
        version = await rt.services.training.activate(target)
    except UnknownVersion as e:
        await message.reply_text(training_texts.unknown_version(e.version_id))
        return
    except VersionFilesMissing as e:
        await message.reply_text(training_texts.version_files_missing(e.version_id))
        return
    except Exception:
        log.exception("could not switch to model version %s", target)
        await message.reply_text(training_texts.version_not_loaded(target))
        return
    await message.reply_text(training_texts.now_serving(version, rt.settings.model.name))

