"""N users ask the real bot at the same moment, over HTTP through the fake Telegram Bot API: when does each
see the first text of their reply (not a placeholder), and when the whole reply?

    .venv/bin/python bench/telegram_users.py            # 8 users, the real SmolLM2-135M, config defaults

The bot runs as users run it (int8 weights, the default sampling, context, batch size and edit intervals) and
is warmed up with one message first, so the model load is not counted. Times are from the moment the users'
messages are queued in the fake server (the bot long-polls them) to the first edit that shows reply text,
as the fake server saw it. Ends with one JSON line holding `last_first_text_s`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve import QUESTIONS  # noqa: E402 (after the path it needs)

PLACEHOLDERS = ("…", "⏳", "Starting up")


def first_text_at(message) -> float | None:
    """When the bot's message first showed reply text rather than a placeholder."""
    for version in message.versions:
        if version.text.strip() and not version.text.startswith(PLACEHOLDERS):
            return version.at
    return None


async def run(users: int) -> dict:
    from bot.config import Settings, env_cache_dir
    from tests.support.bot_harness import final_reply, running_bot
    from tests.support.fake_telegram import FakeTelegram

    with tempfile.TemporaryDirectory() as tmp:
        async with FakeTelegram() as fake:
            settings = Settings(data_dir=Path(tmp) / "data", cache_dir=env_cache_dir())
            settings.telegram.token = fake._token
            settings.telegram.api_url, settings.telegram.file_url = fake.base_url, fake.base_file_url
            async with running_bot(settings):
                fake.send_user_message(1, 1, "Hello!")  # warm-up: the model loads, the kernels pack
                await fake.wait_for(lambda: final_reply(fake, 1), timeout=300)
                ids = [100 + i for i in range(users)]
                sent = time.monotonic()
                for i, user in enumerate(ids):
                    fake.send_user_message(user, user, QUESTIONS[i % len(QUESTIONS)])
                replies = [await fake.wait_for(lambda u=user: final_reply(fake, u), timeout=600) for user in ids]
    first = [first_text_at(r) - sent for r in replies]
    done = [r.versions[-1].at - sent for r in replies]
    return {"users": users, "first_text_s": [round(x, 2) for x in first], "done_s": [round(x, 2) for x in done],
            "median_first_text_s": round(statistics.median(first), 2), "last_first_text_s": round(max(first), 2),
            "last_done_s": round(max(done), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=8)
    args = ap.parse_args()
    result = asyncio.run(run(args.users))
    print(f"{args.users} users at once: first reply text after {result['median_first_text_s']:.2f} s (median), "
          f"{result['last_first_text_s']:.2f} s (last); every reply done after {result['last_done_s']:.2f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
