"""Text a reader of the file never sees is not indexed (bot.documents.parse.hidden), in the injection documents of
the hostile corpus and in the cases around them: HTML hidden by attribute, inline style or a <style> rule (not by
@media print, not aria-hidden), Markdown's comments and hidden HTML (not inside code), Word's hidden runs, and
invisible Unicode tag characters."""

from __future__ import annotations

import pytest

from bot.documents.parse import parse_document
from bot.documents.parse.hidden import drop_hidden_markup, hides, hiding_selectors
from tests.support.hostile_files import injection_documents


@pytest.mark.parametrize("doc", injection_documents(), ids=lambda d: d.name)
def test_what_a_reader_sees_is_indexed_and_what_is_hidden_is_not(doc):
    text = parse_document(doc.data, doc.name, doc.mime).text
    assert doc.visible in text
    assert [phrase for phrase in doc.hidden if phrase in text] == []


def test_the_museum_page_keeps_its_shown_text():
    museum = next(d for d in injection_documents() if d.name == "museum.html")
    text = parse_document(museum.data, museum.name, museum.mime).text
    assert "Tickets cost twelve euros." in text, "@media print hides nothing on screen"
    assert "★" in text, "aria-hidden is shown to every reader who sees"
    assert "the ticket office (" not in text and "the ticket office" in text


def test_hiding_declarations_and_selectors():
    assert all(hides(s) for s in ("display:none", "color: red; DISPLAY : none !important", "visibility:hidden",
                                  "font-size: 0px", "opacity:0", "opacity: 0.0;"))
    assert not any(hides(s) for s in ("display: block", "font-size: 0.8em", "opacity: 0.5", "visibility: visible",
                                      "max-height: none", ""))
    css = "/* .c { display:none } */ .a, div.b { display: none } @media print { .p { display:none } } .d { color: red }"
    assert hiding_selectors(css) == [".a", "div.b"]


def test_markdown_keeps_html_in_code_and_prose_with_angle_brackets():
    md = "if a < b and c > d, 3<4\n\n<!-- gone -->\n```\n<!-- kept -->\n```\n<span hidden>gone too</span> stays"
    assert drop_hidden_markup(md) == "if a < b and c > d, 3<4\n\n\n```\n<!-- kept -->\n```\n stays"
    assert drop_hidden_markup("no html here: a < b > c") == "no html here: a < b > c"
