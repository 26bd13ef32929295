"""bot.text.reply_text: a generated chat reply carries no source line or web address it made up."""

from __future__ import annotations

from bot.text.reply_text import strip_invented_sources


def test_an_invented_source_line_and_address_are_taken_out():
    reply = "The capital of Italy is Rome.\n\nSource: www.wikipedia.com/wiki/Italia_italiana"
    assert strip_invented_sources(reply) == "The capital of Italy is Rome."
    reply = "Rome (see https://en.wikipedia.org/wiki/Rome) is old.\n**References:**\n- [1] rome.org/history"
    assert strip_invented_sources(reply) == "Rome is old."
    assert "http" not in strip_invented_sources("Visit http://example.com for more.")


def test_ordinary_text_and_lists_are_kept():
    assert strip_invented_sources("Sources say Rome is old.") == "Sources say Rome is old."
    assert strip_invented_sources("Steps:\n1. Open it.\n2. Close it.") == "Steps:\n1. Open it.\n2. Close it."


def test_a_streaming_reply_holds_back_a_line_that_may_become_a_source_line():
    assert strip_invented_sources("Rome is the capital.\nSour", partial=True) == "Rome is the capital."
    assert strip_invented_sources("Rome is the capital.\n**Refer", partial=True) == "Rome is the capital."
    assert strip_invented_sources("Rome is the capital.\nIt is", partial=True) == "Rome is the capital.\nIt is"


def test_a_reply_without_sources_is_left_exactly_as_written():
    for text in ("odd  spacing , here ()\n\n\n- ", "Steps:\n1. Open it.\n2. Close it.  "):
        assert strip_invented_sources(text) == text
        assert strip_invented_sources(text, partial=True) == text
