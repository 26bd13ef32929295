"""Documents: parse uploads into sections of text (in a sandboxed child process) and cut them into chunks.

Embedding and indexing the chunks is `lm`'s job; this package never imports torch or telegram.
"""

from bot.documents.chunk import Chunk, chunk_document, chunk_text, split_sentences, token_counter
from bot.documents.parse import SUPPORTED, DocumentError, ParsedDocument, Section, detect_kind, parse_document

__all__ = [
    "SUPPORTED",
    "Chunk",
    "DocumentError",
    "ParsedDocument",
    "Section",
    "chunk_document",
    "chunk_text",
    "detect_kind",
    "parse_document",
    "split_sentences",
    "token_counter",
]
