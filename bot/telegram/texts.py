"""Everything the bot says in Telegram, in one place: fixed messages, and the functions that word what a service
returned. Handlers pick the text; services return data (the text of a reply itself is the model's), or import
the sentences they word from here. What only the bot's admins read (training, model versions) is in
bot/telegram/training_texts.py; why a file is refused, in bot/telegram/file_texts.py."""

from __future__ import annotations

from bot.safe_text import shorten_name
from bot.services.long_jobs import SHUTDOWN

NAME_SHOWN = 200  # characters of a name a user typed that a reply repeats: a name can be as long as a message

# ---- document answers (bot.services.answer renders them) ---------------------------------------------------
ANSWER_SOURCE = "Source: {source}"
NOT_IN_DOCUMENTS = "I could not find this in your documents."
NOT_STATED = "I could not find this stated in your documents; the closest passage ({source}) says:"
NOT_FROM_DOCUMENTS = "(Not from your documents: this chat has none now, so this is general knowledge.)"
CONVERSATION_LABEL = "this conversation"  # what a summary of the chat's conversation is called in its status line
# what a reply ends with when it did not end by itself (stored with it, as the user saw it)
INTERRUPTED_NOTE = "⚠️ This reply was interrupted by a restart. Please send your message again."
TIMED_OUT_NOTE = "\n\n⏱️ (stopped: the reply took too long)"
STOPPED_NOTE = "\n\n⏹️ (stopped with /cancel)"
FAILED_NOTE = "Sorry, something went wrong while writing the reply."
MODEL_FAILED = "Sorry, my language model could not be loaded. An admin has to look at the logs."
TOO_LONG_MARK = "(the message did not fit the model's context)"  # stored only: the user reads TOO_LONG_FOR_ME

# ---- the command menu (Telegram's list of commands: what each does) ---------------------------------------

COMMAND_MENU = {
    "start": "say hello",
    "help": "what I can do",
    "reset": "start a new conversation",
    "settings": "system prompt and temperature",
    "stats": "your messages, tokens and documents in this chat",
    "ask": "answer a question from this chat's documents",
    "docs": "list this chat's documents",
    "forget": "remove a document: /forget NAME",
    "summarize": "summarize a document (reply to it or give its name) or this conversation",
    "cancel": "stop your reply, summary or upload that is still running here",
}

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
BUTTON_FAILED = "Sorry, that did not work."  # a press whose handler raised (bot.app._on_error)


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


def nothing_to_index(name: str) -> str:
    """A file that parsed but left no chunk to index (bot.services.knowledge)."""
    return f"{name} has no text I could index."


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


def who_may_forget(refused) -> str:
    """Why /forget refused a ready document (bot.db.sources.NotAllowedToForget): who may forget it."""
    if not refused.by_uploader:
        return f"Only an admin of this chat can forget {refused.document}."
    name = f"@{refused.username}" if refused.username else (refused.first_name or "the person")
    return f"Only {name}, who uploaded {refused.document}, or an admin of this chat can forget it."


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
    if outcome.status == "not_allowed" and outcome.refused is None:
        return f"{outcome.name} is still being indexed; only its uploader or an admin of this chat can stop it."
    if outcome.status == "ambiguous":
        numbers = ", ".join(map(str, outcome.numbers))
        return (f"{len(outcome.numbers)} documents here are named {shorten_name(outcome.name, NAME_SHOWN)!r} "
                f"(numbers {numbers} in /docs); give the number: /forget {outcome.numbers[0]}")
    if outcome.status == "not_allowed":
        return who_may_forget(outcome.refused)
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


DIGEST_HEADINGS = {"asked": "You asked", "answered": "I answered", "decided": "Decided"}  # a conversation's


def summary_text(outcome) -> str:
    """The finished summary, Markdown: a file name as code, so its _ and * stay literal; an extracted
    conversation digest (summarize.conversation_digest) as one bullet per part."""
    title = f"`{outcome.label}`" if outcome.of_document and "`" not in outcome.label else outcome.label
    digest = outcome.summary.digest or {}
    body = "\n".join(f"- **{DIGEST_HEADINGS[k]}:** " + " · ".join(v) for k, v in digest.items() if v)
    return f"**Summary of {title}:**\n\n{body or outcome.summary.text}"


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
    """The /stats reply (bot.services.usage_stats.Stats)."""
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
