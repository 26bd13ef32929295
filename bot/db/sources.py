"""Which documents each turn drew on, and forgetting a document together with every turn derived from it.

A turn (a user message and the reply to it) is linked to a document when the reply was answered from its
passages, or when the reply's prompt held a turn already linked to it: whatever the model saw of a document can
come back in any later reply of that conversation. Forgetting a document deletes it with its chunks and marks
every linked message forgotten (Message.forgotten_at); `messages.history` and the training export
(`training.conversation_turns`) skip forgotten messages, so nothing derived from the document reaches
the model again, after a restart too. Same conventions as `chat_queries.py`: writers commit, bad input raises
ValueError (what went wrong as data: the bot's wording of it is in bot/telegram/texts.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.document_queries import bump_scope
from bot.db.tables import Chunk, Document, Message, MessageSource, User


class AmbiguousName(ValueError):
    """Several documents of the scope have the name asked for; `numbers` are theirs in the scope's list."""

    def __init__(self, name: str, numbers: list[int]):
        super().__init__(f"{len(numbers)} documents are named {name!r} (numbers {numbers})")
        self.name, self.numbers = name, numbers


class NotAllowedToForget(ValueError):
    """The requester neither uploaded the document nor may manage the chat: who may, as data (the sentence that
    says it is bot.telegram.texts.who_may_forget). `uploader` is None for a document nobody is recorded as
    uploading."""

    def __init__(self, document: str, uploader: User | None):
        super().__init__(document, uploader.id if uploader else None)
        self.document = document
        self.username = uploader.username if uploader else None
        self.first_name = uploader.first_name if uploader else None
        self.by_uploader = uploader is not None


@dataclass
class Forgotten:
    document: Document
    answers: int  # replies that drew on it, now kept out of prompts and training data (with their questions)


async def find_document(session: AsyncSession, scope: str, name_or_number: str | int) -> Document | None:
    """A ready document of `scope` by its number (1 for the oldest, as bot.db.document_queries.list_documents orders
    them and /docs shows them: a chat's own numbering, not the table's ids), or by name; None when nothing
    matches (one still being indexed is not matched). Raises AmbiguousName when a name is ambiguous."""
    from bot.db.document_queries import list_documents

    documents = await list_documents(session, scope)
    target = str(name_or_number)
    if target.isascii() and target.isdigit():  # "١٢" is a name, not 12
        number = int(target)
        if 1 <= number <= len(documents):
            return documents[number - 1]
    numbers = [n for n, d in enumerate(documents, 1) if d.name == target]
    if len(numbers) > 1:
        raise AmbiguousName(target, numbers)
    return documents[numbers[0] - 1] if numbers else None


async def forget_document(session: AsyncSession, scope: str, name_or_id: str | int, *,
                          requester_id: int | None = None, any_document: bool = True) -> Forgotten | None:
    """Delete a document of `scope` with its chunks and mark every message that drew on it forgotten, in one
    transaction; commits. None when nothing matched.

    Without `any_document` (the requester does not manage the chat) only the uploader may forget it: anyone
    else gets NotAllowedToForget, and nothing changes.
    """
    document = await find_document(session, scope, name_or_id)
    if document is None:
        return None
    if not any_document and (document.user_id is None or document.user_id != requester_id):
        uploader = await session.get(User, document.user_id) if document.user_id is not None else None
        raise NotAllowedToForget(document.name, uploader)
    linked = select(MessageSource.message_id).where(MessageSource.document_id == document.id)
    marked = await session.execute(
        update(Message).where(Message.id.in_(linked), Message.forgotten_at.is_(None))
        .values(forgotten_at=datetime.now(UTC)).returning(Message.role)
        .execution_options(synchronize_session=False))
    answers = sum(role == "assistant" for role in marked.scalars())
    # links and chunks go by ON DELETE CASCADE; the marks stay on the messages
    await session.execute(delete(Document).where(Document.id == document.id))
    await bump_scope(session, scope)  # every replica's cached index of the scope is stale from this commit on
    await session.commit()
    return Forgotten(document, answers)


async def record_sources(session: AsyncSession, turn_ids: Sequence[int], chunk_ids: Sequence[int],
                         prompt_ids: Sequence[int]) -> bool:
    """Link the turn's messages (question and reply) to the documents of `chunk_ids`, the passages the reply
    was answered from, and to every document the prompt's messages are linked to; commits. Links the turn has
    already are kept, so a reply links its prompt first and the passages of its answer later.

    A document forgotten while the reply was being prepared (a chunk gone, or a prompt message marked) cannot be
    linked any more: the turn is then marked forgotten at once. Returns whether it was.
    """
    found = (await session.execute(select(Chunk.id, Chunk.document_id).where(Chunk.id.in_(chunk_ids)))).all()
    documents = {document_id for _, document_id in found}
    documents |= set(await session.scalars(
        select(MessageSource.document_id).where(MessageSource.message_id.in_(prompt_ids))))
    forgotten = await session.scalar(
        select(Message.id).where(Message.id.in_(prompt_ids), Message.forgotten_at.is_not(None)).limit(1))
    gone = len(found) < len(set(chunk_ids)) or forgotten is not None
    linked = set((await session.execute(select(MessageSource.message_id, MessageSource.document_id)
                                        .where(MessageSource.message_id.in_(turn_ids)))).tuples())
    new = [(m, d) for m in turn_ids for d in documents if (m, d) not in linked]
    if new and not gone:
        session.add_all(MessageSource(message_id=m, document_id=d) for m, d in new)
        try:
            await session.commit()
            return False
        except IntegrityError:  # a document was deleted between the reads above and this insert
            await session.rollback()
            gone = True
    if gone:
        await mark_forgotten(session, turn_ids)
    return gone


async def mark_forgotten(session: AsyncSession, message_ids: Sequence[int]) -> None:
    """Keep these messages out of prompts and training data from now on; commits."""
    await session.execute(update(Message).where(Message.id.in_(message_ids), Message.forgotten_at.is_(None))
                          .values(forgotten_at=datetime.now(UTC)).execution_options(synchronize_session=False))
    await session.commit()

