"""The real Qwen2.5-Coder-0.5B writes a summary of a short text of three sections (map-reduce), held to it:
every sentence shown is whole, names nothing the text does not, and rests on one of its sections; the
summary draws on more than the first section."""

from __future__ import annotations

import pytest

from bot.config import Settings, env_cache_dir
from bot.services import summary_check as sc
from bot.services.summary_writer import model_writer, write_summary

pytestmark = pytest.mark.integration

SECTIONS = [
    "# The Kelvara bridge\n\nThe Kelvara bridge opened in 1932. It was built by the engineer Marta Lind and cost "
    "4 million crowns. For forty years it was the only road across the river between Osterby and the coast.",
    "# The flood of 1968\n\nIn March 1968 a flood tore away two of the bridge's nine arches. The army built a "
    "temporary ferry, which carried 3,000 people a day until the arches were rebuilt in 1970.",
    "# The new tunnel\n\nIn 2015 the council of Osterby opened a tunnel under the river. Since then the old bridge "
    "has carried only cyclists and walkers, and it was listed as a monument in 2019.",
]


@pytest.fixture(scope="module")
def qwen():
    from bot.services.lm_gateway import ChatModel

    settings = Settings(cache_dir=env_cache_dir())
    model = ChatModel.load(settings, "qwen2.5-coder-0.5b")
    yield model
    model.close()


def test_qwen_summarizes_every_section_and_says_nothing_the_text_does_not(qwen):
    steps: list[tuple[int, int]] = []
    # sections of about one part each, so that the map step runs
    out = write_summary(SECTIONS, model_writer(qwen), qwen.count_tokens, sentences=3, section_tokens=70,
                        reduce_tokens=1000,
                        progress=lambda done, total: steps.append((done, total)))
    assert out.sections == 3 and out.calls == 4 and steps[-1] == (4, 4)  # three notes, one reduce
    assert len(out.notes) == 3 and all(note for note in out.notes)
    assert 1 <= len(out.sentences) <= 3
    source = sc.Source(SECTIONS)
    for sentence in out.sentences:
        assert not sc.is_fragment(sentence), sentence
        assert sc.unsupported(sentence, source) == [], sentence
        assert sc.rests_on(sentence, source) is not None, sentence
    assert out.unsupported == []
    assert len(set(out.drawn)) >= 2, (out.sentences, out.drawn)  # not only the opening section
