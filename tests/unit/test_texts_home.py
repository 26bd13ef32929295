"""Every sentence the bot says lives in its texts modules (bot/telegram/texts.py, training_texts.py, file_texts.py):
read from the source of every module of bot/ (AST, nothing is imported), a string literal or f-string with a
letter in it, given to a call that puts text in a chat, is a sentence written somewhere else.

What it sees: the text arguments of the Bot API calls the bot makes (reply_text, send_message, edit_message_text,
edit_text, a button press's answer, a photo's caption), of the messages it edits as they are written
(StreamingMessage.start/update/finish, StatusLine.set/done), the command menu (BotCommand) and why a file is
refused (DocumentError's message). What it cannot see: a sentence that reaches a chat as data (a constant, an
exception's message, a field of an outcome), such as the notes bot/services/assistant.py still holds (issue 29:
moved by its owner); review keeps those in the texts modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEXTS = {"bot/telegram/texts.py", "bot/telegram/training_texts.py", "bot/telegram/file_texts.py"}

SAYS = {"reply_text", "send_message", "edit_message_text", "edit_text", "answer", "send_photo",  # Bot API
        "start", "update", "finish", "set", "done",  # StreamingMessage, StatusLine
        "BotCommand", "DocumentError"}  # the menu; a file refused (its message is shown to its sender)
TEXT_KEYWORDS = {"text", "caption", "description"}
WORDS = re.compile(r"[A-Za-z]{2}")


def _literal_text(node: ast.AST) -> str | None:
    """The words of a string literal or an f-string's literal parts; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    return None


def sentences_outside(path: Path) -> list[str]:
    """`line: text` for each sentence written into a call that says it, in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name not in SAYS:
            continue
        args = [*node.args, *(k.value for k in node.keywords if k.arg in TEXT_KEYWORDS)]
        if name in ("BotCommand", "DocumentError"):
            args = args[1:]  # a command's name or an error's code is not a sentence, what follows is
        for arg in args:
            text = _literal_text(arg)
            if text is not None and WORDS.search(text):
                found.append((node.lineno, f"{node.lineno}: {text!r}"))
    return [said for _, said in sorted(found)]


def test_every_sentence_the_bot_says_is_in_the_texts_modules():
    outside = {}
    for path in sorted((ROOT / "bot").rglob("*.py")):
        name = str(path.relative_to(ROOT))
        if name not in TEXTS and (found := sentences_outside(path)):
            outside[name] = found
    assert outside == {}


def test_the_scan_sees_a_sentence_written_into_a_reply_an_edit_a_button_answer_and_the_menu(tmp_path):
    module = tmp_path / "handler.py"
    module.write_text(
        "async def f(message, query, stream, name):\n"
        "    await message.reply_text('Hello there!')\n"
        "    await query.answer(f'Sorry {name}, no.')\n"
        "    await stream.finish(text='Done.')\n"
        "    await message.reply_text(texts.HELLO)\n"  # from the texts module: fine
        "    await stream.update('…', urgent=True)\n"  # no words: a placeholder
        "    raise DocumentError('empty', f'{name} is empty.')\n"
        "    return BotCommand('start', 'say hello')\n")
    assert sentences_outside(module) == ["2: 'Hello there!'", "3: 'Sorry , no.'", "4: 'Done.'", "7: ' is empty.'",
                                         "8: 'say hello'"]
