"""The composition root: builds the services once, wires the Telegram handlers to them, and runs the bot
(polling or webhook)."""

from __future__ import annotations

import asyncio
import logging
import signal
from urllib.parse import urlsplit

from telegram import Update
from telegram.error import TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    MessageHandler,
    filters,
)

from bot.config import Settings
from bot.db.session import create_engine, session_factory, upgrade
from bot.redact import redact
from bot.services import Services, build_services
from bot.services.compute import in_own_thread, join_torch_threads
from bot.services.lm_gateway import ModelManager
from bot.telegram import (
    admin,
    chat_handlers,
    document_handlers,
    edits,
    fallback,
    stats_handlers,
    texts,
    training_texts,
)
from bot.telegram.context import Runtime
from bot.telegram.handlers import add_commands
from bot.telegram.incoming import DocentApplication
from bot.telegram.live_messages import StreamingMessage
from bot.telegram.retry import RetryingRateLimiter
from bot.telegram.webhook import use_strict_webhook_handler

log = logging.getLogger(__name__)


def _file_url(settings: Settings) -> str:
    api = settings.telegram.api_url
    return settings.telegram.file_url or (api[: -len("/bot")] + "/file/bot" if api.endswith("/bot") else api + "/file/bot")


async def _post_init(app: Application) -> None:
    """Migrate the schema, register commands, and settle what a previous run left unfinished."""
    services: Services = app.bot_data["services"]
    await upgrade(services.settings.database_url)
    await services.training.restore_active_model()  # a promoted version outlives restarts; unfinished runs settle
    await app.bot.set_my_commands(app.bot_data["commands"])
    await _settle_abandoned(app, services)
    if services.leases.shared:  # replicas: keep this one's leases, and take over a dead one's work
        app.bot_data["heartbeat"] = asyncio.create_task(_keep_leases(app, services))
    for sig in app.bot_data.get("stop_signals", ()):
        asyncio.get_running_loop().add_signal_handler(sig, _stop_on_signal, services)
    app.bot_data["warm_up"] = services.models.warm_up()  # kept referenced until done; replies meanwhile say so
    log.info("docent is running as @%s (%s)", app.bot.username, services.settings.telegram.mode)


async def _settle_abandoned(app: Application, services: Services) -> None:
    """Work a dead process left (one process: the previous run; replicas: any whose lease expired), each taken
    by one replica: replies delivered or marked, half-indexed documents deleted, cut jobs' status lines saying so."""
    await _recover_replies(app, services)
    await services.knowledge.discard_unfinished()  # an upload cut off mid-ingest: its chunks go, its job row says so
    for job in await services.jobs.recover():  # an upload or summary cut off: its status line says so, not "90%"
        try:
            if job.status_message_id is not None:
                await app.bot.edit_message_text(texts.interrupted_text(job), chat_id=job.chat_id,
                                                message_id=job.status_message_id)
            else:  # the process died before its status line was known: the user is told in a new message
                await app.bot.send_message(job.chat_id, texts.interrupted_text(job))
        except TelegramError as e:
            log.warning("could not mark interrupted %s job %s: %s", job.kind, job.id, e)
        await services.jobs.settled(job)  # only once said: a kill before that leaves the row for the next start
    if services.leases.shared:  # one process settles its training runs at start-up (restore_active_model)
        for run in await services.training.settle_abandoned():
            await _tell_admins(app, services, run.requested_by, training_texts.run_abandoned_text(run))


async def _tell_admins(app: Application, services: Services, user_id: int | None, text: str) -> None:
    """A message to the admin who asked for something (their private chat), or to every admin if none did."""
    for chat_id in [user_id] if user_id is not None else services.settings.telegram.admins:
        try:
            await app.bot.send_message(chat_id, text)
        except TelegramError as e:
            log.warning("could not tell admin %s: %s", chat_id, e)


async def _keep_leases(app: Application, services: Services) -> None:
    """The heartbeat of a replica: its leases renewed every third of `lease_s`, and every `lease_s` the work of
    replicas that died taken over (bot.services.work_leases)."""
    period = services.leases.lease_s / 3
    beats = 0
    while True:
        await asyncio.sleep(period)
        beats += 1
        try:
            await services.leases.renew()
            if beats % 3 == 0:
                await _settle_abandoned(app, services)
        except Exception:  # a database hiccup: the next beat tries again (the lease outlasts two missed beats)
            log.exception("could not renew leases or settle abandoned work")


async def _recover_replies(app: Application, services: Services) -> None:
    """Replies a restart cut off: a finished one is delivered again, a cut one shows its note; in the reply's
    message, or in a new one (a reply to the question) when the process died before that message was known."""
    finished, cut = await services.assistant.recover()
    for message in finished:  # generated before the restart, perhaps never shown in full: deliver it now
        await _deliver_again(app, message, formatted=True)
        await services.assistant.finish_reply(message, message.text, "complete")
    for message in cut:  # marked interrupted only once shown: a kill before that leaves it for the next start
        await _deliver_again(app, message, formatted=False)
        await services.assistant.finish_reply(message, message.text, "interrupted")


async def _deliver_again(app: Application, message, formatted: bool) -> None:
    """A stored reply's text (bot.db.tables.Message) in its Telegram message, or else in a new one."""
    if message.telegram_message_id is not None:
        stream = StreamingMessage.resume(app.bot, message.chat_id, message.telegram_message_id)
    else:
        stream = StreamingMessage(app.bot, message.chat_id, min_interval=0.0,
                                  reply_to_message_id=message.reply_to_telegram_message_id)
    try:
        await stream.finish(message.text, reply_markup=chat_handlers.feedback_markup() if formatted else None,
                            formatted=formatted)
    except TelegramError as e:
        log.warning("could not deliver reply %s again: %s", message.id, e)


def _stop_on_signal(services: Services) -> None:
    """SIGTERM or SIGINT: running summaries and uploads stop at their next step and say so, then the
    application stops (python-telegram-bot waits for the handlers, which now end within seconds)."""
    log.info("stopping: %d running summaries and uploads asked to stop", services.jobs.stop_all())
    raise SystemExit  # what python-telegram-bot's own signal handler raises to leave run_polling/run_webhook


async def _post_stop(app: Application) -> None:
    """Stop a training run cleanly (it stays resumable) and close the database."""
    heartbeat = app.bot_data.get("heartbeat")
    if heartbeat is not None:
        heartbeat.cancel()
    warm_up = app.bot_data.get("warm_up")
    if warm_up is not None and not warm_up.done():
        warm_up.cancel()  # stopped before the model finished loading: nothing waits for it any more
    services: Services = app.bot_data["services"]
    await services.training.shutdown()
    await in_own_thread(services.models.close)  # its scheduler thread must not outlive the process's exit


async def _on_error(update: object, context) -> None:
    """Log what a handler raised; a button press it failed on is still answered, so no spinner is left turning."""
    log.error("error while handling an update", exc_info=context.error)
    query = update.callback_query if isinstance(update, Update) else None
    if query is not None:
        try:
            await query.answer(texts.BUTTON_FAILED)
        except TelegramError as e:  # answered already, or too old to answer
            log.debug("could not answer the callback query: %s", e)


def _add_handlers(app: Application) -> None:
    """Every handler, in the order python-telegram-bot tries them (the first that takes an update in a group
    handles it); commands with their line of the command menu (bot.telegram.handlers.add_commands)."""
    # edits first, in a group of their own: a note, and no other handler ever sees an edited message
    app.add_handler(MessageHandler(filters.UpdateType.EDITED, edits.on_edit), group=-1)
    add_commands(app, {"start": chat_handlers.start, "help": chat_handlers.help_command, "reset": chat_handlers.reset,
                       "settings": chat_handlers.settings_command, "stats": stats_handlers.stats_command},
                 texts.COMMAND_MENU)
    # python-telegram-bot passes a press with empty callback data to every pattern handler, so chat's buttons
    # come first (and refuse it); the catch-all after the features answers every other unknown press
    app.add_handler(CallbackQueryHandler(chat_handlers.on_button, pattern=r"^(temp|fb):"))
    app.add_handler(MessageHandler(filters.Document.ALL, document_handlers.on_document))
    add_commands(app, {"ask": document_handlers.ask, "docs": document_handlers.list_docs,
                       "forget": document_handlers.forget, "summarize": document_handlers.summarize_command,
                       "cancel": document_handlers.cancel_command},
                 texts.COMMAND_MENU)
    add_commands(app, {"training": admin.training_optin, "retrain": admin.retrain, "train_status": admin.train_status,
                       "train_cancel": admin.train_cancel, "models": admin.models_command,
                       "rollback": admin.rollback}, training_texts.COMMAND_MENU)
    app.add_handler(CallbackQueryHandler(admin.on_train_button, pattern=r"^train:(start|drop):"))
    app.add_handler(CallbackQueryHandler(chat_handlers.on_button))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, chat_handlers.on_text))
    # last of all: only what no other handler took comes here
    app.add_handler(MessageHandler(fallback.UNSUPPORTED, fallback.on_unsupported))
    app.add_handler(MessageHandler(filters.COMMAND, fallback.on_unknown_command))


def build_application(settings: Settings, models: ModelManager | None = None) -> Application:
    """The Application with every handler registered; nothing is started yet."""
    # Bot API URLs contain the token: mask it in every log record, and keep httpx's per-request lines out
    redact(settings.telegram.token, settings.telegram.token.partition(":")[2])
    logging.getLogger("httpx").setLevel(logging.WARNING)
    engine = create_engine(settings.database_url)
    services = build_services(settings, session_factory(engine), models)
    app = (
        Application.builder()
        .application_class(DocentApplication)  # every update's text made storable before any handler sees it
        .token(settings.telegram.token)
        .base_url(settings.telegram.api_url)
        .base_file_url(_file_url(settings))
        .concurrent_updates(True)  # one slow reply must never hold up other chats
        .rate_limiter(RetryingRateLimiter(max_retries=0))  # network failures retried, flood waits not here
        .post_init(_post_init)
        .post_stop(_post_stop)
        .build()
    )
    app.bot_data["services"] = services
    app.bot_data["runtime"] = Runtime(services)
    app.bot_data["db_engine"] = engine
    _add_handlers(app)
    app.add_error_handler(_on_error)
    return app


def run_bot(settings: Settings) -> int:
    """Run until interrupted, by long polling or as a webhook server."""
    app = build_application(settings)
    # the stop signals are handled by _stop_on_signal (installed by _post_init), which stops long jobs first
    app.bot_data["stop_signals"] = (signal.SIGINT, signal.SIGTERM, signal.SIGABRT)
    tg = settings.telegram
    if tg.mode == "webhook":
        if not tg.webhook_url or not tg.webhook_secret:
            raise ValueError("webhook mode needs [telegram] webhook_url and webhook_secret")
        use_strict_webhook_handler()  # a body that is not an update gets 400 and one warning, not 500
        # the replica listens at the path of the public URL, which a reverse proxy passes on unchanged
        app.run_webhook(listen=tg.webhook_listen, port=tg.webhook_port, webhook_url=tg.webhook_url,
                        url_path=urlsplit(tg.webhook_url).path.strip("/"),
                        secret_token=tg.webhook_secret, allowed_updates=Update.ALL_TYPES, stop_signals=None)
    else:
        app.run_polling(allowed_updates=Update.ALL_TYPES, stop_signals=None)
    if not join_torch_threads(timeout_s=60):
        log.warning("torch work still running at exit")
    return 0
