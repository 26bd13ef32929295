"""Routing a message in a chat with documents (bot.services.answer): a general question or small talk is not about
the documents (a chat reply, no source), a document question is, and a follow-up that refers back is searched with
the question before it. The real MiniLM encoder and SQLite: routing is decided by their figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import DocumentSettings, Settings
from bot.services import answer, open_services

pytestmark = pytest.mark.integration

POLICY = (b"Every employee receives a photo badge on the first day. The badge opens the main entrance and the car park "
          b"barrier. If you lose your badge, report the loss to Security on the same day. Security blocks the old "
          b"badge at once. A replacement badge costs 15 euros and is issued by the front desk within two working "
          b"days.")


async def _routed(tmp_path: Path, messages: list[tuple[str, list[str]]]) -> list[tuple[str, bool]]:
    from bot.config import env_cache_dir
    from lm import hub

    settings = Settings(data_dir=tmp_path / "data",
                        documents=DocumentSettings(encoder=str(hub.pull("minilm-l6", env_cache_dir()))))
    engine, services = await open_services(settings)
    kb = services.knowledge
    try:
        await kb.ingest("s", POLICY, "badges.txt")
        out = []
        for text, recent in messages:
            query = answer.retrieval_query(text, recent)
            evidence = await kb.evidence("s", query, await kb.search("s", query), answer.EVIDENCE_SENTENCES)
            out.append((query, answer.about_documents(evidence)))
        return out
    finally:
        await engine.dispose()


async def test_general_questions_and_small_talk_go_to_chat_and_document_questions_to_the_documents(tmp_path):
    routed = await _routed(tmp_path, [("What is the capital of Italy?", []), ("Hi! How are you today?", []),
                                      ("Tell me a joke about cats.", []),
                                      ("What must I do if I lose my badge?", []),
                                      ("How much does a replacement badge cost?", [])])
    assert [about for _, about in routed] == [False, False, False, True, True]


async def test_a_follow_up_is_searched_with_the_question_before_it(tmp_path):
    earlier = "What must I do if I lose my badge?"
    (query, about), (alone, _) = await _routed(tmp_path, [("And how much does it cost?", [earlier]),
                                                          ("And how much does it cost?", [])])
    assert query == f"And how much does it cost? {earlier}" and about
    assert alone == "And how much does it cost?"  # nothing before it to refer to
