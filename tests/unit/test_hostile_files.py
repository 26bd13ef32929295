"""Every file of the hostile corpus (tests/support/hostile_files.py) through the real ingest: the parse child
with its limits, chunking, the real MiniLM encoder and SQLite. Each file is indexed within the chunk bounds
or refused with its own clear message; nothing crashes or hangs, and nothing is left half-written in SQL."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.config import DocumentSettings, Settings
from bot.db.models import Chunk, Document
from bot.documents.chunk import CHARS_PER_TOKEN
from bot.documents.parse import MAX_NAME_CHARS, DocumentError
from bot.services import open_services
from tests.support.hostile_files import corpus

pytestmark = pytest.mark.integration
HANG_S = 120  # far beyond what any file needs; a file still running then counts as hung


def settings_for(tmp_path: Path) -> Settings:
    from bot.config import env_cache_dir
    from lm import hub

    docs = DocumentSettings(encoder=str(hub.pull("minilm-l6", env_cache_dir())), parse_timeout_s=60, parse_memory_mb=1024)
    return Settings(data_dir=tmp_path / "data", documents=docs)


async def ingest_all(kb, files) -> dict[str, object]:
    """label -> Ingested, the DocumentError, the unexpected exception, or "hung"."""
    outcomes: dict[str, object] = {}
    for f in files:
        try:
            outcomes[f.label] = await asyncio.wait_for(kb.ingest("hostile", f.data, f.name, f.mime), HANG_S)
        except TimeoutError:
            outcomes[f.label] = "hung"
        except Exception as e:  # noqa: BLE001 - a crash is what this test counts
            outcomes[f.label] = e
    return outcomes


@pytest.mark.timeout(400)
async def test_every_hostile_file_is_indexed_within_bounds_or_refused_clearly(tmp_path: Path):
    files = corpus()
    engine, services = await open_services(settings_for(tmp_path))
    kb = services.knowledge
    try:
        outcomes = await ingest_all(kb, files)
        max_tokens = kb.chunk_limit()
        async with kb.sessions() as s:
            documents = list(await s.scalars(select(Document)))
            chunk_rows = dict((await s.execute(select(Chunk.document_id, func.count()).group_by(Chunk.document_id))).all())
            chunks = list(await s.scalars(select(Chunk)))
        counts = [kb.encoder.count_tokens(c.text) for c in chunks]
    finally:
        await engine.dispose()

    crashed = [label for label, got in outcomes.items() if isinstance(got, Exception)
               and not isinstance(got, DocumentError)]
    hung = [label for label, got in outcomes.items() if got == "hung"]
    half_written = [d.name for d in documents if d.status != "ready" or chunk_rows.get(d.id, 0) != d.chunk_count]
    print(f"\nhostile corpus: tried {len(files)}, crashed {len(crashed)}, hung {len(hung)}, "
          f"half-written {len(half_written)}")
    assert not crashed and not hung and not half_written, (crashed, hung, half_written)

    for f in files:
        got = outcomes[f.label]
        if f.refusal is None:
            assert not isinstance(got, Exception), (f.label, got)
            assert got.chunks > 0 and len(got.document.name) <= MAX_NAME_CHARS, f.label
        else:
            assert isinstance(got, DocumentError) and got.code == f.refusal and f.says in got.message, (f.label, got)
            # a message for a person: short, naming the file (shortened), no traceback or exception class
            assert 0 < len(got.message) <= 400 and got.message.split(" ", 1)[0][:20] in f.name, got.message
            assert "Traceback" not in got.message and not re.search(r"\b\w+Error\b", got.message), got.message
    assert len(documents) == sum(f.refusal is None for f in files)  # a refused file stored nothing
    assert sum(chunk_rows.values()) == len(chunks) and set(chunk_rows) <= {d.id for d in documents}

    for c, n in zip(chunks, counts, strict=True):  # every chunk within its token and its character bound
        assert c.token_count == n <= max_tokens and 0 < len(c.text) <= CHARS_PER_TOKEN * max_tokens, c.text[:80]
        assert not re.search("[\ud800-\udfff]", c.text)
    by_name = {d.name: d for d in documents}
    assert any(name.endswith("….txt") for name in by_name), "a long name keeps its extension"
    pdf_text = " ".join(c.text for c in chunks if c.document_id == by_name["cmap.pdf"].id)
    assert "The tide tables of Osterby: \ufffd rising" in pdf_text  # the lone surrogates, replaced
    huge_word = [c.text for c in chunks if c.document_id == by_name["word.txt"].id]
    assert "".join(huge_word) == "x" * 2**20  # cut at the character bound, nothing lost
