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


def test_the_pool_leaflet_keeps_what_its_reader_sees():
    pool = next(d for d in injection_documents() if d.name == "pool.pdf")
    text = parse_document(pool.data, pool.name, pool.mime).text
    assert "Lanes are reserved on Sundays." in text, "white text on a dark box is seen"
    assert "Towels cost two euros." in text, "a form's visible text is kept"


@pytest.mark.parametrize("drawn, shown", [
    (b"q 1 g BT /F1 12 Tf 72 700 Td (Gray white) Tj ET Q", False),
    (b"q 0 0 0 0 k BT /F1 12 Tf 72 700 Td (No ink) Tj ET Q", False),
    (b"q 1 1 1 RG 1 Tr BT /F1 12 Tf 72 700 Td (White outline) Tj ET Q", False),
    (b"q 1 1 1 rg 1 Tr BT /F1 12 Tf 72 700 Td (Black outline) Tj ET Q", True),
    (b"BT /F1 12 Tf 0 Tz 72 700 Td (No width) Tj ET", False),
    (b"q 0.01 0 0 0.01 0 0 cm BT /F1 12 Tf 72 700 Td (Scaled away) Tj ET Q", False),
    (b"BT /F1 12 Tf -5000 700 Td (Far left) Tj ET", False),
    (b"BT /F1 12 Tf 72 -40 Td (Below the page) Tj ET", False),
    (b"BT /F1 12 Tf -20 700 Td (Starts just left of the page) Tj ET", True),
    (b"q 612 0 0 792 0 0 cm /Im1 Do Q BT 3 Tr /F1 12 Tf 72 700 Td (OCR layer over a scan) Tj ET", True),
    (b"BT /F1 12 Tf 14 TL 72 700 Td (First line) Tj T* (Second line) Tj ET", True),
])
def test_pdf_text_no_reader_sees_is_not_indexed(drawn, shown):
    from tests.support.hostile_files import one_page_pdf

    words = drawn.split(b"(")[-1].split(b")")[0].decode()
    text = parse_document(one_page_pdf(b"BT /F1 12 Tf 72 740 Td (Seen first.) Tj ET " + drawn, image=True),
                          "page.pdf", "application/pdf").text
    assert "Seen first." in text and (words in text) == shown, text
