"""/forget through Telegram: the document goes, and so does every turn that drew on it, from the prompt history
the model gets and from the training export, after a restart too; only the uploader or an admin may forget a
group's document. Real MiniLM encoder, tiny random chat model, SQLite, the fake Bot API."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.db import chat_queries
from bot.telegram.texts import NOT_FROM_DOCUMENTS
from tests.support.bot_harness import bot_settings, final_reply, running_bot
from tests.support.fake_telegram import FakeTelegram
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
ALICE, BOB, CAROL, DAVE = 3001, 3002, 3003, 3004
GROUP = -100300
MEMO = b"The launch code of Project Nightjar is ZEBRA-7731.\n"
SECRET = "ZEBRA-7731"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf", max_seq_len=2048).path


def _settings(tmp_path, fake, model, **telegram):
    from bot.config import env_cache_dir

    s = bot_settings(tmp_path, fake, model, **telegram)
    s.cache_dir = env_cache_dir()  # the real encoder, pulled once for the whole suite
    s.model.context_tokens = 1024
    s.training.use_chats_by_default = True  # every chat's turns are training data unless it opts out
    return s


def _texts(fake, chat):
    return [m.text for m in fake.messages(chat)]


async def _prompt_history(app, chat_id: int) -> str:
    """Everything the assistant puts before the next message of the chat: system prompt and stored turns."""
    services = app.bot_data["services"]
    async with services.sessions() as s:
        conversation = await chat_queries.current_conversation(s, chat_id)
    return "\n".join(m["content"] for m in await services.assistant.store.conversation(chat_id, conversation.id))


async def _conversation_training_data(app) -> str:
    """The text of the conversation examples a retraining run would export now."""
    plan = await app.bot_data["services"].training.plan()
    return "\n".join(m["content"] for e in plan.train + plan.heldout if e.source == "conversation"
                     for m in e.messages)


async def test_forget_keeps_every_answer_drawn_from_the_document_out_of_prompts_and_training(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = _settings(tmp_path, fake, tiny_model)
        async with running_bot(settings) as app:
            fake.send_user_message(ALICE, ALICE, "Hi there")  # before any document: stays in the history
            await fake.wait_for(lambda: final_reply(fake, ALICE), 60)
            fake.send_user_document(ALICE, ALICE, "memo.txt", MEMO, "text/plain")
            await fake.wait_for(lambda: any(t.startswith("Indexed memo.txt") for t in _texts(fake, ALICE)), 60)
            fake.send_user_message(ALICE, ALICE, "/ask What is the launch code of Project Nightjar?")
            answer = await fake.wait_for(lambda: final_reply(fake, ALICE, after=1), 60)
            assert SECRET in answer.text  # the one sentence there is, as the answer's source or the closest quote
            fake.send_user_message(ALICE, ALICE, "Tell me a short joke about cats.")  # its prompt held the answer
            await fake.wait_for(lambda: final_reply(fake, ALICE, after=2), 60)
            assert SECRET in await _prompt_history(app, ALICE)
            assert SECRET in await _conversation_training_data(app)

            fake.send_user_message(ALICE, ALICE, "/forget memo.txt")
            await fake.wait_for(lambda: "Forgot memo.txt" in (fake.last_text(ALICE) or ""), 10)
            history = await _prompt_history(app, ALICE)
            assert SECRET not in history and "launch code" not in history and "joke" not in history
            assert "Hi there" in history  # what did not draw on the document stays
            exported = await _conversation_training_data(app)
            assert SECRET not in exported and "launch code" not in exported and "Hi there" in exported
            assert fake.last_text(ALICE) == ("Forgot memo.txt: 1 part, and 2 answers that used it are no longer in "
                                             "this chat's history or training data.")

            fake.send_user_message(ALICE, ALICE, "What was the launch code?")  # a chat reply now: no documents
            reply = await fake.wait_for(lambda: final_reply(fake, ALICE, after=3), 60)
            assert SECRET not in reply.text
            assert reply.text.endswith(NOT_FROM_DOCUMENTS)  # it says it is not from the (forgotten) documents

        async with running_bot(settings) as app:  # the marks are in SQL
            history = await _prompt_history(app, ALICE)
            assert SECRET not in history and "launch code of Project" not in history
            assert "Hi there" in history and "What was the launch code?" in history
            assert SECRET not in await _conversation_training_data(app)


async def test_only_the_uploader_and_admins_may_forget_a_groups_document(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = _settings(tmp_path, fake, tiny_model, admins=[DAVE])
        fake.set_member(GROUP, CAROL, "administrator")
        async with running_bot(settings):
            for name in ("memo.txt", "plan.txt", "notes.txt"):
                fake.send_user_document(GROUP, ALICE, name, MEMO + name.encode(), "text/plain",
                                        chat_type="supergroup", username="alice")
                await fake.wait_for(lambda n=name: any(t.startswith(f"Indexed {n}") for t in _texts(fake, GROUP)), 60)

            async def forget(user: int, name: str) -> str:
                before = len(fake.messages(GROUP))
                fake.send_user_message(GROUP, user, f"/forget {name}", chat_type="supergroup")
                return (await fake.wait_for(lambda: fake.messages(GROUP)[before:], 10))[0].text

            assert await forget(BOB, "memo.txt") == \
                "Only @alice, who uploaded memo.txt, or an admin of this chat can forget it."
            assert (await forget(CAROL, "memo.txt")).startswith("Forgot memo.txt")  # the group's administrator
            assert (await forget(DAVE, "plan.txt")).startswith("Forgot plan.txt")  # one of the bot's admins
            assert (await forget(ALICE, "notes.txt")).startswith("Forgot notes.txt")  # the uploader
        assert any(c.params.get("user_id") == BOB for c in fake.calls("getChatMember"))


async def test_docs_numbers_each_chats_documents_from_1_and_forget_takes_those_numbers(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = _settings(tmp_path, fake, tiny_model)
        async with running_bot(settings):
            async def upload(chat: int, name: str) -> None:
                fake.send_user_document(chat, chat, name, MEMO + name.encode(), "text/plain")
                await fake.wait_for(lambda: any(t.startswith(f"Indexed {name}") for t in _texts(fake, chat)), 60)

            async def say(chat: int, text: str) -> str:
                before = len(fake.messages(chat))
                fake.send_user_message(chat, chat, text)
                return (await fake.wait_for(lambda: fake.messages(chat)[before:], 10))[0].text

            await upload(BOB, "bobs.txt")  # another chat's upload takes an id before Alice's
            for name in ("GPL-3.txt", "plan.txt", "notes.txt"):
                await upload(ALICE, name)
            assert await say(ALICE, "/docs") == ("Documents in this chat:\n1. GPL-3.txt – 1 chunk\n"
                                                  "2. plan.txt – 1 chunk\n3. notes.txt – 1 chunk")
            assert (await say(ALICE, "/forget 2")).startswith("Forgot plan.txt")
            assert await say(ALICE, "/docs") == "Documents in this chat:\n1. GPL-3.txt – 1 chunk\n2. notes.txt – 1 chunk"
            assert (await say(ALICE, "/forget notes.txt")).startswith("Forgot notes.txt")
            assert await say(ALICE, "/forget 2") == "No document called '2' here. See /docs."
            assert await say(BOB, "/docs") == "Documents in this chat:\n1. bobs.txt – 1 chunk"
