"""Chat members and edited messages for the fake Bot API (mixed into FakeTelegram).

Tests say who owns or administers a group with `set_member`; the bot asks with getChatMember,
answered as Telegram does (a user the test never named is a plain "member"). `edit_user_message` plays a
user editing a message they sent: the text gets a new version and the bot receives an `edited_message`
update, with `edit_date`, as from Telegram.
"""

from __future__ import annotations

import time
from typing import Any

STATUSES = ("creator", "administrator", "member", "restricted", "left", "kicked")
# what getChatMember carries for an administrator (PTB needs every field); the fake's admins may do all of it
_ADMIN_RIGHTS = ("can_be_edited", "can_manage_chat", "can_delete_messages", "can_manage_video_chats",
                 "can_restrict_members", "can_promote_members", "can_change_info", "can_invite_users",
                 "can_post_stories", "can_edit_stories", "can_delete_stories")


class ChatMembers:
    """The part of FakeTelegram about who is in a chat."""

    _members: dict[int, dict[int, tuple[str, str | None, str | None]]]  # chat -> user -> (status, names)

    def set_member(self, chat_id: int, user_id: int, status: str = "member", *, chat_type: str = "supergroup",
                   username: str | None = None, first_name: str | None = None) -> None:
        """Make `user_id` hold `status` ("creator", "administrator", "member", ...) in the chat."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        self.add_chat(chat_id, chat_type)
        with self._lock:
            self._members.setdefault(chat_id, {})[user_id] = (status, username, first_name)

    def _member(self, chat_id: int, user_id: int) -> dict[str, Any]:
        status, username, first_name = self._members.get(chat_id, {}).get(user_id, ("member", None, None))
        member: dict[str, Any] = {"status": status, "user": self._user(user_id, username, first_name)}
        if status == "creator":
            member["is_anonymous"] = False
        elif status == "administrator":
            member.update({"is_anonymous": False, **dict.fromkeys(_ADMIN_RIGHTS, True)})
        return member

    def api_get_chat_member(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = self._chat(params)
        user_id = params.get("user_id")
        if not isinstance(user_id, int):
            from tests.support.fake_telegram import _bad

            raise _bad("invalid user_id specified")
        with self._lock:
            return self._member(chat_id, user_id)


class UserEdits:
    """The part of FakeTelegram about users editing what they said."""

    def edit_user_message(self, chat_id: int, message_id: int, text: str) -> int:
        """The user who sent message `message_id` changes its text; returns the update_id."""
        from tests.support.fake_telegram import Version

        with self._lock:
            msg = self._messages.get(chat_id, {}).get(message_id)
            if msg is None or msg.deleted or msg.from_bot or msg.kind != "text":
                raise ValueError(f"no text message {message_id} from a user in chat {chat_id}")
            msg.versions.append(Version(text, text, None, self._auto_entities(text), None, time.monotonic(),
                                        int(time.time())))
            payload = self._message_dict(msg)
        return self._push_update("edited_message", payload)
