"""PDF text that a reader of the page never sees, taken out of a page's content before its text is extracted
(bot.documents.parse.pdf): text drawn in the invisible render mode (3, or 7: a clipping path only), text too small
to read (an effective size under MIN_SIZE points: a zero font size, a squashed text matrix or horizontal scale),
white text on a page that has painted nothing beneath it, and text that starts outside the page's visible box.

A scanned page's OCR layer is invisible text over the page's image: on a page that draws an image, invisible text
is kept, since it is the only text such a page has. What is hidden is emptied in place (the show operator stays,
with no text), so the positions of the text around it do not change. Form XObjects the page draws are read with
the same rules, each as the page draws it first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

MIN_SIZE = 1.0  # points: smaller text cannot be read on screen or on paper
_SHOW = {b"Tj", b"TJ", b"'", b'"'}
_FILL_PAINT = {b"f", b"F", b"f*", b"B", b"B*", b"b", b"b*", b"sh"}
_INVISIBLE_MODES = {3, 7}
_STROKE_ONLY_MODES = {1, 5}
Matrix = tuple[float, float, float, float, float, float]
_IDENTITY: Matrix = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)


def _times(m: Matrix, n: Matrix) -> Matrix:
    """m × n for PDF's row-vector matrices [a b 0; c d 0; e f 1]."""
    a, b, c, d, e, f = m
    p, q, r, s, t, u = n
    return (a * p + b * r, a * q + b * s, c * p + d * r, c * q + d * s, e * p + f * r + t, e * q + f * s + u)


def _white(operands: list) -> bool:
    """Whether a colour's components (gray, RGB or CMYK, read by their count) are white."""
    try:
        values = [float(v) for v in operands]
    except (TypeError, ValueError):
        return False  # a pattern or a named colour: not white
    if len(values) == 4:
        return all(v <= 0.02 for v in values)  # CMYK: no ink
    return len(values) in (1, 3) and all(v >= 0.98 for v in values)


@dataclass(frozen=True)
class _State:
    """The graphics state that decides whether text shows (q/Q save and restore it)."""

    ctm: Matrix = _IDENTITY
    fill_white: bool = False
    stroke_white: bool = False
    mode: int = 0
    size: float = 12.0
    hscale: float = 1.0
    leading: float = 0.0


class _Page:
    """One content stream read through: its text matrices, its state, and what it has painted so far."""

    def __init__(self, box: tuple[float, float, float, float], has_image: bool, state: _State):
        self.box, self.has_image, self.state = box, has_image, state
        self.stack: list[_State] = []
        self.tm = self.tlm = _IDENTITY
        self.painted = False  # something not white filled before: white text may stand on it

    def hidden(self, chars: int) -> bool:
        """Whether text shown now (`chars` characters) is hidden from a reader of the page."""
        st = self.state
        if st.mode in _INVISIBLE_MODES:
            return not self.has_image
        m = _times(self.tm, st.ctm)
        size = abs(st.size) * math.sqrt(abs(m[0] * m[3] - m[1] * m[2]) * abs(st.hscale))
        if size < MIN_SIZE:
            return True
        white = st.stroke_white if st.mode in _STROKE_ONLY_MODES else st.fill_white
        if white and not self.painted:
            return True
        x, y = m[4], m[5]
        x0, y0, x1, y1 = self.box
        width = chars * size
        return x >= x1 or y >= y1 + size or x + width <= x0 or y + size <= y0

    def step(self, operands: list, op: bytes) -> None:
        """Follow one operator's effect on the state (show operators are judged by the caller first)."""
        st = self.state
        if op == b"q":
            self.stack.append(st)
        elif op == b"Q":
            self.state = self.stack.pop() if self.stack else st
        elif op == b"cm" and len(operands) == 6:
            self.state = replace(st, ctm=_times(_matrix(operands), st.ctm))
        elif op == b"BT":
            self.tm = self.tlm = _IDENTITY
        elif op == b"Tm" and len(operands) == 6:
            self.tm = self.tlm = _matrix(operands)
        elif op in (b"Td", b"TD") and len(operands) == 2:
            tx, ty = float(operands[0]), float(operands[1])
            if op == b"TD":
                self.state = replace(st, leading=-ty)
            self.tm = self.tlm = _times((1.0, 0.0, 0.0, 1.0, tx, ty), self.tlm)
        elif op in (b"T*", b"'", b'"'):
            self.tm = self.tlm = _times((1.0, 0.0, 0.0, 1.0, 0.0, -self.state.leading), self.tlm)
        elif op == b"TL" and operands:
            self.state = replace(st, leading=float(operands[0]))
        elif op == b"Tf" and len(operands) == 2:
            self.state = replace(st, size=float(operands[1]))
        elif op == b"Tz" and operands:
            self.state = replace(st, hscale=float(operands[0]) / 100.0)
        elif op == b"Tr" and operands:
            self.state = replace(st, mode=int(operands[0]))
        elif op in (b"g", b"rg", b"k", b"sc", b"scn"):
            self.state = replace(st, fill_white=_white(operands))
        elif op in (b"G", b"RG", b"K", b"SC", b"SCN"):
            self.state = replace(st, stroke_white=_white(operands))
        elif op in _FILL_PAINT and not st.fill_white or op in (b"INLINE IMAGE", b"Do"):
            self.painted = True


def _matrix(operands: list) -> Matrix:
    a, b, c, d, e, f = (float(v) for v in operands)
    return a, b, c, d, e, f


def _chars(operands: list, op: bytes) -> int:
    """How many characters (bytes, near enough) a show operator draws."""
    shown = operands[0] if op == b"TJ" else operands[-1] if operands else b""
    if op == b"TJ":
        return sum(len(item) for item in shown if isinstance(item, bytes | str))
    return len(shown) if isinstance(shown, bytes | str) else 0


def _emptied(operands: list, op: bytes) -> list:
    """The operands of a show operator with its text taken out."""
    from pypdf.generic import ArrayObject, ByteStringObject

    if op == b"TJ":
        return [ArrayObject()]
    return [*operands[:-1], ByteStringObject(b"")]


def _xobjects(resources) -> dict:
    try:
        return dict(resources["/XObject"].get_object()) if resources and "/XObject" in resources else {}
    except Exception:  # noqa: BLE001 - damaged resources: no XObjects
        return {}


def _draws_image(operations: list, xobjects: dict) -> bool:
    """Whether a content stream draws an image (inline, or an image XObject)."""
    for operands, op in operations:
        if op == b"INLINE IMAGE":
            return True
        if op == b"Do" and operands and operands[0] in xobjects:
            if xobjects[operands[0]].get_object().get("/Subtype") == "/Image":
                return True
    return False


def _filter(operations: list, page: _Page, xobjects: dict, seen: set[int], reader) -> int:
    """Empty the hidden text of `operations` in place (forms drawn on the way too); how many were emptied."""
    emptied = 0
    for i, (operands, op) in enumerate(operations):
        try:
            if op in _SHOW and page.hidden(_chars(operands, op)):
                operations[i] = (_emptied(operands, op), op)
                emptied += 1
            if op == b"Do" and operands and operands[0] in xobjects:
                emptied += _filter_form(xobjects[operands[0]], page, seen, reader)
            page.step(operands, op)
        except (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError):
            continue  # a malformed operator: skipped, as a viewer would
    return emptied


def _filter_form(ref, page: _Page, seen: set[int], reader) -> int:
    """Filter a form XObject, the first time the page draws it, with the state it is drawn in."""
    from pypdf.generic import ContentStream

    form = ref.get_object()
    key = id(form)
    if key in seen or form.get("/Subtype") != "/Form":
        return 0
    seen.add(key)
    content = ContentStream(form, reader, "bytes")
    ctm = page.state.ctm
    if "/Matrix" in form:
        ctm = _times(_matrix(list(form["/Matrix"])), ctm)
    inner = _Page(page.box, page.has_image, replace(page.state, ctm=ctm))
    inner.painted = page.painted
    resources = form.get("/Resources")
    emptied = _filter(content.operations, inner, _xobjects(resources.get_object() if resources else None), seen,
                      reader)
    if emptied:
        form.set_data(content.get_data())
    return emptied


def drop_hidden_text(page, reader) -> int:
    """Empty, in `page` (a pypdf PageObject), every text a reader would not see; how many texts were emptied."""
    from pypdf.generic import ArrayObject, ContentStream, NameObject, StreamObject

    contents = page.get("/Contents")
    if contents is None or not isinstance(contents.get_object(), ArrayObject | StreamObject):
        return 0
    # strings as bytes, as pypdf's own extraction reads them: the font's character map decodes them later
    content = ContentStream(contents.get_object(), reader, "bytes")
    resources = page.get("/Resources")
    xobjects = _xobjects(resources.get_object() if resources else None)
    box = tuple(float(v) for v in page.cropbox)
    page_state = _Page((min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])),
                       _draws_image(content.operations, xobjects), _State())
    emptied = _filter(content.operations, page_state, xobjects, set(), reader)
    # in memory only: the page is read, never written (pypdf's replace_contents wants a writer); set even when
    # nothing was emptied, so that text extraction takes the parsed operations instead of parsing them again
    page[NameObject("/Contents")] = content
    return emptied
