"""The boundary rule for updates (bot.telegram.incoming, bot.safe_text.storable): every string of an update,
nested ones too, loses U+0000 and lone surrogates to U+FFFD, one UTF-16 unit for one, so entity offsets still
hold; an update that needs nothing is passed on as it came."""

from __future__ import annotations

from telegram import Bot, MessageEntity, Update

from bot.safe_text import storable
from bot.telegram.incoming import storable_update

BOT = Bot("1:TOKEN")


def _update(text: str, title: str, first_name: str, file_name: str) -> Update:
    return Update.de_json({"update_id": 5, "message": {
        "message_id": 3, "date": 0, "chat": {"id": -5, "type": "group", "title": title},
        "from": {"id": 7, "is_bot": False, "first_name": first_name}, "text": text,
        "entities": [{"type": "bot_command", "offset": 0, "length": 4}, {"type": "mention", "offset": 9, "length": 8}],
        "reply_to_message": {"message_id": 1, "date": 0, "chat": {"id": -5, "type": "group", "title": title},
                             "document": {"file_id": "F", "file_unique_id": "U", "file_name": file_name}}}}, BOT)


def test_every_string_of_an_update_is_made_storable_and_entities_still_point_at_their_text():
    update = storable_update(_update("/a\x00b x\ud800y @someone", "g\x00rp", "A\ud83dn", "wr\x00en.txt"), BOT)
    message = update.message
    assert message.text == "/a\ufffdb x\ufffdy @someone"
    assert (update.effective_chat.title, update.effective_user.first_name) == ("g\ufffdrp", "A\ufffdn")
    assert message.reply_to_message.document.file_name == "wr\ufffden.txt"
    assert message.parse_entities() == {MessageEntity("bot_command", 0, 4): "/a\ufffdb",
                                        MessageEntity("mention", 9, 8): "@someone"}


def test_an_update_with_nothing_to_mend_is_passed_on_as_it_came():
    update = _update("/ask où? 😀", "group", "Ann", "notes.txt")
    assert storable_update(update, BOT) is update


def test_a_surrogate_pair_becomes_its_character_and_a_lone_one_the_replacement():
    assert storable("\ud83d\ude00 \ud83d \x00") == "😀 \ufffd \ufffd"
    assert storable("plain") == "plain"


def _message(update_id: int, chat_id: int, message_id: int, text: str = "hi", **extra) -> Update:
    return Update.de_json({"update_id": update_id, "message": {
        "message_id": message_id, "date": 0, "chat": {"id": chat_id, "type": "private"},
        "from": {"id": 7, "is_bot": False, "first_name": "Ann"}, "text": text, **extra}}, BOT)


def test_an_update_is_known_by_what_it_is_not_by_its_number():
    from bot.telegram.incoming import update_key

    first = update_key(_message(1, 10, 3))
    assert update_key(_message(1, 11, 3)) != first, "the same number in another chat is another update"
    assert update_key(_message(1, 10, 4)) != first, "a numbering restart: number 1 again, a new message"
    assert update_key(_message(99, 10, 3)) == first, "the same message delivered under another number"
    edit = {"update_id": 5, "edited_message": {"message_id": 3, "date": 0, "edit_date": 9,
                                                "chat": {"id": 10, "type": "private"}, "text": "hi!"}}
    second_edit = {**edit, "edited_message": {**edit["edited_message"], "text": "hi!!"}}
    keys = {update_key(Update.de_json(u, BOT)) for u in (edit, second_edit)}
    assert len(keys) == 2 and first not in keys, "each edit of a message is its own update"
    poll = {"update_id": 6, "poll_answer": {"poll_id": "p1", "option_ids": [0], "option_persistent_ids": ["a"],
                                            "user": {"id": 7, "is_bot": False, "first_name": "Ann"}}}
    assert update_key(Update.de_json(poll, BOT)) == update_key(Update.de_json({**poll, "update_id": 60}, BOT))
    assert update_key(Update.de_json(poll, BOT)).startswith("sha256:")
