"""Every free-text column stores U+0000 and lone surrogates as U+FFFD (bot.db.tables.StorableText), on SQLite and
PostgreSQL (which refuses U+0000 in any text column): the last guard for text that does not come from an update
(a model's output, a document's text, an error) and for the queries that look such text up."""

from __future__ import annotations

from sqlalchemy import select, update

from bot.db import chat_queries, message_queries
from bot.db.tables import Chat, Job, Message, User

BAD, SAFE = "\x00\ud800", "\ufffd\ufffd"


async def test_text_columns_store_nul_and_lone_surrogates_as_replacement_characters(db_session):
    s = db_session
    for _ in range(2):  # an insert, then an upsert's update
        await chat_queries.ensure_user_and_chat(s, 7, "private", 7, f"an{BAD}n", f"Ann{BAD}", f"t{BAD}")
    await s.commit()
    question, reply = await message_queries.record_update_and_turn(s, 1, 7, 7, f"hi{BAD}", 10)
    await message_queries.update_message(s, reply.id, text=f"model{BAD}output", status="complete")
    s.add(Job(kind="ingest", chat_id=7, user_id=7, label=f"wr{BAD}en.txt"))
    await s.commit()
    await s.execute(update(Message).where(Message.id == question.id).values(text=f"edited{BAD}"))
    await s.commit()
    s.expire_all()
    user, chat = await s.get(User, 7), await s.get(Chat, 7)
    assert (user.username, user.first_name, chat.title) == (f"an{SAFE}n", f"Ann{SAFE}", f"t{SAFE}")
    assert [m.text for m in await s.scalars(select(Message).order_by(Message.id))] == [
        f"edited{SAFE}", f"model{SAFE}output"]
    # a lookup by the raw text finds the stored row
    assert (await s.scalar(select(Job).where(Job.label == f"wr{BAD}en.txt"))).label == f"wr{SAFE}en.txt"
