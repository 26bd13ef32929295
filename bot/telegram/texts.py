"""Everything the bot says in Telegram, in one place: fixed messages, and the functions that word what a service
returned. Handlers pick the text; services return data (the text of a reply itself is the model's)."""

from __future__ import annotations

from bot.safe_text import shorten_name
from bot.services.jobs import SHUTDOWN
from bot.services.training.plan import format_duration

NAME_SHOWN = 200  # characters of a name a user typed that a reply repeats: a name can be as long as a message

# ---- access and the reply queue -------------------------------------------------------------------------

NOT_ALLOWED = "Sorry, this bot is private and you are not on its list of users."
TOO_FAST = "You are sending messages too fast. Please wait a minute and try again."
NOT_ALLOWED_BUTTON = "You are not allowed to use this bot."
STARTING_UP = "Starting up, one moment…"  # the placeholder while the model still loads after a start
AFTER_YOUR_PREVIOUS = "⏳ I'll answer this right after your previous message."
EMPTY_MENTION = "Yes? Ask me something."
EDIT_NOTE = "I answer each message once, so I did not answer your edit. Send it as a new message to ask again."


def too_long(chars: int, limit: int) -> str:
    return f"That message is too long ({chars:,} characters); I take at most {limit:,}."


def queued_text(ahead: int) -> str:
    """The placeholder of a reply waiting for a place in the batch."""
    return "⏳ queued: you are next…" if ahead == 0 else f"⏳ queued: {ahead} ahead of you…"


# ---- /start, /help, /reset, /settings, feedback -----------------------------------------------------------

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
RESET_DONE = "Started a new conversation. I no longer see the earlier messages."
# a message under the character limit that is still too long for the model (emoji, combining marks: many tokens)
TOO_LONG_FOR_ME = "That message is too long for me to read in one go. Please send a shorter one, or split it up."
SYSTEM_PROMPT_TOO_LONG = "That system prompt is too long (2,000 characters at most)."
SYSTEM_PROMPT_RESET = "System prompt reset to the default."
SYSTEM_PROMPT_SET = "System prompt updated."
BAD_BUTTON = "That button is not valid any more. Send /settings or ask again."
THANKS_FOR_FEEDBACK = "Thanks for the feedback!"
UNKNOWN_REPLY = "That reply is no longer known."


def hello(name: str, help_text: str) -> str:
    return f"Hello {name}! {help_text}"


def settings_text(system_prompt: str, temperature: float) -> str:
    return (f"System prompt:\n{system_prompt}\n\nTemperature: {temperature:g}\n\n"
            "Change the prompt with /settings system YOUR PROMPT (empty for the default). Pick a temperature:")


def temperature_set(value: float) -> str:
    return f"Temperature set to {value:g}"


# ---- what the bot cannot handle -----------------------------------------------------------------------------

CAN_DO = "I read text, and PDF, DOCX, HTML, Markdown or text files sent as a document. See /help."
CANNOT = {  # what the message is -> what the bot cannot do with it
    "photo": "I cannot see images yet.",
    "voice": "I cannot listen to voice messages yet.",
    "audio": "I cannot listen to audio yet.",
    "video": "I cannot watch videos yet.",
    "video_note": "I cannot watch video messages yet.",
    "animation": "I cannot watch GIFs yet.",
    "sticker": "I cannot read stickers.",
    "location": "I cannot use locations.",
    "contact": "I cannot use contacts.",
    "poll": "I cannot take part in polls.",
}


def unsupported_reply(kind: str) -> str:
    """The reply to a message of a kind the bot cannot read (a key of CANNOT, or "")."""
    return f"{CANNOT.get(kind, 'I cannot read this kind of message.')} {CAN_DO}"


def unknown_command_reply(text: str) -> str:
    command = (text.split() or ["/"])[0].split("@", 1)[0]
    return f"I do not know the command {command}. /help lists the ones I have."


# ---- documents: uploads, /ask, /docs, /forget, /summarize, /cancel ------------------------------------------

ASK_USAGE = "Usage: /ask YOUR QUESTION"
NO_DOCUMENTS = "No documents yet. Send me a PDF, DOCX, HTML, Markdown or text file."
FORGET_USAGE = "Usage: /forget NAME (or the number shown by /docs)"
NOTHING_TO_CANCEL = "Nothing of yours is running here: no reply, summary or upload."
EMPTY_CONVERSATION = "There is nothing to summarize yet: this conversation is empty."
SUMMARY_FAILED = "Sorry, the summary failed on my side."


def too_big(name: str, size_bytes: int, limit_mb: float) -> str:
    return f"{name} is {size_bytes / 2**20:.1f} MB; I can index files up to {limit_mb:g} MB."


def indexing(name: str) -> str:
    return f"Indexing {name}…"


def indexing_progress(name: str, stage: str, fraction: float) -> str:
    return f"Indexing {name}: {stage} {fraction:.0%}"


def upload_outcome(name: str, outcome) -> str:
    """How indexing an upload ended (bot.services.uploads.UploadOutcome)."""
    result = outcome.result
    if outcome.status == "download_failed":
        return f"I could not download {name}: {outcome.detail}"
    if outcome.status == "rejected":
        return outcome.detail
    if outcome.status == "stopped":
        return stopped_text(f"Indexing {name}", outcome.detail, "send the file again")
    if outcome.status == "failed":
        return f"Sorry, indexing {name} failed on my side. Nothing was stored."
    if outcome.status == "still_indexing":
        return f"I am already indexing this file as {result.document.name}; it is not indexed twice."
    if outcome.status == "duplicate":
        return f"I already have this file as {result.document.name}; it was not indexed twice."
    pages = f"{_n(result.pages, 'page')}, " if result.pages else ""
    return f"Indexed {result.document.name}: {pages}{_n(result.chunks, 'chunk')}. Ask me about it, or /summarize it."


def stopped_text(what: str, reason: str | None, again: str) -> str:
    """The status a stopped job ends on: by its user's /cancel, or because the bot is stopping."""
    if reason == SHUTDOWN:
        return f"⚠️ {what} was stopped: I am restarting. Nothing was stored; please {again} in a minute."
    return f"{what} was cancelled. Nothing was stored."


def interrupted_text(job) -> str:
    """The status of a job an earlier run of the bot never finished (it crashed or was killed)."""
    if job.kind == "ingest":
        return f"⚠️ Indexing {job.label} was interrupted by a restart. Nothing was stored; please send the file again."
    return f"⚠️ The summary of {job.label} was interrupted by a restart. Send /summarize again for it."


def _job_names(jobs) -> str:
    """"your reply", "the summary of NAME", "indexing NAME", joined with commas and "and"."""
    names = [{"summary": "the summary of ", "ingest": "indexing "}.get(j.kind, "") + j.label for j in jobs]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def stopping(jobs) -> str:
    """What /cancel is stopping, shown at once."""
    return f"Stopping {_job_names(jobs)}…"


def stopped_jobs(stopped, still_running) -> str:
    """What /cancel stopped, once those jobs have ended (`still_running`: the ones that had not ended in time)."""
    ended = [j for j in stopped if j not in still_running]
    if not stopped:
        return "Nothing was left to stop: it had just finished."
    text = f"Stopped {_job_names(ended)}." if ended else ""
    if still_running:
        text += f" Still stopping {_job_names(still_running)}; its status line will say when it has ended."
    return text.strip()


def document_list(docs) -> str:
    """/docs: the chat's documents numbered 1..n, oldest first (the numbers /forget and /summarize take)."""
    lines = [f"{n}. {d.name} – {(_n(d.pages, 'page') + ', ') if d.pages else ''}{_n(d.chunk_count, 'chunk')}"
             for n, d in enumerate(docs, 1)]
    return "Documents in this chat:\n" + "\n".join(lines)


def forgot_text(removed) -> str:
    """What /forget removed (bot.db.sources.Forgotten): the document's parts and the answers that drew on it."""
    doc, n = removed.document, removed.answers
    parts = f"{doc.chunk_count} part{'s' * (doc.chunk_count != 1)}"
    if not n:
        return f"Forgot {doc.name}: {parts}."
    answers = "1 answer that used it is" if n == 1 else f"{n} answers that used it are"
    return f"Forgot {doc.name}: {parts}, and {answers} no longer in this chat's history or training data."


def no_such_document(target: str) -> str:
    return f"No document called {shorten_name(target, NAME_SHOWN)!r} here. See /docs."


def stopping_upload(name: str) -> str:
    """/forget of an upload still being indexed, while its indexing stops."""
    return f"{name} is still being indexed. Stopping it…"


def forget_outcome(outcome) -> str:
    """What /forget did (bot.services.uploads.ForgetOutcome)."""
    if outcome.status == "forgotten":
        return forgot_text(outcome.forgotten)
    if outcome.status == "stopped":
        return f"{outcome.name} was still being indexed: I stopped indexing it, and nothing of it is stored."
    if outcome.status == "forgotten_when_indexed":
        return (f"{outcome.name} finished indexing before it could be stopped, so I forgot it once indexed. "
                + forgot_text(outcome.forgotten))
    if outcome.status == "not_allowed" and not outcome.detail:
        return f"{outcome.name} is still being indexed; only its uploader or an admin of this chat can stop it."
    if outcome.status == "ambiguous":
        numbers = ", ".join(map(str, outcome.numbers))
        return (f"{len(outcome.numbers)} documents here are named {shorten_name(outcome.name, NAME_SHOWN)!r} "
                f"(numbers {numbers} in /docs); give the number: /forget {outcome.numbers[0]}")
    if outcome.status == "not_allowed":
        return outcome.detail
    return no_such_document(outcome.name)


def summarizing(label: str) -> str:
    return f"Summarizing {label}…"


def summarizing_progress(label: str, part: int, parts: int) -> str:
    return f"Summarizing {label}: part {part} of {parts}"


def summary_problem(outcome) -> str:
    """Why there is no summary (bot.services.summaries.SummaryOutcome that is not "done")."""
    if outcome.status == "no_such_document":
        return no_such_document(outcome.detail)
    if outcome.status == "still_indexing":
        return f"{outcome.detail} is still being indexed. Send /summarize again once it is indexed."
    if outcome.status == "ambiguous":
        return f"{outcome.matches} documents match {shorten_name(outcome.detail, NAME_SHOWN)!r}; give the number from /docs."
    if outcome.status == "empty_conversation":
        return EMPTY_CONVERSATION
    if outcome.status == "stopped":
        return stopped_text(f"The summary of {outcome.label}", outcome.detail, "send /summarize again")
    if outcome.status == "failed":
        return SUMMARY_FAILED
    return f"There is nothing I could summarize in {outcome.label}."  # done, but no sentence to show


def summary_text(outcome) -> str:
    """The finished summary, Markdown: a file name as code, so its _ and * stay literal."""
    title = f"`{outcome.label}`" if outcome.of_document and "`" not in outcome.label else outcome.label
    return f"**Summary of {title}:**\n\n{outcome.summary.text}"


# ---- /stats --------------------------------------------------------------------------------------------------

MAX_CHATS_SHOWN = 20  # the rest are summed up in one line: a message holds 4096 characters


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _counts(messages: int, tokens: int, documents: int) -> str:
    return f"{_n(messages, 'message')}, {_n(tokens, 'reply token')}, {_n(documents, 'document')}"


def _overview(o) -> list[str]:
    model = (f"version #{o.version.id} ({o.version.name}), trained from {o.version.base}" if o.version
             else f"the configured model {o.configured_model} (no trained version is active)")
    total = [sum(getattr(c, f) for c in o.chats) for f in ("messages", "tokens", "documents")]
    lines = ["", f"Model in use: {model}", f"All chats ({len(o.chats)}): {_counts(*total)}"]
    for c in o.chats[:MAX_CHATS_SHOWN]:
        lines.append(f"• {c.name or 'untitled'} ({c.type} {c.chat_id}): "
                     f"{_counts(c.messages, c.tokens, c.documents)}, {_n(c.users, 'user')}")
    if len(o.chats) > MAX_CHATS_SHOWN:
        lines.append(f"… and {_n(len(o.chats) - MAX_CHATS_SHOWN, 'more chat')}")
    return lines


def stats_text(stats, admin_in_group: bool = False) -> str:
    """The /stats reply (bot.services.stats.Stats)."""
    today, total = stats.user.since, stats.user.total
    lines = ["📊 Your use of this chat",
             f"Today (UTC): {_counts(today.messages, today.tokens, today.documents)}",
             f"All time: {_counts(total.messages, total.tokens, total.documents)}",
             "Reply tokens: the length of my replies to your messages, in model tokens. Documents: the ones you "
             "uploaded that are still here."]
    if stats.overview is not None:
        lines += _overview(stats.overview)
    elif admin_in_group:
        lines.append("\nSend /stats in a private chat with me for every chat's totals.")
    return "\n".join(lines)


# ---- training (admin) ------------------------------------------------------------------------------------------

ADMINS_ONLY = "Only the bot's admins can do that."
TRAINING_USAGE = "Usage: /training on  or  /training off"
TRAINING_GROUP_ADMINS_ONLY = "Only admins can change this for a group."
TRAINING_ON = "This chat's conversations may now be used to train the model."
TRAINING_OFF = "This chat's conversations will not be used for training."
RETRAIN_USAGE = "Usage: /retrain, /retrain force (activate whatever the loss) or /retrain resume"
NOTHING_TO_RESUME = "There is no stopped run to resume. Start a new one with /retrain."
# reading every chat and document and timing training steps takes a while: said at once, then edited
PREPARING_PLAN = ("Preparing a retraining plan: reading the opted-in chats and documents, then timing a few "
                  "training steps…")
PLAN_FAILED = ("I could not prepare a training run: the configured base model or the stored data could not be "
               "read, or its timed trial steps failed. The bot's log has the details.")
START_BUTTON, DROP_BUTTON = "▶️ Start", "✖️ Cancel"
PLAN_DROPPED_ANSWER = "Cancelled"
PLAN_DROPPED = "Retraining cancelled; nothing was trained."
PLAN_EXPIRED_ANSWER = "This plan has expired."
PLAN_EXPIRED = "This plan has expired or was already used. Send /retrain again."
RUN_NOT_STARTED_ANSWER = "Could not start"
RUN_NOT_STARTED = ("The training run could not start: its data could not be written on the server. The bot's "
                   "log has the details.")
PLAN_CANCELLED = "Retraining cancelled with /train_cancel; nothing was trained."
NO_RUNS = "No training runs yet. Start one with /retrain."
ROLLBACK_USAGE = "Usage: /rollback ID (see /models) or /rollback base"


def training_state(on: bool, by_default: bool) -> str:
    """/training without an argument: whether this chat's conversations are trained on."""
    return (f"Training on this chat's conversations is {'on' if on else 'off'}"
            f"{' (the default)' if by_default else ''}. Change it with /training on|off.")


def format_loss(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "?"


def step_time_text(step) -> str:
    """Seconds per training step and where the figure comes from (bot.services.training.plan.StepTime)."""
    if step.ms is None:
        return step.basis
    per_step = f"{step.ms:.0f} ms" if step.ms < 1000 else f"{step.ms / 1000:.1f}s"
    return f"{per_step} per step, {step.basis}"


def shortfall_text(shortfall) -> str:
    """Why a run cannot train on the data there is, in an admin's terms (bot.services.training.plan.Shortfall)."""
    if shortfall.reason == "no chats":
        return ("No chat has opted in to training yet, so there is nothing to train on. A chat opts in with "
                "/training on (admins can do it for a group).")
    if shortfall.reason == "no examples":
        return ("The opted-in chats have no finished exchanges or documents yet, so there is nothing to train "
                "on. Chat with the bot there, or upload documents, and try again.")
    n = shortfall.examples
    return (f"Not enough data to train on yet: {n} example{'s' if n != 1 else ''}, and a run needs at least "
            f"{shortfall.needed}. One in ten (at least one) is held out to measure whether the new version is "
            "better, and the rest must be enough to learn from. More exchanges in opted-in chats (/training on) "
            "and their documents add examples.")


def _sizing(plan) -> str:
    o, n = plan.options, len(plan.train)
    epochs = f"{o.epochs_over(n):.1f}".removesuffix(".0")
    text = (f"{o.steps} steps × batch {o.batch_size} ≈ {epochs} epoch{'s' if epochs != '1' else ''} over the "
            f"{n:,} training example{'s' if n != 1 else ''}")
    if o.steps == o.max_steps and o.epochs_over(n) < o.epochs:
        text += f" (capped at max_steps {o.max_steps}; {o.epochs:g} epochs would take more)"
    return text


def plan_text(plan) -> str:
    """What a run would train on, and how long, or why it cannot (bot.services.training.plan.Plan)."""
    s, o = plan.stats, plan.options
    lines = [
        "Retraining plan",
        f"• Conversations: {s.conversations} from {s.chats} opted-in chat(s), {s.exchanges} exchanges "
        f"({s.liked} rated 👍 first; {s.disliked} rated 👎 left out)",
        f"• Documents: {s.documents} ({_n(s.chunks, 'chunk')}, trained as question -> passage examples)",
        f"• Examples: {plan.examples} ({len(plan.heldout)} held out for the before/after loss), "
        f"{plan.tokens:,} tokens" + (f"; {s.dropped} left out (too long or over the cap)" if s.dropped else ""),
    ]
    if plan.refusal is not None:
        return "\n".join(lines) + "\n\n" + shortfall_text(plan.refusal)
    lines += [
        f"• LoRA rank {o.lora_rank} on {plan.base}: {_sizing(plan)}, lr {o.learning_rate:g}, "
        f"block {o.block_size}",
        f"• Estimated time: {format_duration(plan.est_seconds)} ({step_time_text(plan.step)})",
        "• The new version replaces the current model only if its held-out loss is lower."
        if not plan.force else "• force: the new version becomes the active model whatever its loss.",
    ]
    return "\n".join(lines)


def job_text(job) -> str:
    """The status line of the run in flight (bot.services.training.runner.Job)."""
    if job.phase == "before":
        return f"Run #{job.run_id}: measuring the current model's held-out loss…"
    if job.phase != "training" or not job.last:
        return f"Run #{job.run_id}: {'loading the base model' if job.phase == 'training' else job.phase}…"
    r = job.last
    text = f"Run #{job.run_id}: step {r['step']}/{job.steps} · loss {r['loss']:.3f}"
    if "eval_loss" in r:
        text += f" · held-out {r['eval_loss']:.3f}"
    return text + f" · ETA {format_duration(r.get('eta_s'))}"


def training_busy(job) -> str:
    return (f"A training run is already in progress. {job_text(job)}\n"
            "See /train_status, or stop it with /train_cancel.")


def resuming(run_id: int) -> str:
    return f"Resuming training run #{run_id}…"


def run_started_answer(run_id: int) -> str:
    return f"Training run #{run_id} started"


def run_starting(run_id: int) -> str:
    return f"Training run #{run_id}: starting…"


def busy_answer(error: Exception) -> str:
    return f"Busy: {error}"


def outcome_text(outcome) -> str:
    """The final report of a run (bot.services.training.report.RunOutcome)."""
    head = {"succeeded": "finished", "resumable": "stopped; resume it with /retrain resume",
            "cancelled": "cancelled", "failed": "failed"}[outcome.status]
    lines = [f"Training run #{outcome.run_id} {head} (step {outcome.step}/{outcome.steps})."]
    if outcome.before is not None or outcome.after is not None:
        lines.append(f"Held-out loss: before {format_loss(outcome.before)}, after {format_loss(outcome.after)}.")
    version = outcome.version
    if version is not None:
        if outcome.promoted:
            why = " (forced)" if outcome.promoted_by_force else ""
            lines.append(f"Version #{version.id} ({version.name}) is now the active model{why}.")
        else:
            lines.append(f"Version #{version.id} ({version.name}) was saved but not activated: its held-out loss "
                         f"is not lower. Use /rollback {version.id} to use it anyway.")
    if outcome.load_failed:
        lines.append("The new version could not be loaded, so the current model stays (see the bot's log).")
    elif outcome.before_error:
        lines.append(f"The current model's held-out loss could not be measured ({outcome.before_error}).")
    elif outcome.error:
        lines.append(outcome.error)
    return "\n".join(lines)


def loss_curve_caption(run_id: int) -> str:
    return f"Loss curve of training run #{run_id}"


def runs_text(runs) -> str:
    """/train_status with no run in flight: the latest runs (bot.db.models.TrainingRun), newest first."""
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
    return "Recent training runs:\n" + "\n".join(lines)


def train_cancel_text(run_id: int | None, plans_dropped: bool) -> str:
    if run_id is not None:
        return (f"Stopping training run #{run_id}; it saves a checkpoint at its next step. "
                "The active model is unchanged.")
    if plans_dropped:
        return "Cancelled the open retraining plan; nothing was trained."
    return "No training run is in progress and no plan is open."


def versions_text(versions, configured: str) -> str:
    """/models: the configured model, then every version (bot.db.models.ModelVersion), the active one marked."""
    active = next((v for v in versions if v.is_active), None)
    lines = [f"base – {configured} (configured){'  ✅ active' if active is None else ''}"]
    for v in versions:
        size = f"{v.data_size:,} tokens" if v.data_size is not None else "? tokens"
        lines.append(f"#{v.id} {v.name} – base {v.base}, {v.created_at:%Y-%m-%d %H:%M} UTC, {size}, "
                     f"held-out {format_loss(v.heldout_loss)}{'  ✅ active' if v.is_active else ''}")
    return "Model versions:\n" + "\n".join(lines) + "\n\nSwitch with /rollback ID or /rollback base."


def unknown_version(version_id: int) -> str:
    return f"There is no model version {version_id}. See /models."


def version_files_missing(version_id: int) -> str:
    return (f"Version #{version_id}'s files are missing on the server, so it cannot be served; the current model "
            "stays active. The bot's log names the folder.")


def version_not_loaded(version_id: int | None) -> str:
    which = "The configured base model" if version_id is None else f"Version #{version_id}"
    return (f"{which} could not be loaded: its files are damaged or not a model I can read. The current one stays "
            "active; the bot's log has the details.")


def now_serving(version, configured: str) -> str:
    """After /rollback: the version now serving (bot.db.models.ModelVersion), or None for the configured model."""
    if version is None:
        return f"Now serving {configured} (the configured base model)."
    return f"Now serving version #{version.id} ({version.name})."
