"""Turns linked to the documents they drew on, and forgetting a document with those turns, against real SQLite
and PostgreSQL: the marks keep the turns out of prompt history and training data, and only the uploader or
someone who manages the chat may forget."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db import chat_queries, document_queries, message_queries
from bot.db import training as training_db
from bot.db.sources import NotAllowedToForget, forget_document, record_sources
from bot.db.tables import Chunk, Document, Message, MessageSource
from bot.telegram.texts import who_may_forget

CHAT, ANN, BEN = -100777, 501, 502
SCOPE = f"chat:{CHAT}"


@pytest.fixture
async def s(db_session: AsyncSession) -> AsyncSession:
    await chat_queries.ensure_user_and_chat(db_session, CHAT, "group", ANN, "ann", "Ann", title="team")
    await chat_queries.ensure_user_and_chat(db_session, CHAT, "group", BEN, None, "Ben", title="team")
    return db_session


async def memo(s: AsyncSession, name: str = "memo.txt", user_id: int | None = ANN) -> Document:
    s.expunge_all()  # a forget's bulk DELETE leaves its chunks in the session, and SQLite reuses their ids
    chunks = [document_queries.NewChunk(text=t, token_count=8) for t in ("The launch code of Project Nightjar is ZEBRA-7731.",
                                                                         "Nightjar launches in May.")]
    return await document_queries.add_document_with_chunks(s, scope=SCOPE, chat_id=CHAT, user_id=user_id, name=name,
                                                           mime="text/plain", sha256=name.ljust(64, "0"), size_bytes=60,
                                                           chunks=chunks)


async def turn(s: AsyncSession, update_id: int, question: str, answer: str) -> tuple[Message, Message]:
    asked = await message_queries.record_update_and_user_message(s, update_id, CHAT, ANN, question, telegram_message_id=update_id)
    reply = await message_queries.add_assistant_message(s, asked.conversation_id, CHAT, answer, status="complete")
    return asked, reply


async def chunk_ids(s: AsyncSession, document: Document) -> list[int]:
    return list(await s.scalars(select(Chunk.id).where(Chunk.document_id == document.id).order_by(Chunk.id)))


async def texts_in_history(s: AsyncSession, conversation_id: int) -> list[str]:
    return [m.text for m in await message_queries.history(s, conversation_id)]


async def test_forgetting_keeps_grounded_and_derived_turns_out_of_history_and_training(s: AsyncSession) -> None:
    doc = await memo(s)
    hello = await turn(s, 1, "hi", "Hello!")
    code = await turn(s, 2, "What is the launch code?", "ZEBRA-7731\n\nSource: memo.txt")
    await record_sources(s, [m.id for m in hello], [], [hello[0].id])
    await record_sources(s, [m.id for m in code], (await chunk_ids(s, doc))[:1], [m.id for m in (*hello, code[0])])
    # a chat reply whose prompt held the grounded answer drew on the document too
    joke = await turn(s, 3, "and say it again", "ZEBRA-7731, again")
    await record_sources(s, [m.id for m in joke], [], [m.id for m in (*hello, *code, joke[0])])
    conv = hello[0].conversation_id
    before = await texts_in_history(s, conv)
    assert "ZEBRA-7731\n\nSource: memo.txt" in before and "ZEBRA-7731, again" in before
    assert "ZEBRA-7731, again" in [t.text for t in await training_db.conversation_turns(s, [CHAT])]

    forgotten = await forget_document(s, SCOPE, "memo.txt", requester_id=ANN, any_document=False)

    assert forgotten is not None and forgotten.answers == 2 and forgotten.document.chunk_count == 2
    assert await texts_in_history(s, conv) == ["hi", "Hello!"]  # the questions go with their answers
    assert [t.text for t in await training_db.conversation_turns(s, [CHAT])] == ["hi", "Hello!"]
    assert await s.scalar(select(func.count()).select_from(Message)) == 6  # marked, not deleted
    assert await s.scalar(select(func.count()).select_from(MessageSource)) == 0
    assert await s.scalar(select(func.count()).select_from(Chunk)) == 0


async def test_a_turn_prepared_while_its_document_was_forgotten_is_marked_at_once(s: AsyncSession) -> None:
    doc = await memo(s)
    code = await turn(s, 1, "What is the launch code?", "ZEBRA-7731")
    read = await chunk_ids(s, doc)  # the answer was drawn from these, then the document went
    await forget_document(s, SCOPE, "1")  # its number in /docs
    assert await record_sources(s, [m.id for m in code], read, [code[0].id]) is True
    assert await texts_in_history(s, code[0].conversation_id) == []
    # and one whose prompt held a turn forgotten meanwhile
    doc = await memo(s, "again.txt")
    old = await turn(s, 2, "code?", "ZEBRA-7731")
    await record_sources(s, [m.id for m in old], await chunk_ids(s, doc), [old[0].id])
    later = await turn(s, 3, "repeat that", "ZEBRA-7731 again")
    prompt = [old[0].id, old[1].id, later[0].id]
    await forget_document(s, SCOPE, "again.txt")
    assert await record_sources(s, [m.id for m in later], [], prompt) is True
    assert await texts_in_history(s, old[0].conversation_id) == []


async def test_only_the_uploader_or_a_chat_manager_may_forget(s: AsyncSession) -> None:
    await memo(s)
    with pytest.raises(NotAllowedToForget) as refused:
        await forget_document(s, SCOPE, "memo.txt", requester_id=BEN, any_document=False)
    assert who_may_forget(refused.value).startswith("Only @ann, who uploaded memo.txt, or an admin of this chat")
    assert [d.name for d in await document_queries.list_documents(s, SCOPE)] == ["memo.txt"]  # refused: nothing changed
    assert await forget_document(s, SCOPE, "memo.txt", requester_id=BEN, any_document=True) is not None

    await memo(s, "old.txt", user_id=None)  # stored before uploads were recorded per person
    with pytest.raises(NotAllowedToForget) as refused:
        await forget_document(s, SCOPE, "old.txt", requester_id=ANN, any_document=False)
    assert who_may_forget(refused.value) == "Only an admin of this chat can forget old.txt."
    assert await forget_document(s, SCOPE, "missing.txt", requester_id=BEN, any_document=False) is None
