"""N users ask the real bot at the same moment, over HTTP through the fake Telegram Bot API: when does each
see the first text of their reply (not a placeholder), and when the whole reply?

    .venv/bin/python bench/telegram_users.py --model qwen2.5-coder-0.5b   # 8 users, config defaults otherwise

The bot runs as users run it (the configured weights, the default sampling, context, batch size and edit
intervals) and is warmed up with one message first, so the model load is not counted. Times are from the
moment the users' messages are queued in the fake server (the bot long-polls them) to the first edit that shows
reply text, as the fake server saw it. Each reply's stream rate is the tokens it gained from its first text to
its last edit over that time (the model's own tokenizer). Ends with one JSON line holding `first_text_s_last`
and `min_stream_tok_s` (the slowest reply's rate; replies shown in one edit have none).
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


def tokens_of(model: str, cache_dir: Path):
    """A function counting the tokens of a text with the model's tokenizer (read from its GGUF's metadata)."""
    from lm import hub
    from lm.gguf import read_metadata
    from lm.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_gguf(read_metadata(hub.resolve(model, cache_dir)))
    return lambda text: len(tokenizer.encode(text))


def stream_rate(message, count) -> float | None:
    """Tokens per second a reply streamed at after its first text; None when it came in one edit."""
    start = first_text_at(message)
    shown = next(v for v in message.versions if v.at == start)
    last = message.versions[-1]
    if last.at <= start:
        return None
    return (count(last.text) - count(shown.text)) / (last.at - start)


async def run(users: int, model: str | None = None) -> dict:
    from bot.config import Settings, env_cache_dir
    from tests.support.bot_harness import final_reply, running_bot
    from tests.support.fake_telegram import FakeTelegram

    with tempfile.TemporaryDirectory() as tmp:
        async with FakeTelegram() as fake:
            settings = Settings(data_dir=Path(tmp) / "data", cache_dir=env_cache_dir())
            if model:
                settings.model.name = model
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
    count = tokens_of(settings.model.name, settings.cache_dir)
    rates = [x for x in (stream_rate(r, count) for r in replies) if x is not None]
    return {"users": users, "model": settings.model.name, "first_text_s": [round(x, 2) for x in first],
            "done_s": [round(x, 2) for x in done], "stream_tok_s": [round(x, 1) for x in rates],
            "median_first_text_s": round(statistics.median(first), 2), "first_text_s_last": round(max(first), 2),
            "min_stream_tok_s": round(min(rates), 1) if rates else None, "last_done_s": round(max(done), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--model", help="the chat model (a hub name or a .gguf path; default: settings)")
    args = ap.parse_args()
    result = asyncio.run(run(args.users, args.model))
    print(f"{args.users} users at once ({result['model']}): first reply text after "
          f"{result['median_first_text_s']:.2f} s (median), {result['first_text_s_last']:.2f} s (last); every reply "
          f"done after {result['last_done_s']:.2f} s; the slowest stream {result['min_stream_tok_s']} tokens/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
