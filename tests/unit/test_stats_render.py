"""The /stats wording: a user's numbers, and for admins the model in use (a trained version or the configured
model) and per-chat totals, cut to a readable number of chats."""

from __future__ import annotations

from bot.db.stats_queries import ChatTotals, Counts, UserStats
from bot.db.tables import ModelVersion
from bot.services.usage_stats import Overview, Stats
from bot.telegram.texts import MAX_CHATS_SHOWN
from bot.telegram.texts import stats_text as render


def test_a_user_sees_their_numbers_today_and_in_all_with_singular_and_plural():
    text = render(Stats(UserStats(since=Counts(1, 12, 0), total=Counts(3, 1234, 1)), None))
    assert "Today (UTC): 1 message, 12 reply tokens, 0 documents" in text
    assert "All time: 3 messages, 1,234 reply tokens, 1 document" in text
    assert "Model in use" not in text and "All chats" not in text


def test_an_admin_sees_the_active_version_and_every_chat_up_to_a_limit():
    chats = [ChatTotals(-100 - i, "group", f"group {i}", 50 - i, 10 * i, 1, 2) for i in range(MAX_CHATS_SHOWN + 3)]
    version = ModelVersion(id=3, name="run-3", base="smollm2-135m")
    overview = Overview(chats, version, "smollm2-135m")
    text = render(Stats(UserStats(Counts(), Counts()), overview))
    assert "Model in use: version #3 (run-3), trained from smollm2-135m" in text
    messages = sum(c.messages for c in chats)
    tokens = sum(c.tokens for c in chats)
    assert f"All chats ({len(chats)}): {messages:,} messages, {tokens:,} reply tokens, {len(chats)} documents" in text
    assert "• group 0 (group -100): 50 messages, 0 reply tokens, 1 document, 2 users" in text
    assert f"• group {MAX_CHATS_SHOWN - 1} " in text and f"• group {MAX_CHATS_SHOWN} " not in text
    assert text.endswith("… and 3 more chats") and len(text) < 4096
    configured = render(Stats(UserStats(Counts(), Counts()), Overview([], None, "smollm2-135m")))
    assert "Model in use: the configured model smollm2-135m (no trained version is active)" in configured
