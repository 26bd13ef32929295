"""parse_document on real files built in memory: every format, and every way a file can be bad."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from bot.documents import parse as parse_pkg
from bot.documents.parse import DocumentError, formats, parse_document
from tests.support import hostile_files as hostile
from tests.support import make_docs as md
from tests.support import misbehaving_parsers

PAGES = [
    "The first page talks about tides.\nThey rise (and fall) twice a day.",
    "The second page is about the moon.",
    "The third page ends the story.",
]


def error_of(data, name, **kw) -> DocumentError:
    with pytest.raises(DocumentError) as info:
        parse_document(data, name, **kw)
    return info.value


# -- PDF


def test_multi_page_pdf_has_one_section_per_page_with_1_based_numbers(tmp_path):
    data = md.make_pdf(PAGES)
    path = tmp_path / "tides.pdf"
    path.write_bytes(data)
    doc = parse_document(path, "tides.pdf")
    assert doc.kind == "pdf" and doc.pages == 3 and doc.name == "tides.pdf"
    assert [s.page for s in doc.sections] == [1, 2, 3]
    assert doc.sections[0].text == "The first page talks about tides.\nThey rise (and fall) twice a day."
    assert doc.sections[2].text == "The third page ends the story."
    assert doc.sha256 == hashlib.sha256(data).hexdigest()


def test_encrypted_pdf_is_refused_but_one_with_an_empty_password_opens():
    err = error_of(md.make_encrypted_pdf(PAGES[:1]), "secret.pdf")
    assert err.code == "encrypted" and "password" in err.message
    doc = parse_document(md.make_encrypted_pdf(PAGES[:1], user_password=""), "open.pdf")
    assert "tides" in doc.sections[0].text


def test_image_only_pdf_is_reported_as_scanned():
    err = error_of(md.make_image_pdf(2), "scan.pdf")
    assert err.code == "scanned"
    assert "scanned PDF" in err.message and "no text layer" in err.message and "OCR" in err.message


def test_lone_surrogates_from_a_pdf_character_map_are_replaced_so_the_text_can_be_encoded():
    doc = parse_document(hostile.surrogate_pdf(), "cmap.pdf")
    assert doc.sections[0].text == "The tide tables of Osterby: \ufffd rising, \ufffd falling."
    doc.sections[0].text.encode("utf-8")  # what the tokenizer, SQL and Telegram need


def test_a_flate_bomb_pdf_is_too_large_not_scanned():
    data = hostile.flate_bomb_pdf(1024)
    assert len(data) < 2 * 2**20  # 1 GiB once unpacked
    err = error_of(data, "bomb.pdf")
    assert err.code == "too_large" and "too large once unpacked" in err.message and "scanned" not in err.message
    assert error_of(md.make_image_pdf(1), "scan.pdf").code == "scanned"  # a real scan is still called one


@pytest.mark.parametrize(
    "data",
    [
        md.make_pdf(PAGES)[:700],
        b"%PDF-1.4\n" + bytes(range(256)) * 8,
        b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n",  # looks complete: pypdf itself must fail
        b"%PDF-1.7\n1 0 obj\n<< /Type /Cat",
    ],
    ids=["truncated", "garbage", "garbage-with-eof", "cut-header"],
)
def test_truncated_or_garbage_pdf_is_corrupt(data):
    assert error_of(data, "broken.pdf").code == "corrupt"


def test_pdf_extension_without_pdf_content_is_corrupt():
    err = error_of(b"just some words", "report.pdf")
    assert err.code == "corrupt" and "not a valid PDF" in err.message


def test_type_comes_from_the_content_when_the_name_disagrees():
    doc = parse_document(md.make_pdf(PAGES), "notes.txt", "text/plain")
    assert doc.kind == "pdf" and doc.pages == 3
    html = parse_document(md.NOISY_HTML.encode(), "page.txt")
    assert html.kind == "html" and "SCRIPT_NOISE" not in html.text


# -- DOCX


def test_docx_headings_become_sections_and_tables_are_included():
    data = md.make_docx(
        "Harbour report",
        [
            ("Introduction", ["Ships arrive at dawn.", "They leave at dusk."]),
            ("Methods", ["We counted ships."]),
        ],
        table=[["Port", "Ships"], ["Hamburg", "42"]],
    )
    doc = parse_document(data, "report.docx")
    assert doc.kind == "docx" and doc.pages is None
    assert [s.heading for s in doc.sections] == ["Introduction", "Methods"]
    assert doc.sections[0].text == "Ships arrive at dawn.\n\nThey leave at dusk."
    assert doc.sections[1].text == "We counted ships.\n\nPort | Ships\nHamburg | 42"


def test_zip_bomb_disguised_as_docx_is_refused_from_its_directory():
    # document.xml inside is not valid WordprocessingML, so reaching python-docx would say "corrupt".
    err = error_of(md.make_zip_bomb(member_mb=48), "invoice.docx")
    assert err.code == "zip_bomb" and "zip bomb" in err.message


def test_docx_whose_total_unpacked_size_is_over_the_limit_is_a_zip_bomb(monkeypatch):
    data = md.make_docx("T", [("H", ["Body text."])])
    monkeypatch.setattr(formats, "ZIP_MAX_TOTAL", 10_000)  # a real .docx unpacks to ~40 KB
    with pytest.raises(DocumentError) as info:
        formats.parse_bytes(data, "big.docx")
    assert info.value.code == "zip_bomb"


def test_truncated_docx_is_corrupt_and_other_office_zips_are_unsupported():
    data = md.make_docx("T", [("H", ["Body text."])])
    assert error_of(data[: len(data) // 2], "cut.docx").code == "corrupt"
    xlsx = md.make_zip({"[Content_Types].xml": b"<Types/>", "xl/workbook.xml": b"<workbook/>"})
    err = error_of(xlsx, "table.docx")
    assert err.code == "unsupported" and "Excel" in err.message
    assert error_of(xlsx, "table.xlsx").code == "unsupported"


# -- HTML and Markdown


def test_html_keeps_main_text_and_headings_and_drops_page_furniture():
    doc = parse_document(md.NOISY_HTML.encode(), "tides.html", "text/html")
    assert doc.kind == "html"
    assert [s.heading for s in doc.sections] == ["Tides of the North Sea", "Spring tides"]
    assert doc.sections[0].text == "Tides rise and fall twice a day. The moon drives them."
    assert doc.sections[1].text == "Spring tides happen at new and full moon.\nPort | Range\nHamburg | 3.6 m"
    for noise in (
        "SCRIPT_NOISE",
        "NAV_NOISE",
        "HEADER_NOISE",
        "FOOTER_NOISE",
        "ASIDE_NOISE",
        "FORM_NOISE",
        "color",
    ):
        assert noise not in doc.text


def test_html_without_main_uses_the_body():
    html = b"<html><head><title>T</title></head><body><nav>Menu</nav><h2>Only</h2><p>Body words.</p></body></html>"
    doc = parse_document(html, "x.htm")
    assert [(s.heading, s.text) for s in doc.sections] == [("Only", "Body words.")]


def test_markdown_headings_split_sections_and_syntax_is_removed():
    doc = parse_document(md.MARKDOWN.encode(), "bread.md")
    assert doc.kind == "markdown"
    assert [s.heading for s in doc.sections] == ["Bread baking", "Kneading", "Proofing"]
    assert doc.sections[0].text == "Bread needs flour, water, salt and yeast."
    assert (
        doc.sections[1].text
        == "Knead for ten minutes until smooth.\nUse 300 g of water.\n\ncode block kept as text"
    )
    assert "front matter" not in doc.text


# -- plain text

TEXT = "Le café est très bon. “Smart quotes” – and an en dash… Prices: 5€ or £4.\nÀ bientôt, garçon!"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "cp1252"])
def test_text_in_common_encodings_is_decoded_exactly(encoding):
    doc = parse_document(TEXT.encode(encoding), "note.txt")
    assert doc.kind == "text" and doc.text == TEXT


@pytest.mark.parametrize("data", [b"", b"  \n\t \r\n"], ids=["zero-bytes", "whitespace"])
def test_empty_file(data):
    err = error_of(data, "empty.txt")
    assert err.code == "empty" and "no text" in err.message


@pytest.mark.parametrize(
    "data",
    [
        bytes(range(256)) * 16,
        b"\x89PNG\r\n\x1a\n" + bytes(200),
        b"plain start\x01\x02\x03\x04\x05\x06\x07\x08",
    ],
    ids=["bytes", "png", "control-chars"],
)
def test_binary_file_with_a_text_extension(data):
    err = error_of(data, "notes.txt")
    assert err.code == "binary" and "binary" in err.message


@pytest.mark.parametrize(
    "data,name",
    [(b"MZ\x90\x00\x03" + bytes(300), "setup.exe"), (b"\x89PNG\r\n\x1a\n" + bytes(200), "photo.png"),
     (b"hello", "photo.jpg")],
)  # fmt: skip
def test_unsupported_types_say_what_is_supported(data, name):
    err = error_of(data, name)
    assert err.code == "unsupported"
    assert "PDF" in err.message and ".docx" in err.message and "Markdown" in err.message


@pytest.mark.parametrize("name, mime", [("notes.rtf", None), ("notes.txt", None), ("notes", "application/rtf")])
def test_rtf_is_named_with_what_to_do_instead(name, mime):
    err = error_of(hostile.RTF, name, mime=mime)
    assert err.code == "unsupported"
    assert err.message == f"{name} is an RTF document. RTF is not supported yet; save it as DOCX, PDF or text " \
                          "and send it again."


def test_a_very_long_file_name_is_shortened_keeping_its_extension():
    doc = parse_document(b"Short text about tides.", "t" * 5000 + ".txt")
    assert len(doc.name) == 200 and doc.name.endswith("t….txt")
    err = error_of(b"", "e" * 5000 + ".md")
    assert err.message == "e" * 196 + "….md contains no text."


# -- limits


def test_too_large_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"word " * 1000)
    err = error_of(path, "big.txt", max_bytes=1000)
    assert err.code == "too_large" and "limit" in err.message
    assert error_of(b"word " * 1000, "big.txt", max_bytes=1000).code == "too_large"


@pytest.mark.timeout(30)  # without the kill the child would sleep for an hour
def test_a_hanging_parse_is_killed_and_reported_as_timeout(monkeypatch):
    monkeypatch.setattr(parse_pkg, "parse_bytes", misbehaving_parsers.sleep_for_an_hour)
    err = error_of(b"hello", "slow.txt", timeout_s=1.5)
    assert err.code == "timeout" and "1.5 s" in err.message


def test_a_parse_over_the_memory_limit_is_reported_as_memory(monkeypatch):
    # The parser allocates (without touching) twice memory_mb: only RLIMIT_AS makes that fail.
    monkeypatch.setattr(parse_pkg, "parse_bytes", misbehaving_parsers.allocate_past_the_memory_limit)
    err = error_of(b"hello", "huge.txt", memory_mb=300)
    assert err.code == "memory" and "300 MB" in err.message


def test_knowledge_imports_neither_torch_nor_telegram():
    code = "import sys, bot.documents; print(sorted(m for m in ('torch', 'telegram') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_underlines_rules_and_doubled_bullets_do_not_reach_the_text():
    from bot.documents.parse.document import clean_text

    assert clean_text("LICENSE\n=======\n\nPreamble\n--------\nThe licenses\n• • one\n* * *\na - b - c") == \
        "LICENSE\n\nPreamble\n\nThe licenses\n• one\n\na - b - c"
    assert clean_text("*" * 1000) == "*" * 1000  # a long run is a document's content, not a rule


def test_running_headers_and_page_numbers_are_not_read_into_sentences():
    from bot.documents.parse.pdf import parse_pdf
    from tests.support.make_docs import make_pdf

    bodies = ["The committee met on Monday and the members", "discussed the budget at length and agreed on",
              "a new plan for the harbour, which the mayor", "signed the same evening."]
    pages = [f"Annual Report 2023\n{body}\nPage {n} of 4" for n, body in enumerate(bodies, 1)]
    sections, pages_count = parse_pdf(make_pdf(pages), "report.pdf")
    assert [s.text for s in sections] == bodies and pages_count == 4
    two = parse_pdf(make_pdf(["Annual Report 2023\nOne.", "Annual Report 2023\nTwo."]), "short.pdf")[0]
    assert [s.text for s in two] == ["Annual Report 2023\nOne.", "Annual Report 2023\nTwo."]  # too few to tell
