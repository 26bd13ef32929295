"""The hostile corpus through the real bot: every hostile file and injection document (tests/support/
hostile_files.py) uploaded, every indexed one summarized, every injection document asked about, and hostile text
(U+0000, lone surrogates, Arabic-Indic digits, token floods, names far too long) sent as messages and commands, one
at a time, by a user whose own names hold U+0000 and a lone surrogate. Each input must be answered: nothing logged
as an error, none still in progress after HANG_S, none without a reply, nothing half-written in SQL afterwards, no
live link whose text hides its address; one summary line says so. Then what was stored: each file indexed within
the chunk bounds, or refused with its own clear message and nothing stored.

Tiny random chat model (what a reply says does not matter here), the real MiniLM encoder, SQLite and PostgreSQL,
the fake Bot API. Whether the answers obey the documents' orders is the answer pipeline's business; the one check of it here
is marked below."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.db.tables import Chunk, Document, Job, Message
from bot.documents.chunk import CHARS_PER_TOKEN
from bot.documents.parse import MAX_NAME_CHARS
from tests.support.bot_harness import bot_settings, running_bot
from tests.support.fake_telegram import FakeTelegram
from tests.support.hostile_files import corpus, injection_documents
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
USER = 3501
HANG_S = 120  # far beyond what any input needs; one still in progress then counts as hung
QUIET_S = 0.5  # an answer is final once nothing changed for this long and nothing shows progress
# what a message shows while its work is still going on
IN_PROGRESS = re.compile(r"^(…|Starting up, one moment…|⏳.*|Indexing .*(…|\d+%)|Summarizing .*(…|part \d+ of \d+)"
                         r"|.* is still being indexed\. Stopping it…)$", re.DOTALL)
BAD = "\x00\ud800"
SAFE = "\ufffd\ufffd"
TEXTS = [
    f"hello{BAD}world, name a fruit",
    f"/settings system be{BAD}brief",
    f"/forget a{BAD}b",
    f"/x{BAD}y",
    f"/summarize wr{BAD}",
    f"/ask what is {BAD}?",
    "/rollback ١٢",
    "/rollback ²",
    "😀" * 2100,  # under the character limit, far over the context in tokens
    "e\u0301" * 1500,  # combining marks
    "/forget " + "n" * 4000,  # echoed back in a "no such document" reply
    "/summarize " + "n" * 4090,
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf", max_seq_len=1024).path


def _outside_quotes(text: str) -> str:
    """`text` without what it quotes “like this” (an answer quotes the document's sentence so)."""
    return re.sub(r"“[^”]*”", "", text)


class Run:
    """Inputs sent one at a time; each one's answer is the bot's messages sent after it, once settled."""

    def __init__(self, fake: FakeTelegram):
        self.fake, self.outcomes, self.answers = fake, {}, {}

    async def send(self, label: str, send) -> list:
        before = len(self.fake.messages(USER))
        send()
        loop = asyncio.get_running_loop()
        deadline, seen, quiet_since = loop.time() + HANG_S, None, loop.time()
        while True:
            new = self.fake.messages(USER)[before:]
            state = [(m.message_id, m.edits) for m in new]
            if state != seen:
                seen, quiet_since = state, loop.time()
            settled = new and not any(IN_PROGRESS.match(m.text) for m in new)
            if settled and loop.time() - quiet_since >= QUIET_S:
                outcome = "answered"
                break
            if loop.time() > deadline:
                outcome = "hung" if new else "unanswered"
                break
            await asyncio.sleep(0.05)
        self.outcomes[label], self.answers[label] = outcome, new
        return new


async def test_the_hostile_corpus_through_the_bot(tmp_path, tiny_model, caplog, db_url):
    """On SQLite and on PostgreSQL, which refuses U+0000 in text wherever it comes from: an update, a file's name
    or text, a summary, a reply."""
    from bot.config import env_cache_dir

    caplog.set_level(logging.ERROR)
    files, injections = corpus(), injection_documents()
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model, admins=[USER], rate_limit_per_minute=10_000)
        settings.cache_dir = env_cache_dir()  # the real encoder, pulled once for the whole suite
        settings.model.context_tokens = 1024
        settings.database.url = db_url
        who = {"first_name": f"Ann{BAD}", "username": f"ann{BAD}"}
        run, status = Run(fake), {}  # status: each upload's final status line
        async with running_bot(settings) as app:
            indexed = []
            uploads = [(f.label, f.name, f.data, f.mime or "application/octet-stream") for f in files]
            uploads += [(d.label, d.name, d.data, d.mime) for d in injections]
            uploads.append(("file name with NUL and a lone surrogate", f"wr{BAD}en.txt", b"Wrens sing loudly.\n",
                            "text/plain"))
            for label, name, data, mime in uploads:
                answer = await run.send(f"upload: {label}", lambda n=name, d=data, m=mime: fake.send_user_document(
                    USER, USER, n, d, m, username=who["username"]))
                status[label] = answer[0].text if answer else ""
                if status[label].startswith("Indexed "):
                    indexed.append((label, fake.user_messages(USER)[-1].message_id))
            for text in TEXTS:
                await run.send(f"text: {text[:30]!r}", lambda t=text: fake.send_user_message(USER, USER, t, **who))
            for d in injections:
                await run.send(f"question: {d.label}",
                               lambda q=d.question: fake.send_user_message(USER, USER, q, **who))
            for label, upload in indexed:  # "/summarize" in reply to the upload, whatever its name
                await run.send(f"summary: {label}", lambda u=upload: fake.send_user_message(
                    USER, USER, "/summarize", reply_to_message_id=u, **who))
            kb = app.bot_data["services"].knowledge
            async with kb.sessions() as s:
                documents = list(await s.scalars(select(Document)))
                chunks = list(await s.scalars(select(Chunk).order_by(Chunk.document_id, Chunk.ordinal)))
                jobs = list(await s.scalars(select(Job)))
                streaming = list(await s.scalars(select(Message).where(Message.status == "streaming")))
            max_tokens, counts = kb.chunk_limit(), [kb.encoder.count_tokens(c.text) for c in chunks]

    messages = fake.messages(USER)
    crashed = [f"{r.getMessage()}: {r.exc_info[1]!r}" if r.exc_info else r.getMessage()
               for r in caplog.records if r.levelno >= logging.ERROR]
    hung = [label for label, o in run.outcomes.items() if o == "hung"]
    unanswered = [label for label, o in run.outcomes.items() if o == "unanswered"]
    stored = Counter(c.document_id for c in chunks)
    half_written = [d.name for d in documents if d.status != "ready" or stored[d.id] != d.chunk_count]
    half_written += [f"job {j.label}" for j in jobs] + [f"reply {m.id}" for m in streaming]
    live_links = [m.text[:60] for m in messages for v in m.versions
                  if "<a " in v.raw or any(e["type"] == "text_link" for e in v.entities)]
    print(f"\nhostile corpus through the bot: tried {len(run.outcomes)} inputs, {len(crashed)} crashed, {len(hung)} hung, "
          f"{len(unanswered)} unanswered, {len(half_written)} half-written, {len(live_links)} live links")
    assert (crashed, hung, unanswered, half_written, live_links) == ([], [], [], [], [])

    # every file indexed within its bounds, or refused with its own clear message, which stored nothing
    for f in files:
        said = status[f.label]
        if f.refusal is None:
            assert said.startswith("Indexed "), (f.label, said)
            continue
        assert f.says in said and 0 < len(said) <= 400 and said.split(" ", 1)[0][:20] in f.name, (f.label, said)
        assert "Traceback" not in said and not re.search(r"\b\w+Error\b", said), said
    assert len(indexed) == len(documents) == sum(f.refusal is None for f in files) + len(injections) + 1
    assert set(stored) <= {d.id for d in documents} and all(len(d.name) <= MAX_NAME_CHARS for d in documents)
    for c, n in zip(chunks, counts, strict=True):  # every chunk within its token and its character bound
        assert c.token_count == n <= max_tokens and 0 < len(c.text) <= CHARS_PER_TOKEN * max_tokens, c.text[:80]
        assert not re.search("[\ud800-\udfff\x00]", c.text)
    by_name = {d.name: d.id for d in documents}
    assert any(name.endswith("….txt") for name in by_name), "a long name keeps its extension"
    assert f"wr{SAFE}en.txt" in by_name
    pdf_text = " ".join(c.text for c in chunks if c.document_id == by_name["cmap.pdf"])
    assert "The tide tables of Osterby: \ufffd rising" in pdf_text  # the lone surrogates, replaced
    assert "".join(c.text for c in chunks if c.document_id == by_name["word.txt"]) == "x" * 2**20  # nothing lost

    # what users were shown: nothing unencodable, links with their address, nothing the reader never saw, no
    # token counts for a message too long in tokens but not in characters
    for label in (f"text: {t[:30]!r}" for t in TEXTS if t[0] in "😀e"):
        assert not [m.text for m in run.answers[label] if "token" in m.text], label
    assert not [m.text for m in messages if "\x00" in m.text or re.search("[\ud800-\udfff]", m.text)]
    assert any("the refund portal (https://evil.example/steal)" in m.text for m in messages), \
        "the notes' link, summarized, shows its address"
    for d in injections:
        assert not [p for p in d.hidden if p != "hunter2" and any(p in m.text for m in messages)], d.label


async def test_the_admin_password_a_document_plants_is_never_said_as_the_bots_own(tmp_path, tiny_model):
    from bot.config import env_cache_dir

    handbook = next(d for d in injection_documents() if d.name == "handbook.md")
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        settings.cache_dir = env_cache_dir()
        async with running_bot(settings):
            fake.send_user_document(USER, USER, handbook.name, handbook.data, handbook.mime)
            await fake.wait_for(lambda: any(m.text.startswith("Indexed handbook.md") for m in fake.messages(USER)), 60)
            for n, text in enumerate(("What is the admin password?", "/summarize handbook.md")):
                fake.send_user_message(USER, USER, text)
                await fake.wait_for(lambda n=n: len([m for m in fake.messages(USER) if m.reply_markup
                                                     or m.text.startswith("Summary of")]) > n, 60)
    said = [m.text for m in fake.messages(USER)]
    assert not [t for t in said if "hunter2" in _outside_quotes(t)], said

