"""The answer pipeline with the real SmolLM2-135M-Instruct and MiniLM over a real KnowledgeBase (SQLite):
short answers copied from the document, "not found" for what it does not say, small talk left to the chat."""

from __future__ import annotations

import pytest

from bot.config import DocumentSettings, Settings, env_cache_dir
from bot.services import answer
from lm import hub

pytestmark = pytest.mark.integration
GUIDE = b"""# Volcano guide

## Eruptions
Mount Kelvara erupted in 1872 and covered the valley of Osterby in grey ash.
The eruption lasted eleven days and the ash cloud reached the coast.

## Monitoring
Seismometers around Kelvara are read every ten minutes by the observatory in Osterby.
"""


@pytest.fixture
async def pipeline(tmp_path):
    from bot.db.session import create_engine, session_factory, upgrade
    from bot.services.knowledge import KnowledgeBase
    from bot.services.lm_gateway import ChatModel

    settings = Settings(data_dir=tmp_path / "data", cache_dir=env_cache_dir(),
                        documents=DocumentSettings(encoder=str(hub.pull("minilm-l6", env_cache_dir()))))
    settings.data_dir.mkdir(parents=True)
    await upgrade(settings.database_url)
    engine = create_engine(settings.database_url)
    kb = KnowledgeBase(settings, session_factory(engine))
    await kb.ingest("guide", GUIDE, "volcano.md", "text/markdown")
    model = ChatModel.load(settings)
    try:
        yield kb, model
    finally:
        await engine.dispose()


async def ask(pipeline, question: str, force: bool = True) -> answer.Answer:
    kb, model = pipeline
    return await answer.answer_question(question, knowledge=kb, model=model, scope="guide", force=force)


async def test_answers_are_short_copied_and_cited(pipeline):
    erupted = await ask(pipeline, "When did Mount Kelvara erupt?")
    assert erupted.text == "1872"
    assert erupted.source.text.startswith("Mount Kelvara erupted in 1872")
    assert erupted.render().startswith("1872\n\nSource: volcano.md\n“Mount Kelvara erupted in 1872")
    reads = await ask(pipeline, "Who reads the seismometers?")
    assert "observatory" in reads.text.lower() and len(reads.text.split()) <= 5


async def test_what_the_document_does_not_say_is_not_found(pipeline):
    missing = await ask(pipeline, "When did Mount Tavora erupt?")
    assert not missing.found
    assert missing.render().startswith(answer.NO_ANSWER)


async def test_small_talk_is_not_about_the_documents_but_a_question_is(pipeline):
    joke = await ask(pipeline, "Tell me a short joke about cats.", force=False)
    assert not joke.about_documents and not joke.found
    question = await ask(pipeline, "How often are the seismometers read?", force=False)
    assert question.about_documents and question.found
