"""Build real test documents in memory: PDFs (text, encrypted, image-only), DOCX, zip bombs, HTML, Markdown.

The PDFs are written by hand (a catalog, a page tree, the standard Helvetica font and one content
stream per page), so the tests need no PDF-writing library and every byte is visible here.
"""

from __future__ import annotations

import io
import zipfile


def _pdf_escape(s: str) -> bytes:
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("cp1252")


def write_pdf(objects: list[bytes]) -> bytes:
    """objects[0] becomes object 1 (it must be the catalog); offsets and xref are computed here."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for num, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % num + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def pdf_stream(content: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s>>\nstream\n" % (len(content), extra) + content + b"\nendstream"


def make_pdf(pages: list[str]) -> bytes:
    """A PDF with one page per string; each line of a string is a line of Helvetica text."""
    # objects: 1 catalog, 2 page tree, 3 font, then (page, content) pairs
    objects: list[bytes] = [
        b"",
        b"",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    kids = []
    for text in pages:
        lines = b" ".join(b"(%s) Tj T*" % _pdf_escape(line) for line in text.split("\n"))
        content = b"BT /F1 11 Tf 14 TL 72 760 Td " + lines + b" ET"
        page_num, content_num = len(objects) + 1, len(objects) + 2
        kids.append(page_num)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % content_num
        )
        objects.append(pdf_stream(content))
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids),
        len(kids),
    )
    return write_pdf(objects)


def make_image_pdf(n_pages: int = 2) -> bytes:
    """A PDF whose pages show only an image (what a scanner produces before OCR): no text layer."""
    side = 16
    pixels = bytes((x * 16 + y) % 256 for y in range(side) for x in range(side))  # a gray gradient
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",
        pdf_stream(pixels, b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
                   b"/BitsPerComponent 8 " % (side, side)),
    ]  # fmt: skip
    kids = []
    for _ in range(n_pages):
        page_num, content_num = len(objects) + 1, len(objects) + 2
        kids.append(page_num)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /XObject << /Im1 3 0 R >> >> /Contents %d 0 R >>" % content_num
        )
        objects.append(pdf_stream(b"q 400 0 0 400 100 200 cm /Im1 Do Q"))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids),
        len(kids),
    )
    return write_pdf(objects)


def make_encrypted_pdf(pages: list[str], user_password: str = "secret") -> bytes:
    """`make_pdf` encrypted with pypdf (RC4-128 needs no extra crypto package)."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(pages))))
    writer.encrypt(user_password=user_password, owner_password="owner-pass", algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def make_docx(
    title: str, sections: list[tuple[str, list[str]]], table: list[list[str]] | None = None
) -> bytes:
    """A Word file: a Title, then per (heading, paragraphs) a Heading 1 and its paragraphs, then a table."""
    import docx

    document = docx.Document()
    document.add_heading(title, level=0)
    for heading, paragraphs in sections:
        document.add_heading(heading, level=1)
        for p in paragraphs:
            document.add_paragraph(p)
    if table:
        t = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                t.cell(r, c).text = value
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def make_zip_bomb(member_mb: int = 64) -> bytes:
    """A zip that looks like a .docx (it has word/document.xml) plus one huge, highly compressible member."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        zf.writestr("word/document.xml", '<?xml version="1.0"?><w:document/>')
        block = b"\0" * 2**20
        with zf.open("word/media/padding.bin", "w", force_zip64=True) as f:
            for _ in range(member_mb):
                f.write(block)
    return buf.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


NOISY_HTML = """<!DOCTYPE html>
<html><head><title>Tide Tables</title>
<style>body { color: red; } .nav { display: none }</style>
<script>var tracking = "SCRIPT_NOISE"; function f() { return 1; }</script>
</head><body>
<header><a href="/">HEADER_NOISE home</a></header>
<nav><ul><li>NAV_NOISE one</li><li>NAV_NOISE two</li></ul></nav>
<main>
<h1>Tides of the North Sea</h1>
<p>Tides rise and fall twice a day.
The moon drives them.</p>
<h2>Spring tides</h2>
<p>Spring tides happen at <b>new</b> and full moon.</p>
<table><tr><th>Port</th><th>Range</th></tr><tr><td>Hamburg</td><td>3.6 m</td></tr></table>
<form><input name="q"><button>FORM_NOISE search</button></form>
</main>
<aside>ASIDE_NOISE related links</aside>
<footer>FOOTER_NOISE copyright</footer>
<script>console.log("SCRIPT_NOISE 2")</script>
</body></html>
"""

MARKDOWN = """---
title: front matter that is not content
---
# Bread baking

Bread needs **flour**, water, salt and [yeast](https://example.com/yeast).

## Kneading

Knead for *ten minutes* until smooth.
Use `300 g` of water.

```
code block kept as text
```

Proofing
--------

Let the dough rise for an hour.
"""
