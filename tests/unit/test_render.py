"""bot.telegram.render: Markdown -> Telegram HTML and splitting; every output is checked by the fake Telegram's
validator."""

from __future__ import annotations

import random
import re

import pytest

from bot.telegram.render import markdown_to_telegram_html, split_message, truncate_utf16, utf16_len
from tests.support.fake_telegram import TelegramHTMLError, parse_telegram_html


def render(md: str) -> tuple[str, str, list[dict]]:
    """HTML, the plain text Telegram would show, and its entities; fails the test on invalid HTML."""
    html = markdown_to_telegram_html(md)
    plain, entities = parse_telegram_html(html)
    return html, plain, entities


def kinds(entities: list[dict]) -> list[str]:
    return [e["type"] for e in entities]


def test_validator_rejects_what_telegram_rejects() -> None:
    # the same validator judges render's output, so it must itself refuse bad HTML
    for bad in ["<br>", "<b>x", "x</b>", "<b><i>x</b></i>", "a < b", "a & b", "&nbsp;", "<span>x</span>",
                "<code><b>x</b></code>", "<a>x</a>"]:
        with pytest.raises(TelegramHTMLError):
            parse_telegram_html(bad)
    assert parse_telegram_html("<b>a</b> &lt;&amp;&gt; &#65;")[0] == "a <&> A"


def test_code_block_escapes_lt_and_amp_and_keeps_language() -> None:
    md = "Here:\n```python\nif a < b && c > d:\n    print('<b>&amp;</b>')\n```\ndone"
    html, plain, entities = render(md)
    assert '<pre><code class="language-python">' in html
    assert plain == "Here:\nif a < b && c > d:\n    print('<b>&amp;</b>')\ndone"
    pre = [e for e in entities if e["type"] == "pre"]
    assert pre and pre[0]["language"] == "python"


def test_inline_code_keeps_markup_literal() -> None:
    html, plain, entities = render("use `**not bold** <x>` here")
    assert plain == "use **not bold** <x> here"
    assert kinds(entities) == ["code"]


def test_bold_italic_strike_nested() -> None:
    html, plain, entities = render("**bold *and italic* text** and __b__ _i_ ~~gone~~ ***both***")
    assert plain == "bold and italic text and b i gone both"
    assert sorted(kinds(entities)) == ["bold"] * 3 + ["italic"] * 3 + ["strikethrough"]
    assert "<b>bold <i>and italic</i> text</b>" in html


def test_intraword_delimiters_stay_literal() -> None:
    _, plain, entities = render("snake_case_name and 2*3*4 and a * b * c")
    assert plain == "snake_case_name and 2*3*4 and a * b * c"
    assert entities == []


def test_links_show_their_address_and_are_never_anchors_with_other_text() -> None:
    md = ("[docs](https://example.com/?a=1&b=2) [**me**](tg://user?id=1) [x](javascript:alert(1)) "
          "[https://e.org/a_b](https://e.org/a_b) [the refund portal](https://evil.example/steal)")
    html, plain, entities = render(md)
    assert "<a " not in html and not [e for e in entities if e["type"] == "text_link"]
    assert plain == ("docs (https://example.com/?a=1&b=2) me (tg://user?id=1) [x](javascript:alert(1)) "
                     "https://e.org/a_b the refund portal (https://evil.example/steal)")
    assert kinds(entities) == ["bold"]  # the label keeps its emphasis; the address is plain text


def test_bare_url_underscores_are_not_italics() -> None:
    _, plain, entities = render("see https://en.wikipedia.org/wiki/_foo_bar_ now")
    assert plain == "see https://en.wikipedia.org/wiki/_foo_bar_ now"
    assert entities == []


def test_headings_lists_and_quotes() -> None:
    md = "## Plan\n- one\n* two **x**\n  - nested\n1. first\n2) second\n> quoted *it*\n> more\nafter"
    html, plain, entities = render(md)
    assert plain == "Plan\n• one\n• two x\n  • nested\n1. first\n2. second\nquoted it\nmore\nafter"
    assert html.startswith("<b>Plan</b>\n")
    assert "blockquote" in kinds(entities)


def test_html_typed_by_the_model_is_escaped() -> None:
    html, plain, entities = render('<b>not bold</b> & "quotes" <script>x</script> &amp;')
    assert plain == '<b>not bold</b> & "quotes" <script>x</script> &amp;'
    assert entities == []


def test_emoji_and_offsets_in_utf16() -> None:
    _, plain, entities = render("😀 **x**")
    assert entities == [{"type": "bold", "offset": 3, "length": 1}]
    assert utf16_len("😀") == 2 and utf16_len("a😀é") == 4


@pytest.mark.parametrize("md", [
    "**unclosed bold", "*a **b", "```py\ndef f(x):\n    return x <", "text `unclosed code", "[link](https://x",
    "~~strike", "> quote **bo", "```\n", "**", "***", "__init__", "a ** b", "1. **x",
])
def test_partial_markdown_is_valid_html(md: str) -> None:
    render(md)


def test_every_prefix_of_a_reply_is_valid_html() -> None:
    # what the streaming edits and a cut mid-stream look like: every prefix must be accepted by Telegram
    reply = ("# Answer\nHere is **bold _and italic_** text, `code <x>` and [a link](https://e.com/a_b).\n\n"
             "```python\nfor i in range(3):\n    print(i < 2 & 1)\n```\n"
             "- item *one*\n> a ~~quote~~\nEnd & bye 😀")
    for n in range(len(reply) + 1):
        render(reply[:n])
    assert render(reply)[1].endswith("End & bye 😀")


def test_random_markdown_soup_is_always_valid() -> None:
    rng = random.Random(7)
    atoms = ["*", "**", "_", "__", "~~", "`", "```", "\n", "[", "](", ")", "https://x.io/", "<", ">", "&",
             "# ", "- ", "> ", "1. ", "word", " ", "😀", "&amp;", "tg://u", "\\"]
    for _ in range(400):
        render("".join(rng.choice(atoms) for _ in range(rng.randint(1, 40))))


def _long_reply() -> str:
    rng = random.Random(1)
    words = ["alpha", "beta", "**gamma**", "delta", "😀", "<tag>", "&", "co.", "_zeta_", "eta!", "theta?"]

    def para(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    code = "\n".join(f"x_{i} = {i} < {i + 1} and 'a' & 'b'  # 😀" for i in range(300))
    return "\n\n".join([para(300), f"```python\n{code}\n```", para(60), "- one\n- two", para(800)])


def _content(text: str) -> str:
    """Text without whitespace and fence markers: what must survive a split."""
    return re.sub(r"\s+|```(?:python)?", "", text)


@pytest.mark.parametrize("limit", [4096, 700])
def test_split_message_parts_fit_and_keep_everything(limit: int) -> None:
    text = _long_reply()
    assert utf16_len(markdown_to_telegram_html(text)) > 3 * limit
    parts = split_message(text, limit)
    assert len(parts) > 1
    for part in parts:
        html, plain, _ = render(part)
        assert utf16_len(html) <= limit
        assert part.count("```") % 2 == 0  # fences balanced per part
    assert _content("".join(parts)) == _content(text)


def test_split_prefers_paragraphs_and_keeps_code_language() -> None:
    first, second = "word " * 300, "other " * 300
    parts = split_message(f"{first.strip()}\n\n{second.strip()}", 2000)
    assert parts == [first.strip(), second.strip()]

    code = "```rust\n" + "\n".join(f"let v{i} = {i};" for i in range(400)) + "\n```"
    parts = split_message(code, 1000)
    assert len(parts) > 2
    for part in parts:
        assert part.startswith("```rust\n") and part.endswith("\n```")
        assert '<code class="language-rust">' in render(part)[0]
        # cut between lines, never inside one
        assert all(re.fullmatch(r"let v\d+ = \d+;", line) for line in part.split("\n")[1:-1])


def test_split_counts_emoji_as_two_units() -> None:
    parts = split_message("😀" * 5000, 4096)
    assert [utf16_len(p) for p in parts] == [4096, 4096, 1808]
    assert "".join(parts) == "😀" * 5000


def test_split_short_and_blank() -> None:
    assert split_message("  hello  ") == ["hello"]
    assert split_message(" \n ") == []
    with pytest.raises(ValueError, match="too small"):
        split_message("```python\n" + "x = 1\n" * 50, 20)


def test_truncate_never_splits_a_surrogate_pair() -> None:
    cut = truncate_utf16("a" + "😀" * 10, 6)
    assert cut == "a😀😀…" and utf16_len(cut) <= 6
    assert truncate_utf16("short", 10) == "short"


def test_lone_surrogates_are_replaced_so_every_part_can_be_sent() -> None:
    text = "Osterby: \ud800 rising, \udfff falling. " * 300 + "😀"
    parts = split_message(text, 1000)
    assert len(parts) > 1 and all(utf16_len(markdown_to_telegram_html(p)) <= 1000 for p in parts)
    for part in parts:
        part.encode("utf-8")  # what sending it as JSON needs
        render(part)
    assert "Osterby: \ufffd rising, \ufffd falling." in parts[0] and parts[-1].endswith("😀")
    assert truncate_utf16("tide \ud800" * 10, 12) == "tide \ufffdtide …"


def test_heading_underlines_go_and_the_title_shows_bold():
    from bot.telegram.render import markdown_to_telegram_html as html

    assert html("Results\n=======\nAll good.") == "<b>Results</b>\nAll good."
    assert html("Setup\n-----\nRun it.") == "<b>Setup</b>\nRun it."
    assert "=" not in html("text\n\n=====\n\nmore")  # an underline under nothing
    assert html("one\n\n---\n\ntwo") == "one\n\n——————\n\ntwo"  # a rule between paragraphs stays a rule


def test_a_bullet_written_twice_shows_once():
    from bot.telegram.render import markdown_to_telegram_html as html

    assert html("- • Grilled chicken\n* ◦ Salad") == "• Grilled chicken\n• Salad"
    assert html("• • Rice") == "• Rice"


@pytest.mark.parametrize(("so_far", "shown"), [
    ("Menu:\n* **Grilled Chi", "Menu:"),  # a bold still open, and nothing but the bullet before it
    ("Menu:\n* **Grilled Chicken:** with ri", "Menu:\n* **Grilled Chicken:** with ri"),
    ("Use `pip inst", "Use"),
    ("See [the docs](https://exa", "See"),
    ("Menu:\n*", "Menu:"),
    ("Title\n===", "Title"),
    ("snake_case names and 2*3 stay", "snake_case names and 2*3 stay"),
    ("see https://x.org/a_b and *it", "see https://x.org/a_b and"),
    ("```python\nx = 2 **", "```python\nx = 2 **"),  # inside code nothing is held back
])
def test_a_reply_being_written_holds_back_what_it_has_not_closed(so_far, shown):
    from bot.telegram.render import streaming_view

    assert streaming_view(so_far) == shown


def test_every_prefix_of_a_markdown_reply_renders_without_its_markers():
    from bot.telegram.render import markdown_to_telegram_html as html
    from bot.telegram.render import streaming_view

    reply = "Here is the menu:\n* **Grilled Chicken:** with *rice*\n* `Salad` of the day\n\nEnjoy!"
    for n in range(1, len(reply) + 1):
        rendered = html(streaming_view(reply[:n]))
        assert "*" not in rendered and "`" not in rendered, reply[:n]
