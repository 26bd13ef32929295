"""Summaries with the real models: `docent summarize` on a 5,000-word single-paragraph text file (it used to
overflow the context), SmolLM2's own token counts for the windows, and a news article with MiniLM."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli.main import main
from bot.config import Settings
from bot.services.summary_pipeline import source_terms, summarize, unsupported_terms, windows

pytestmark = pytest.mark.integration

SUBJECTS = ["The harbour council", "Engineers from Osterby", "The ferry company", "Farmers in the valley",
            "The regional museum", "Teachers at the grammar school", "The rail operator"]
VERBS = ["approved a plan for", "raised concerns about", "reported progress on", "asked for money for",
         "published a study of", "voted against", "celebrated the opening of"]
OBJECTS = ["the new bridge over the Kelvara river", "the winter grain market", "flood defences along the coast",
           "a night ferry to Norland", "the restoration of the old mill", "cheaper tickets for students",
           "a museum of the 1872 eruption"]


def long_paragraph(words: int) -> str:
    """One paragraph, no line breaks, of varied plain sentences: about `words` words."""
    out, n, i = [], 0, 0
    while n < words:
        s = f"{SUBJECTS[i % 7]} {VERBS[(i // 7) % 7]} {OBJECTS[(i // 49 + i) % 7]} in week {i % 52 + 1}."
        out.append(s)
        n += len(s.split())
        i += 1
    return " ".join(out)


@pytest.mark.parametrize("writing", ["extract", "model"])
def test_docent_summarize_takes_a_5000_word_single_paragraph_file(tmp_path: Path, capsys, writing):
    """Extracted: every bullet is one of the text's sentences. Written (the default model): whole sentences whose
    names and numbers are all in the text."""
    from bot.text.support import unsupported_terms as unsupported_claims

    text = long_paragraph(5200)
    path = tmp_path / "minutes.txt"
    path.write_text(text)
    assert main(["summarize", str(path), "--writing", writing]) == 0
    bullets = [line[2:] for line in capsys.readouterr().out.splitlines() if line.startswith("- ")]
    assert len(bullets) >= 3 and all(b.endswith(".") for b in bullets), bullets
    if writing == "extract":
        assert all(b in text for b in bullets), bullets
    else:
        assert not [b for b in bullets if unsupported_claims(b, [text])], bullets


def test_windows_fit_smollm2s_budget_by_its_own_count():
    from bot.services.lm_gateway import ChatModel

    settings = Settings()
    settings.model.name = "smollm2-135m"
    model = ChatModel.load(settings)
    text = long_paragraph(5200)
    budget = model.context_tokens - 160  # the 1,888 tokens the map-reduce summary overflowed
    for pieces in ([text], [text.replace(".", "")]):  # sentences, and one 5,000-word sentence
        parts = windows(pieces, budget, model.count_tokens)
        assert len(parts) > 1 and all(model.count_tokens(p) <= budget for p in parts)
        assert " ".join(parts).split() == pieces[0].split()


ARTICLE = [
    "The harbour council of Osterby has approved a new bridge over the Kelvara river, ending a dispute that "
    "lasted eleven years.",
    "The bridge will cost 14 million euros and is due to open in 2027, the council said on Tuesday.",
    "Mayor Anna Berg said the crossing would cut the journey to the coast by half an hour.",
    "Ferry operators had opposed the plan, warning that the night crossing to Norland could close.",
    "The ferry company said it would now ask the council for help to keep its boats running.",
    "Work on the foundations is expected to start next spring, once the winter floods have passed.",
    "Local schools will hold a competition to name the bridge.",
]


def test_a_news_article_summary_leads_with_the_news_and_invents_nothing():
    from bot.config import env_cache_dir
    from lm import hub
    from lm.encoder import Encoder

    encoder = Encoder.load(hub.pull("minilm-l6", env_cache_dir()))
    summary = summarize([" ".join(ARTICLE)], encoder)
    assert summary.sentences[0] == ARTICLE[0]
    assert 2 <= len(summary.sentences) <= 4 and all(s in ARTICLE for s in summary.sentences)
    assert ARTICLE[-1] not in summary.sentences  # a side note, not the news
    assert summary.unsupported == [] and unsupported_terms(summary.text, source_terms(" ".join(ARTICLE))) == []
