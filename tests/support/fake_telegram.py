"""A fake Telegram Bot API server for tests.

The real python-telegram-bot talks to it over real HTTP, exactly as it talks to api.telegram.org:

    async with FakeTelegram(token="123:ABC") as fake:
        app = Application.builder().token("123:ABC").base_url(fake.base_url) \
            .base_file_url(fake.base_file_url).build()

`fake.base_url` is `f"{fake.url}/bot"` (PTB appends the token), `fake.base_file_url` is
`f"{fake.url}/file/bot"`.

It keeps what a test wants to assert on: per chat, every message the bot sent with every version of its text
(edit history, parse mode, reply markup, monotonic timestamps), every request (`calls(method)`), and it acts
like Telegram where bots usually get it wrong: HTML parse mode is validated (supported tags only, nesting,
entities), the 4096 UTF-16 unit limit, "message is not modified", unknown chats/messages, the 20 MB download
limit, injected faults (`fail_next`, e.g. 429 with retry_after) and hooks run after a call, before the bot
hears back (`after_call`). Tests play the users with
`send_user_message`, `send_user_document`, `press_button`, and `set_member` and `edit_user_message` (in
fake_members.py); the bot receives them through getUpdates long polling. The token is never logged (aiohttp's
access log is off, errors never echo the path).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, NoReturn

from aiohttp import web

from tests.support.fake_members import ChatMembers, UserEdits

MAX_TEXT_UTF16 = 4096
MAX_CAPTION_UTF16 = 1024
DEFAULT_MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024  # the real Bot API refuses getFile above 20 MB


def utf16_len(s: str) -> int:
    """Length as Telegram counts it: UTF-16 code units (an emoji outside the BMP counts 2)."""
    return len(s.encode("utf-16-le")) // 2


# ----------------------------------------------------------------------------------------------------------
# HTML parse mode, as Telegram understands it

_ENTITY_OF_TAG = {
    "b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline", "ins": "underline",
    "s": "strikethrough", "strike": "strikethrough", "del": "strikethrough", "span": "spoiler",
    "tg-spoiler": "spoiler", "a": "text_link", "code": "code", "pre": "pre", "blockquote": "blockquote",
}
_NAMED_ENTITY = re.compile(r"&(lt|gt|amp|quot);")
_NUMERIC_ENTITY = re.compile(r"&#(?:([0-9]{1,7})|[xX]([0-9a-fA-F]{1,6}));")


class TelegramHTMLError(ValueError):
    """Not valid Telegram HTML; the message is what Telegram puts after "can't parse entities: "."""


class TelegramHTMLParser(HTMLParser):
    """Parses Telegram-flavoured HTML into plain text and MessageEntity dicts, or raises TelegramHTMLError."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=False)  # we check every entity ourselves
        self.source = source
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", source)]
        self.parts: list[str] = []
        self.utf16_pos = 0
        self.stack: list[tuple[str, dict[str, str | None], int]] = []  # (tag, attrs, start offset)
        self.entities: list[dict[str, Any]] = []

    # -- helpers
    def _abs_pos(self) -> int:
        line, col = self.getpos()
        return self._line_starts[line - 1] + col

    def _fail(self, what: str, pos: int | None = None) -> NoReturn:
        if pos is not None:
            what += f" at byte offset {len(self.source[:pos].encode())}"
        raise TelegramHTMLError(what)

    def _emit(self, text: str) -> None:
        self.parts.append(text)
        self.utf16_pos += utf16_len(text)

    # -- text
    def handle_data(self, data: str) -> None:
        for ch in "<&":
            i = data.find(ch)
            if i >= 0:
                kind = "start tag" if ch == "<" else "character entity"
                self._fail(f"Unexpected {kind} {data[i:i + 8]!r}", self._abs_pos() + i)
        self._emit(data)

    def handle_entityref(self, name: str) -> None:
        pos = self._abs_pos()
        m = _NAMED_ENTITY.match(self.source, pos)
        if m is None:
            self._fail(f"Unsupported HTML entity '&{name}'", pos)
        self._emit({"lt": "<", "gt": ">", "amp": "&", "quot": '"'}[m.group(1)])

    def handle_charref(self, name: str) -> None:
        pos = self._abs_pos()
        m = _NUMERIC_ENTITY.match(self.source, pos)
        code = int(m.group(1), 10) if m and m.group(1) else int(m.group(2), 16) if m else -1
        if not (0 < code <= 0x10FFFF) or 0xD800 <= code <= 0xDFFF:
            self._fail(f"Invalid character entity '&#{name}'", pos)
        self._emit(chr(code))

    # -- tags
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        pos, a = self._abs_pos(), dict(attrs)
        if tag not in _ENTITY_OF_TAG:
            self._fail(f'Unsupported start tag "{tag}"', pos)
        if tag == "span" and a.get("class") != "tg-spoiler":
            self._fail('Tag "span" must have class "tg-spoiler"', pos)
        if tag == "a" and not a.get("href"):
            self._fail('Tag "a" must have attribute "href"', pos)
        open_tags = [t for t, _, _ in self.stack]
        if "code" in open_tags or ("pre" in open_tags and tag != "code"):
            self._fail(f'Tag "{tag}" can\'t be nested in a code entity', pos)  # code and pre hold text only
        if tag == "code" and open_tags and open_tags[-1] == "pre" and self.utf16_pos > self.stack[-1][2]:
            self._fail('Tag "code" must be the only child of "pre"', pos)
        if tag == "a" and "a" in open_tags or tag == "blockquote" and "blockquote" in open_tags:
            self._fail(f'Tag "{tag}" can\'t be nested in itself', pos)
        self.stack.append((tag, a, self.utf16_pos))

    def handle_endtag(self, tag: str) -> None:
        pos = self._abs_pos()
        if not self.stack:
            self._fail("Unexpected end tag", pos)
        open_tag, a, start = self.stack.pop()
        if open_tag != tag:
            self._fail(f'Can\'t find end tag corresponding to start tag "{open_tag}"')
        length = self.utf16_pos - start
        if length == 0:
            return  # Telegram drops empty entities
        entity: dict[str, Any] = {"type": _ENTITY_OF_TAG[tag], "offset": start, "length": length}
        if tag == "a":
            entity["url"] = a["href"]
        elif tag == "blockquote" and "expandable" in a:
            entity["type"] = "expandable_blockquote"
        elif tag == "code" and self.stack and self.stack[-1][0] == "pre":
            lang = (a.get("class") or "").removeprefix("language-")
            self.stack[-1][1]["language"] = lang  # the language belongs to the enclosing pre entity
            return
        elif tag == "pre" and a.get("language"):
            entity["language"] = a["language"]
        self.entities.append(entity)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._fail(f'Unsupported start tag "{tag}/"', self._abs_pos())

    def handle_comment(self, data: str) -> None:
        self._fail("Unexpected comment", self._abs_pos())

    def handle_decl(self, decl: str) -> None:
        self._fail("Unexpected declaration", self._abs_pos())

    def handle_pi(self, data: str) -> None:
        self._fail("Unexpected processing instruction", self._abs_pos())

    def unknown_decl(self, data: str) -> None:
        self._fail("Unexpected declaration", self._abs_pos())


def parse_telegram_html(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Telegram HTML -> (plain text, entities). Raises TelegramHTMLError like Telegram's 400."""
    # html.parser forgives a few things Telegram does not (a lone "&" at the very end, "</>"): check first.
    for m in re.finditer(r"<[^<>]*>|&", text):
        bad_amp = m.group() == "&" and not (_NAMED_ENTITY.match(text, m.start())
                                            or _NUMERIC_ENTITY.match(text, m.start()))
        if bad_amp or re.fullmatch(r"</\s*>", m.group()):
            offset = len(text[:m.start()].encode())
            raise TelegramHTMLError(f"Unexpected {m.group()!r} at byte offset {offset}")
    parser = TelegramHTMLParser(text)
    parser.feed(text)
    parser.close()
    if parser.stack:
        raise TelegramHTMLError(f'Can\'t find end tag corresponding to start tag "{parser.stack[-1][0]}"')
    entities = sorted(parser.entities, key=lambda e: (e["offset"], -e["length"]))
    return "".join(parser.parts), entities


def validate_telegram_html(text: str) -> str:
    """Returns the plain text Telegram would show, or raises TelegramHTMLError."""
    return parse_telegram_html(text)[0]


# ----------------------------------------------------------------------------------------------------------
# State


@dataclass
class Version:
    """One version of a message's text (or caption): the first send, then one per edit."""

    text: str  # after entity parsing, what the user sees
    raw: str  # as the bot sent it
    parse_mode: str | None
    entities: list[dict[str, Any]]
    reply_markup: dict[str, Any] | None
    at: float  # time.monotonic()
    date: int  # unix time


@dataclass
class FakeFile:
    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    file_name: str | None = None
    mime_type: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"file_id": self.file_id, "file_unique_id": self.file_unique_id,
                             "file_size": len(self.data)}
        if self.file_name:
            d["file_name"] = self.file_name
        if self.mime_type:
            d["mime_type"] = self.mime_type
        return d


@dataclass
class FakeMessage:
    """A message in a chat, sent by the bot or by a (test) user."""

    chat_id: int
    message_id: int
    sender: dict[str, Any]
    kind: str  # "text" | "document" | "photo" | "voice" | "sticker"
    versions: list[Version]
    reply_to_message_id: int | None = None
    message_thread_id: int | None = None
    file: FakeFile | None = None
    deleted: bool = False

    @property
    def from_bot(self) -> bool:
        return bool(self.sender.get("is_bot"))

    @property
    def text(self) -> str:
        """Current visible text (the caption for documents and photos)."""
        return self.versions[-1].text

    @property
    def html(self) -> str:
        return self.versions[-1].raw

    @property
    def parse_mode(self) -> str | None:
        return self.versions[-1].parse_mode

    @property
    def reply_markup(self) -> dict[str, Any] | None:
        return self.versions[-1].reply_markup

    @property
    def edits(self) -> int:
        return len(self.versions) - 1

    @property
    def texts(self) -> list[str]:
        return [v.text for v in self.versions]

    @property
    def times(self) -> list[float]:
        return [v.at for v in self.versions]


@dataclass
class Call:
    """One request the bot made: method, decoded parameters, the HTTP status we answered."""

    method: str
    params: dict[str, Any]
    status: int
    at: float


@dataclass
class _Fault:
    status: int
    description: str
    parameters: dict[str, Any] | None
    count: int


class ApiError(Exception):
    def __init__(self, status: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.status, self.description, self.parameters = status, description, parameters


def _bad(description: str) -> ApiError:
    return ApiError(400, f"Bad Request: {description}")


# How PTB (form encoding, every non-string value JSON-encoded) and JSON clients send each field.
_INT_FIELDS = {"chat_id", "message_id", "offset", "limit", "timeout", "reply_to_message_id",
               "message_thread_id", "cache_time", "from_chat_id", "user_id", "max_connections"}
_JSON_FIELDS = {"reply_markup", "allowed_updates", "commands", "scope", "entities", "caption_entities",
                "reply_parameters", "link_preview_options"}
_BOOL_FIELDS = {"disable_notification", "protect_content", "show_alert", "drop_pending_updates",
                "disable_web_page_preview", "allow_sending_without_reply", "disable_content_type_detection"}


def _coerce(name: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if name in _INT_FIELDS:
        try:
            return int(value)
        except ValueError:
            return value  # "@channelusername"
    if name in _JSON_FIELDS:
        try:
            return json.loads(value)
        except ValueError:
            raise _bad(f"can't parse {name} JSON object") from None
    if name in _BOOL_FIELDS:
        return value.lower() in ("true", "1")
    return value


_CHAT_ACTIONS = {"typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
                 "upload_document", "choose_sticker", "find_location", "record_video_note",
                 "upload_video_note"}
_COMMAND_RE = re.compile(r"/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?")
_MENTION_RE = re.compile(r"(?<![\w@])@[A-Za-z][A-Za-z0-9_]{3,31}")


# ----------------------------------------------------------------------------------------------------------
# The server


class FakeTelegram(ChatMembers, UserEdits):
    """A fake Bot API on 127.0.0.1 (random port); an async context manager, or `start_in_thread()`."""

    def __init__(self, token: str = "123456:TEST-TOKEN", *, bot_username: str = "docent_test_bot",
                 bot_name: str = "Docent", max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES) -> None:
        bot_id = token.split(":", 1)[0]
        if not bot_id.isdigit():
            raise ValueError("token must look like '<bot id>:<secret>'")
        self._token = token
        self.max_download_bytes = max_download_bytes
        self.bot_user = {"id": int(bot_id), "is_bot": True, "first_name": bot_name, "username": bot_username,
                         "can_join_groups": True, "can_read_all_group_messages": False,
                         "supports_inline_queries": False}
        self.webhook_url = ""
        self.commands: dict[str, list[dict[str, Any]]] = {}  # scope/language key -> commands
        self._lock = threading.RLock()  # tests may drive us from another thread than the server's loop
        self._chats: dict[int, dict[str, Any]] = {}
        self._members: dict[int, dict[int, tuple[str, str | None, str | None]]] = {}  # see ChatMembers
        self._messages: dict[int, dict[int, FakeMessage]] = {}
        self._next_message_id: dict[int, int] = {}
        self._files: dict[str, FakeFile] = {}
        self._files_by_path: dict[str, FakeFile] = {}
        self._updates: list[dict[str, Any]] = []
        self._pushed: dict[int, dict[str, Any]] = {}  # every update ever queued, for deliver_again
        self._numbering = 0  # how many times the update numbering restarted
        self._allowed_updates: set[str] | None = None
        self._update_ids = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._callback_ids = itertools.count(1)
        self._open_callbacks: set[str] = set()
        self._calls: list[Call] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._after: dict[str, list[Callable[[dict[str, Any], Any], None]]] = {}  # see after_call
        self._before: dict[str, list[Callable[[dict[str, Any]], Any]]] = {}  # see before_call
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        # api_send_message serves "sendMessage" (method names ignore case); calls keep the camelCase name
        self._methods: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {}
        for name in dir(self):
            if name.startswith("api_"):
                first, *rest = name.removeprefix("api_").split("_")
                camel = first + "".join(w.title() for w in rest)
                self._methods[camel.lower()] = (camel, getattr(self, name))

    # -- lifecycle
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/bot"

    @property
    def base_file_url(self) -> str:
        return f"{self.url}/file/bot"

    async def start(self) -> FakeTelegram:
        self._loop, self._wakeup, self._closing = asyncio.get_running_loop(), asyncio.Event(), False
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file)
        # no access log: it would print the path, and the path holds the token
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def stop(self) -> None:
        self._closing = True
        self._wake()  # long polls answer now instead of holding the shutdown
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @classmethod
    def start_in_thread(cls, **kwargs: Any) -> FakeTelegram:
        """Runs the server on its own event loop in a daemon thread (for a bot in a subprocess); `close()`."""
        fake = cls(**kwargs)
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(fake.start())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                errors.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(fake.stop())
            loop.close()

        fake._thread = threading.Thread(target=run, name="fake-telegram", daemon=True)
        fake._thread.start()
        started.wait(10)
        if errors:
            raise errors[0]
        return fake

    def close(self) -> None:
        """Stops a server started with start_in_thread()."""
        if self._thread is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeTelegram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        """Wakes every pending getUpdates; safe from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not loop:
            loop.call_soon_threadsafe(self._wake)
            return
        if self._wakeup is not None:
            self._wakeup.set()
        self._wakeup = asyncio.Event()

    # -- fault injection
    def fail_next(self, method: str, status: int = 429, retry_after: int | None = None, count: int = 1,
                  description: str | None = None) -> None:
        """The next `count` calls of `method` answer `status` (429 carries retry_after, default 1 s); status 0
        drops the connection without an answer (the client sees a network error, as httpx.ReadError)."""
        parameters = None
        if status == 429:
            retry_after = 1 if retry_after is None else retry_after
            parameters = {"retry_after": retry_after}
            description = description or f"Too Many Requests: retry after {retry_after}"
        elif description is None:
            description = {400: "Bad Request: injected failure",
                           403: "Forbidden: bot was blocked by the user",
                           500: "Internal Server Error"}.get(status, f"Error {status}")
        with self._lock:
            self._faults.setdefault(method.lower(), []).append(_Fault(status, description, parameters, count))

    def before_call(self, method: str, hook: Callable[[dict[str, Any]], Awaitable[None] | None]) -> None:
        """`hook(params)` runs before each call of `method` is carried out, and what it returns is awaited: a test
        can hold a call back (as a slow network would) while the bot goes on."""
        with self._lock:
            self._before.setdefault(method.lower(), []).append(hook)

    def after_call(self, method: str, hook: Callable[[dict[str, Any], Any], None]) -> None:
        """`hook(params, result)` runs after each successful call of `method`, before the bot gets the answer:
        what the call did is done, and the bot does not know it yet (a test can kill the bot there)."""
        with self._lock:
            self._after.setdefault(method.lower(), []).append(hook)

    # -- acting as users
    def add_chat(self, chat_id: int, chat_type: str = "private", *, title: str | None = None,
                 username: str | None = None, first_name: str | None = None) -> dict[str, Any]:
        with self._lock:
            chat = self._chats.get(chat_id)
            if chat is None:
                chat = {"id": chat_id, "type": chat_type}
                if chat_type == "private":
                    chat["first_name"] = first_name or f"User{chat_id}"
                    if username:
                        chat["username"] = username
                else:
                    chat["title"] = title or f"Group {chat_id}"
                self._chats[chat_id] = chat
                self._messages[chat_id] = {}
                self._next_message_id[chat_id] = 1
            return chat

    def _user(self, user_id: int, username: str | None, first_name: str | None) -> dict[str, Any]:
        user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name or f"User{user_id}",
                                "language_code": "en"}
        if username:
            user["username"] = username
        return user

    def _auto_entities(self, text: str) -> list[dict[str, Any]]:
        entities = []
        command = _COMMAND_RE.match(text)
        if command:
            entities.append({"type": "bot_command", "offset": 0, "length": utf16_len(command.group())})
        for m in _MENTION_RE.finditer(text, command.end() if command else 0):
            entities.append({"type": "mention", "offset": utf16_len(text[:m.start()]),
                             "length": utf16_len(m.group())})
        return entities

    def _new_message(self, chat_id: int, sender: dict[str, Any], kind: str, version: Version, *,
                     reply_to: int | None = None, thread: int | None = None,
                     file: FakeFile | None = None) -> FakeMessage:
        with self._lock:
            message_id = self._next_message_id[chat_id]
            self._next_message_id[chat_id] += 1
            msg = FakeMessage(chat_id, message_id, sender, kind, [version], reply_to, thread, file)
            self._messages[chat_id][message_id] = msg
            return msg

    def _push_update(self, kind: str, payload: dict[str, Any]) -> int:
        with self._lock:
            update_id = next(self._update_ids)
            self._updates.append({"update_id": update_id, kind: payload})
            self._pushed[update_id] = copy.deepcopy(self._updates[-1])
        self._wake()
        return update_id

    def deliver_again(self, update_id: int, renumber: bool = False) -> int:
        """Queue update `update_id` once more, as Telegram does when unsure it was received; with `renumber`
        under a new number (polling confirms numbers below its offset, so a copy must be numbered anew to
        arrive: a duplicate that only the update's content can recognise). Returns the number it goes under."""
        with self._lock:
            update = copy.deepcopy(self._pushed[update_id])
            if renumber:
                update["update_id"] = next(self._update_ids)
                self._pushed[update["update_id"]] = copy.deepcopy(update)
            self._updates.append(update)
        self._wake()
        return update["update_id"]

    def restart_update_numbering(self, start: int = 1) -> None:
        """Number the next updates from `start` again, as the Bot API does for a new token."""
        with self._lock:
            self._update_ids = itertools.count(start)
            self._numbering += 1  # a poll begun before (the old token's) confirms nothing of the new numbering

    def send_user_message(self, chat_id: int, user_id: int, text: str, chat_type: str = "private",
                          reply_to_message_id: int | None = None,
                          entities: list[dict[str, Any]] | None = None,
                          username: str | None = None, title: str | None = None,
                          first_name: str | None = None, message_thread_id: int | None = None) -> int:
        """A user writes `text` in the chat; returns the update_id. Commands and @mentions get entities."""
        self.add_chat(chat_id, chat_type, title=title, username=username, first_name=first_name)
        ents = self._auto_entities(text) if entities is None else entities
        with self._lock:
            if reply_to_message_id is not None and reply_to_message_id not in self._messages[chat_id]:
                raise ValueError(f"no message {reply_to_message_id} in chat {chat_id}")
            version = Version(text, text, None, ents, None, time.monotonic(), int(time.time()))
            msg = self._new_message(chat_id, self._user(user_id, username, first_name), "text", version,
                                    reply_to=reply_to_message_id, thread=message_thread_id)
            payload = self._message_dict(msg)
        return self._push_update("message", payload)

    def send_user_document(self, chat_id: int, user_id: int, filename: str, data: bytes, mime_type: str,
                           caption: str | None = None, chat_type: str = "private",
                           username: str | None = None,
                           title: str | None = None, reply_to_message_id: int | None = None) -> int:
        """A user uploads a document (bytes served by getFile + the file URL); returns the update_id."""
        self.add_chat(chat_id, chat_type, title=title, username=username)
        with self._lock:
            file = self._store_file(data, "documents", filename, mime_type)
            caption = caption or ""
            version = Version(caption, caption, None, [], None, time.monotonic(), int(time.time()))
            msg = self._new_message(chat_id, self._user(user_id, username, None), "document", version,
                                    reply_to=reply_to_message_id, file=file)
            payload = self._message_dict(msg)
        return self._push_update("message", payload)

    def send_user_media(self, chat_id: int, user_id: int, kind: str, caption: str | None = None,
                        chat_type: str = "private", reply_to_message_id: int | None = None) -> int:
        """A user sends a photo, a voice message or a sticker (a few bytes stand in for the media)."""
        if kind not in ("photo", "voice", "sticker"):
            raise ValueError(f"unsupported media kind {kind!r}")
        self.add_chat(chat_id, chat_type)
        mime = {"photo": "image/jpeg", "voice": "audio/ogg", "sticker": "image/webp"}[kind]
        with self._lock:
            file = self._store_file(b"\x00media", kind + "s", None, mime)
            caption = caption if kind != "sticker" else None
            text = caption or ""
            version = Version(text, text, None, self._auto_entities(text) if text else [], None, time.monotonic(),
                              int(time.time()))
            msg = self._new_message(chat_id, self._user(user_id, None, None), kind, version,
                                    reply_to=reply_to_message_id, file=file)
            payload = self._message_dict(msg)
        return self._push_update("message", payload)

    def take_updates(self) -> list[dict[str, Any]]:
        """The queued updates, removed from the queue: what Telegram would POST to a webhook instead."""
        with self._lock:
            updates, self._updates[:] = list(self._updates), []
        return updates

    def press_button(self, chat_id: int, user_id: int, message_id: int, callback_data: str,
                     username: str | None = None) -> int:
        """A user presses an inline button of a bot message; returns the update_id."""
        with self._lock:
            msg = self._messages.get(chat_id, {}).get(message_id)
            if msg is None or msg.deleted or not msg.from_bot:
                raise ValueError(f"no bot message {message_id} in chat {chat_id}")
            query_id = str(next(self._callback_ids))
            self._open_callbacks.add(query_id)
            payload = {"id": query_id, "from": self._user(user_id, username, None),
                       "message": self._message_dict(msg), "chat_instance": f"ci{chat_id}",
                       "data": callback_data}
        return self._push_update("callback_query", payload)

    # -- reading state
    def messages(self, chat_id: int, include_deleted: bool = False) -> list[FakeMessage]:
        """Snapshots of the messages the bot sent in the chat, oldest first."""
        with self._lock:
            return [copy.deepcopy(m) for m in self._messages.get(chat_id, {}).values()
                    if m.from_bot and (include_deleted or not m.deleted)]

    def user_messages(self, chat_id: int) -> list[FakeMessage]:
        with self._lock:
            return [copy.deepcopy(m) for m in self._messages.get(chat_id, {}).values() if not m.from_bot]

    def last_message(self, chat_id: int) -> FakeMessage | None:
        msgs = self.messages(chat_id)
        return msgs[-1] if msgs else None

    def last_text(self, chat_id: int) -> str | None:
        msg = self.last_message(chat_id)
        return msg.text if msg else None

    def calls(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [copy.deepcopy(c) for c in self._calls
                    if method is None or c.method.lower() == method.lower()]

    def pending_updates(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._updates)

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Polls `predicate()` until it is truthy (returned) or raises TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            await asyncio.sleep(0.01)

    def wait_for_sync(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            time.sleep(0.01)
        return value

    # -- HTTP
    async def _handle_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        method, handler = self._methods.get(method.lower(), (method, None))
        if request.match_info["token"] != self._token:
            return self._error(ApiError(401, "Unauthorized"))
        params: dict[str, Any] = dict(request.query)
        try:
            if request.content_type == "application/json":
                body = await request.json()
                params.update(body if isinstance(body, dict) else {})
            elif request.method == "POST":
                params.update((k, v) for k, v in (await request.post()).items())
            params = {k: _coerce(k, v) for k, v in params.items()}
        except ApiError as exc:
            return self._record(method, params, self._error(exc))
        except ValueError:
            return self._record(method, params, self._error(_bad("can't parse request body")))
        if handler is None:
            return self._record(method, params, self._error(ApiError(404, "Not Found")))
        with self._lock:
            before = list(self._before.get(method.lower(), ()))
        for hook in before:  # before faults: a hook may inject one for the call it holds
            if (held := hook(params)) is not None:
                await held
        with self._lock:
            faults = self._faults.get(method.lower())
            fault = faults[0] if faults else None
            if fault is not None:
                fault.count -= 1
                if fault.count <= 0:
                    faults.pop(0)
        if fault is not None and fault.status == 0:
            with self._lock:  # recorded with status 0: no answer was sent
                self._calls.append(Call(method, dict(params), 0, time.monotonic()))
            if request.transport is not None:
                request.transport.abort()  # no answer at all: the bot's HTTP client sees the connection drop
            return web.Response()
        if fault is not None:
            return self._record(method, params,
                                self._error(ApiError(fault.status, fault.description, fault.parameters)))
        try:
            result = handler(params)
            if asyncio.iscoroutine(result):
                result = await result
        except ApiError as exc:
            return self._record(method, params, self._error(exc))
        with self._lock:
            hooks = list(self._after.get(method.lower(), ()))
        for hook in hooks:
            hook(params, result)
        return self._record(method, params, web.json_response({"ok": True, "result": result}))

    def _record(self, method: str, params: dict[str, Any], response: web.Response) -> web.Response:
        shown = {k: f"<file {v.filename}>" if isinstance(v, web.FileField) else v
                 for k, v in params.items()}
        with self._lock:
            self._calls.append(Call(method, shown, response.status, time.monotonic()))
        return response

    @staticmethod
    def _error(exc: ApiError) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": exc.status, "description": exc.description}
        if exc.parameters:
            body["parameters"] = exc.parameters
        return web.json_response(body, status=exc.status)

    async def _handle_file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self._token:
            return web.Response(status=401, text="Unauthorized")
        with self._lock:
            file = self._files_by_path.get(request.match_info["path"])
        if file is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=file.data, content_type=file.mime_type or "application/octet-stream")

    # -- helpers for the API methods
    def _chat(self, params: dict[str, Any]) -> int:
        chat_id = params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise _bad("chat_id is empty")
        with self._lock:
            if not isinstance(chat_id, int) or chat_id not in self._chats:
                raise _bad("chat not found")
        return chat_id

    def _message(self, chat_id: int, message_id: Any, missing: str) -> FakeMessage:
        msg = self._messages[chat_id].get(message_id) if isinstance(message_id, int) else None
        if msg is None or msg.deleted:
            raise _bad(missing)
        return msg

    def _formatted(self, params: dict[str, Any], key: str, limit: int, too_long: str) -> Version:
        raw = params.get(key)
        raw = "" if raw is None else str(raw)
        parse_mode = params.get("parse_mode") or None
        entities = params.get("entities" if key == "text" else "caption_entities") or []
        if parse_mode is not None and parse_mode.lower() != "html":
            raise _bad(f"unsupported parse_mode {parse_mode!r} (the fake supports HTML only)")
        text = raw
        if parse_mode is not None:
            try:
                text, entities = parse_telegram_html(raw)
            except TelegramHTMLError as exc:
                raise _bad(f"can't parse entities: {exc}") from None
        if key == "text" and not text.strip():
            raise _bad("message text is empty")
        if utf16_len(text) > limit:
            raise _bad(too_long)
        markup = params.get("reply_markup")
        if markup is not None and not isinstance(markup, dict):
            raise _bad("can't parse reply keyboard markup JSON object")
        return Version(text, raw, parse_mode, entities, markup, time.monotonic(), int(time.time()))

    def _reply_to(self, chat_id: int, params: dict[str, Any]) -> int | None:
        reply = params.get("reply_parameters") or {}
        message_id = reply.get("message_id", params.get("reply_to_message_id"))
        if message_id is None:
            return None
        allow = reply.get("allow_sending_without_reply", params.get("allow_sending_without_reply", False))
        msg = self._messages[chat_id].get(message_id) if isinstance(message_id, int) else None
        if msg is None or msg.deleted:
            if allow:
                return None
            raise _bad("message to be replied not found")
        return message_id

    def _store_file(self, data: bytes, folder: str, filename: str | None, mime_type: str | None) -> FakeFile:
        n = next(self._file_ids)
        suffix = ""
        if filename and "." in filename:
            suffix = re.sub(r"[^A-Za-z0-9.]", "", "." + filename.rsplit(".", 1)[-1])
        file = FakeFile(f"FILE{n:06d}", f"U{n:06d}", f"{folder}/file_{n}{suffix}", data, filename, mime_type)
        self._files[file.file_id] = file
        self._files_by_path[file.file_path] = file
        return file

    def _message_dict(self, msg: FakeMessage, nested: bool = False) -> dict[str, Any]:
        v = msg.versions[-1]
        d: dict[str, Any] = {"message_id": msg.message_id, "from": dict(msg.sender),
                             "chat": dict(self._chats[msg.chat_id]), "date": msg.versions[0].date}
        if msg.message_thread_id is not None:
            d["message_thread_id"] = msg.message_thread_id
        if msg.kind == "text":
            d["text"] = v.text
            if v.entities:
                d["entities"] = v.entities
        else:
            if msg.kind == "document":
                d["document"] = msg.file.as_dict()
            elif msg.kind == "photo":
                d["photo"] = [{**msg.file.as_dict(), "width": 320, "height": 240}]
                d["photo"][0].pop("file_name", None)
                d["photo"][0].pop("mime_type", None)
            elif msg.kind == "voice":
                d["voice"] = {**msg.file.as_dict(), "duration": 3}
            elif msg.kind == "sticker":
                d["sticker"] = {**msg.file.as_dict(), "width": 512, "height": 512, "is_animated": False,
                                "is_video": False, "type": "regular", "emoji": "👍"}
                d["sticker"].pop("mime_type", None)
            if v.text:
                d["caption"] = v.text
                if v.entities:
                    d["caption_entities"] = v.entities
        if v.reply_markup:
            d["reply_markup"] = v.reply_markup
        if msg.edits:
            d["edit_date"] = v.date
        if msg.reply_to_message_id is not None and not nested:
            d["reply_to_message"] = self._message_dict(self._messages[msg.chat_id][msg.reply_to_message_id],
                                                       nested=True)
        return d

    # -- the API methods
    def api_get_me(self, params: dict[str, Any]) -> dict[str, Any]:
        return dict(self.bot_user)

    async def api_get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook_url:
            raise ApiError(409, "Conflict: can't use getUpdates method while webhook is active; "
                                "use deleteWebhook to delete the webhook first")
        offset, limit = params.get("offset") or 0, min(max(params.get("limit") or 100, 1), 100)
        timeout = max(float(params.get("timeout") or 0), 0.0)
        if "allowed_updates" in params:
            allowed = params["allowed_updates"] or []
            with self._lock:
                self._allowed_updates = set(allowed) if allowed else None
        deadline = time.monotonic() + timeout
        numbering = self._numbering
        while True:
            with self._lock:
                if offset > 0 and numbering == self._numbering:  # confirms every update below the offset
                    self._updates = [u for u in self._updates if u["update_id"] >= offset]
                if self._allowed_updates is not None:  # Telegram drops updates of unwanted types
                    self._updates = [u for u in self._updates
                                     if set(u) - {"update_id"} <= self._allowed_updates]
                ready = self._updates[offset:] if offset < 0 else self._updates
                ready = copy.deepcopy(ready[:limit])
                wakeup = self._wakeup
            remaining = deadline - time.monotonic()
            if ready or remaining <= 0 or self._closing or wakeup is None:
                return ready
            try:
                await asyncio.wait_for(wakeup.wait(), remaining)
            except TimeoutError:
                pass

    def api_delete_webhook(self, params: dict[str, Any]) -> bool:
        with self._lock:
            self.webhook_url = ""
            if params.get("drop_pending_updates"):
                self._updates.clear()
        return True

    def api_set_webhook(self, params: dict[str, Any]) -> bool:
        url = params.get("url") or ""
        if url and not url.startswith("https://"):
            raise _bad("bad webhook: An HTTPS URL must be provided for webhook")
        self.webhook_url = url
        return True

    def api_get_webhook_info(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return {"url": self.webhook_url, "has_custom_certificate": False,
                    "pending_update_count": len(self._updates)}

    @staticmethod
    def _commands_key(params: dict[str, Any]) -> str:
        return json.dumps([params.get("scope") or {"type": "default"}, params.get("language_code") or ""])

    def api_set_my_commands(self, params: dict[str, Any]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise _bad("commands must be a list of at most 100 BotCommand")
        for c in commands:
            if not isinstance(c, dict) or not re.fullmatch(r"[a-z0-9_]{1,32}", str(c.get("command", ""))):
                raise _bad("BOT_COMMAND_INVALID")
            if not 1 <= len(str(c.get("description", ""))) <= 256:
                raise _bad("BOT_COMMAND_DESCRIPTION_INVALID")
        with self._lock:
            self.commands[self._commands_key(params)] = commands
        return True

    def api_get_my_commands(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.commands.get(self._commands_key(params), []))

    def api_delete_my_commands(self, params: dict[str, Any]) -> bool:
        with self._lock:
            self.commands.pop(self._commands_key(params), None)
        return True

    def api_send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = self._chat(params)
        version = self._formatted(params, "text", MAX_TEXT_UTF16, "message is too long")
        with self._lock:
            reply_to = self._reply_to(chat_id, params)
            msg = self._new_message(chat_id, self.bot_user, "text", version, reply_to=reply_to,
                                    thread=params.get("message_thread_id"))
            return self._message_dict(msg)

    def api_edit_message_text(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("inline_message_id"):
            raise _bad("the fake does not support inline messages")
        chat_id = self._chat(params)
        version = self._formatted(params, "text", MAX_TEXT_UTF16, "message is too long")
        with self._lock:
            msg = self._message(chat_id, params.get("message_id"), "message to edit not found")
            if not msg.from_bot:
                raise _bad("message can't be edited")
            if msg.kind != "text":
                raise _bad("there is no text in the message to edit")
            return self._edit(msg, version)

    def _edit(self, msg: FakeMessage, version: Version) -> dict[str, Any]:
        cur = msg.versions[-1]
        same = (version.text, version.entities, version.reply_markup) == (cur.text, cur.entities,
                                                                          cur.reply_markup)
        if same:
            raise _bad("message is not modified: specified new message content and reply markup are exactly "
                       "the same as a current content and reply markup of the message")
        msg.versions.append(version)
        return self._message_dict(msg)

    def api_edit_message_reply_markup(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = self._chat(params)
        markup = params.get("reply_markup")
        with self._lock:
            msg = self._message(chat_id, params.get("message_id"), "message to edit not found")
            if not msg.from_bot:
                raise _bad("message can't be edited")
            cur = msg.versions[-1]
            new = Version(cur.text, cur.raw, cur.parse_mode, cur.entities, markup or None, time.monotonic(),
                          int(time.time()))
            return self._edit(msg, new)

    def api_delete_message(self, params: dict[str, Any]) -> bool:
        chat_id = self._chat(params)
        with self._lock:
            self._message(chat_id, params.get("message_id"), "message to delete not found").deleted = True
        return True

    def api_send_chat_action(self, params: dict[str, Any]) -> bool:
        self._chat(params)
        if params.get("action") not in _CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        return True

    def api_answer_callback_query(self, params: dict[str, Any]) -> bool:
        with self._lock:
            query_id = str(params.get("callback_query_id"))
            if query_id not in self._open_callbacks:
                raise _bad("query is too old and response timeout expired or query ID is invalid")
            self._open_callbacks.discard(query_id)
        if len(str(params.get("text") or "")) > 200:
            raise _bad("MESSAGE_TOO_LONG")
        return True

    def api_get_file(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            file = self._files.get(str(params.get("file_id")))
        if file is None:
            raise _bad("invalid file_id")
        if len(file.data) > self.max_download_bytes:
            raise _bad("file is too big")
        return {"file_id": file.file_id, "file_unique_id": file.file_unique_id, "file_size": len(file.data),
                "file_path": file.file_path}

    async def _send_file(self, params: dict[str, Any], key: str) -> dict[str, Any]:
        chat_id = self._chat(params)
        version = self._formatted(params, "caption", MAX_CAPTION_UTF16, "message caption is too long")
        value = params.get(key)
        if isinstance(value, str) and value.startswith("attach://"):
            value = params.get(value.removeprefix("attach://"))
        with self._lock:
            if isinstance(value, web.FileField):
                data = value.file.read()
                if not data:
                    raise _bad("file must be non-empty")
                file = self._store_file(data, "documents" if key == "document" else "photos", value.filename,
                                        value.content_type if key == "document" else "image/jpeg")
            elif isinstance(value, str) and value in self._files:
                file = self._files[value]
            else:
                raise _bad("wrong file identifier/HTTP URL specified")
            reply_to = self._reply_to(chat_id, params)
            msg = self._new_message(chat_id, self.bot_user, key, version, reply_to=reply_to,
                                    thread=params.get("message_thread_id"), file=file)
            return self._message_dict(msg)

    async def api_send_document(self, params: dict[str, Any]) -> dict[str, Any]:
        return await self._send_file(params, "document")

    async def api_send_photo(self, params: dict[str, Any]) -> dict[str, Any]:
        return await self._send_file(params, "photo")


async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    """pytest fixture body: `fake = pytest.fixture(fake_telegram)` in a conftest, or use `async with`."""
    async with FakeTelegram() as fake:
        yield fake
