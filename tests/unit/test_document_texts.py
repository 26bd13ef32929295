"""What the bot says about documents counts in words that agree with the number: "1 page, 1 chunk", not
"1 pages, 1 chunks", in the upload's status line and in /docs."""

from __future__ import annotations

from bot.db.tables import Document
from bot.services.knowledge import Ingested
from bot.services.uploads import UploadOutcome
from bot.telegram.texts import document_list, upload_outcome


def _document(id_: int, name: str, pages: int | None, chunks: int) -> Document:
    return Document(id=id_, name=name, pages=pages, chunk_count=chunks)


def test_one_page_and_one_chunk_are_singular_and_more_are_plural():
    one = _document(1, "one.pdf", 1, 1)
    assert upload_outcome("one.pdf", UploadOutcome("indexed", Ingested(one, 1, 1))) == \
        "Indexed one.pdf: 1 page, 1 chunk. Ask me about it, or /summarize it."
    many = _document(2, "many.pdf", 12, 1_200)
    assert upload_outcome("many.pdf", UploadOutcome("indexed", Ingested(many, 1_200, 12))).startswith(
        "Indexed many.pdf: 12 pages, 1,200 chunks.")
    assert document_list([one, many, _document(3, "notes.txt", None, 2)]) == (
        "Documents in this chat:\n1. one.pdf – 1 page, 1 chunk\n2. many.pdf – 12 pages, 1,200 chunks\n"
        "3. notes.txt – 2 chunks")


def test_docs_numbers_a_chats_documents_from_1_whatever_their_ids():
    docs = [_document(7, "GPL-3.txt", None, 40), _document(9, "notes.md", None, 2)]
    assert document_list(docs) == "Documents in this chat:\n1. GPL-3.txt – 40 chunks\n2. notes.md – 2 chunks"
