"""Two replicas over one database (two Services, each with its own data directory for its index files), on
SQLite and PostgreSQL: an upload on one is searched on the other, and a /forget on the other is honoured by the
first before its next answer, although the first holds the scope's index in memory (bot.db.tables.ScopeVersion).
Real MiniLM encoder."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.db import document_queries
from bot.services import open_services
from tests.unit.test_knowledge import REPORT, settings_for

pytestmark = pytest.mark.integration
SCOPE = "chat:-100300"
MENU = (b"The canteen serves lentil soup on Mondays. Friday brings grilled trout with potatoes. "
        b"Desserts are fruit salad or rice pudding.")
QUESTION = "How long was the incubation period in ferrets?"


async def replica(tmp_path: Path, name: str, db_url: str):
    settings = settings_for(tmp_path / name, window_sentences=2)
    settings.database.url = db_url
    return await open_services(settings)


async def test_a_forget_on_one_replica_is_honoured_by_the_other_before_its_next_answer(tmp_path, db_url):
    engine_a, a = await replica(tmp_path, "a", db_url)
    engine_b, b = await replica(tmp_path, "b", db_url)
    try:
        await a.knowledge.ingest(SCOPE, REPORT, "report.txt")
        await a.knowledge.ingest(SCOPE, MENU, "menu.txt")
        assert (await b.knowledge.search(SCOPE, QUESTION, 1))[0].document == "report.txt", "B sees A's upload"
        assert (await a.knowledge.search(SCOPE, QUESTION, 1))[0].document == "report.txt"  # A's index in memory
        async with a.sessions() as s:
            before = await document_queries.scope_version(s, SCOPE)
        assert await b.knowledge.forget(SCOPE, "report.txt") is not None
        async with a.sessions() as s:
            assert await document_queries.scope_version(s, SCOPE) == before + 1
        found = await a.knowledge.search(SCOPE, QUESTION, 5)
        assert [p.document for p in found] == ["menu.txt"], "A answered from a forgotten document"
        await b.knowledge.ingest(SCOPE, REPORT, "report-again.txt")
        assert (await a.knowledge.search(SCOPE, QUESTION, 1))[0].document == "report-again.txt"
    finally:
        await engine_a.dispose()
        await engine_b.dispose()
