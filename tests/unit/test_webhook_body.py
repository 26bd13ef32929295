"""bot.telegram.webhook.parse_update_body: what a webhook request must carry to count as an update."""

from __future__ import annotations

import pytest

from bot.telegram.webhook import parse_update_body


def test_an_update_is_its_json_object():
    assert parse_update_body(b'{"update_id": 7, "message": {"text": "h\\u00e9"}}')["update_id"] == 7


@pytest.mark.parametrize("body", [b'{"update_id": 5, "message": {', b"\xff\xfe{}", b"", b"[1]", b'"x"', b"null",
                                  b'{"message": {}}', b'{"update_id": "5"}'])
def test_anything_else_is_a_value_error(body):
    with pytest.raises(ValueError):
        parse_update_body(body)
