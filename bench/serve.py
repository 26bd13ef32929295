"""Many chats at once: the bot's batched serving (lm.serve through bot.services.lm_gateway.ChatModel) against the
serialised engine it replaced (one lm.engine.Engine in one worker thread), in the same run, on the same prompts.

    .venv/bin/python bench/serve.py                       # N = 1, 4, 8, 16 conversations
    .venv/bin/python bench/serve.py --ns 8 --new-tokens 64

For each N, both paths get the same N conversations at the same moment (asyncio tasks, as the bot's handlers
are), with the bot's sampling settings (config defaults) and a seed per conversation, and the two paths take
turns, repeated `--rounds` times (this machine is shared and noisy: compare ratios, not absolute numbers); the
speedup is the median of the rounds' paired ratios, and the table shows each path's median round.
- aggregate tok/s = all conversations' new tokens / the time from submitting them to the last one's end;
- TTFT = submit to first text, per conversation: median and p95;
- bot path vs bench: one conversation's decode tok/s through the bot's path (an asyncio listener on the
  server thread), over bench/generate.py's (run as it is, in its own process), both greedy on its 1,024-token
  prompt with 128 new tokens;
- peak memory: a child process runs 8 chats of ~1,500-token history each through ChatModel and reports its
  peak RSS.
Ends with one JSON line: speedup_at_8, p95_ttft_s_at_8, bot_path_vs_bench_decode, peak_rss_mb_8x1500, ...

    .venv/bin/python bench/serve.py --http                # the cost of the API: N = 1 and 8

With --http, the same ChatModel is measured two ways in turns: in-process (ChatModel.reply_events, what a bot
with [model] backend = "local" does) and behind `docent serve`'s OpenAI-compatible API on loopback, streamed
over HTTP and read by the bot's client (bot.services.remote_model, backend = "openai"); the worker's server runs
in this process, so the difference is the API's own cost (HTTP, JSON, server-sent events). Ends with one JSON
line: http_vs_in_process_at_N (the median of paired aggregate tok/s ratios; the goal is at least 0.9).

    .venv/bin/python bench/serve.py --llama-batched-bench PATH   # against llama.cpp: N = 1, 4, 8

With --llama-batched-bench, our server (lm.serve through ChatModel, the bot's settings) is measured against
llama.cpp's llama-batched-bench on the same GGUF and thread count, in interleaved rounds (the peer's one call
covers every N, then ours runs each N). Both sides get N distinct prompts of `--prompt-tokens` tokens (128) at
once and decode `--new-tokens` (128) each, greedy with stop ids ignored; no prefix is reused. The aggregate is
the same on both sides: N x new tokens / the time from the start to the last token, prefill included (the peer's
N x TG / T; see parse_batched_bench). Ends with one JSON line: vs_llama_batched_at_N (the median of the rounds'
paired aggregate ratios, ours / the peer's), ttft_p95_s_at_8 (ours, submit to first token, p95 of the 8), and the
peer's llama_ttft_s_at_8 (its batched prefill). Without the flag the llama.cpp peer is skipped, with a line.

Torch work runs on one thread at a time here: once two live threads have run torch's parallel (OpenMP) regions,
libgomp manages more threads than there are cores and every parallel region slows down (measured: a batch-8
decode step 23 ms alone, 34-40 ms once another live thread had done one 2-thread matmul; libgomp then stops
spinning at its barriers). So the model is loaded in a thread that then exits, and the serialised engine runs
on the (idle) server thread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GENERATE_PROMPT_TOKENS = 1024  # bench/generate.py's default

QUESTIONS = ["Tell me about the history of the printing press.", "How do vaccines train the immune system?",
             "Explain how a bicycle stays upright.", "What makes bread rise?", "Describe the water cycle.",
             "Why is the sky blue?", "How does a refrigerator keep food cold?", "What causes earthquakes?",
             "Explain what a compiler does.", "How do bees make honey?", "Why do leaves change colour?",
             "How does GPS find your position?", "What is inflation in economics?", "How do tides work?",
             "Explain how a battery stores energy.", "Why do we dream?"]


def chat_messages(i: int, history_words: int = 0) -> list[dict]:
    messages = [{"role": "system", "content": "You are docent, a helpful assistant. Answer concisely and accurately."}]
    if history_words:  # an earlier exchange that fills the context, as in a long chat
        filler = " ".join(f"Note {k} of chat {i}: the meeting moved to room {k % 17}." for k in range(history_words // 10))
        messages += [{"role": "user", "content": filler}, {"role": "assistant", "content": "Noted."}]
    return messages + [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]


# ---------------------------------------------------------------------------------------------- the two paths

async def run_batched(chat_model, sampling, n: int, tokenizer) -> list[dict]:
    """N conversations through ChatModel.reply_events, the bot's path (or, given a RemoteChatModel, through the
    bot's client of an OpenAI-compatible worker: the same method)."""
    async def one(i: int) -> dict:
        t0, first, text = time.perf_counter(), None, ""
        async for event in chat_model.reply_events(chat_messages(i), seeded(sampling, i), threading.Event()):
            if isinstance(event, str):
                first = first or time.perf_counter()
                text += event
        return {"ttft": (first or time.perf_counter()) - t0, "end": time.perf_counter(),
                "tokens": len(tokenizer.encode(text))}
    return await asyncio.gather(*(one(i) for i in range(n)))


async def run_serialised(engine, chat_model, sampling, n: int, tokenizer) -> list[dict]:
    """N conversations on one Engine in one worker thread, one after another: how the bot generated before
    lm.serve. The worker is the (idle) server thread, through Server.call: a second thread running torch
    would slow both down (see the module docstring)."""
    loop = asyncio.get_running_loop()
    worker = asyncio.Lock()  # one worker: conversations run one after another, in arrival order

    async def one(i: int) -> dict:
        config = seeded(sampling, i)
        ids = chat_model.prompt(chat_messages(i), config)
        queue: asyncio.Queue = asyncio.Queue()

        def work() -> None:
            for delta in engine.stream(ids, config):
                loop.call_soon_threadsafe(queue.put_nowait, delta)
            loop.call_soon_threadsafe(queue.put_nowait, None)

        t0, first, text = time.perf_counter(), None, ""
        async with worker:
            future = asyncio.wrap_future(chat_model.server.call(work))
            while (delta := await queue.get()) is not None:
                first = first or time.perf_counter()
                text += delta
            await future
        return {"ttft": (first or time.perf_counter()) - t0, "end": time.perf_counter(),
                "tokens": len(tokenizer.encode(text))}
    return await asyncio.gather(*(one(i) for i in range(n)))


def seeded(sampling, seed: int):
    """The same settings with a seed of their own (each conversation samples reproducibly)."""
    from dataclasses import replace

    return replace(sampling, seed=seed)


def _median_run(runs: list[dict]) -> dict:
    """The run whose aggregate tok/s is the median of the rounds (the lower middle one for an even count)."""
    return sorted(runs, key=lambda f: f["agg_tok_s"])[(len(runs) - 1) // 2]


def figures(results: list[dict], t0: float) -> dict:
    ttfts = sorted(r["ttft"] for r in results)
    p95 = ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))]
    wall = max(r["end"] for r in results) - t0
    return {"agg_tok_s": sum(r["tokens"] for r in results) / wall, "ttft_median_s": statistics.median(ttfts),
            "ttft_p95_s": p95, "wall_s": wall}


# ---------------------------------------------------------------------------------------------- bot path vs bench

async def run_ids(server, prompts: list[list[int]], config) -> list[dict]:
    """Token-id prompts submitted to an lm.serve.Server at once, each with an asyncio listener (as the bot streams):
    per request, submit to first token (the server's own clock), the end, its new tokens and its Result."""
    from lm.engine import Result

    loop = asyncio.get_running_loop()

    async def one(ids: list[int]) -> dict:
        events: asyncio.Queue = asyncio.Queue()
        server.submit(ids, config, listener=lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        while not isinstance(event := await events.get(), Result):
            if isinstance(event, BaseException):
                raise event
        return {"ttft": event.timings["queue_s"] + event.timings["ttft_s"], "end": time.perf_counter(),
                "tokens": event.new_tokens, "result": event}
    return await asyncio.gather(*(one(ids) for ids in prompts))


async def bot_path_decode(chat_model, ids: list[int], config) -> float:
    """Decode tok/s of one request through the server with an asyncio listener, as the bot streams."""
    return (await run_ids(chat_model.server, [ids], config))[0]["result"].timings["decode_tok_s"]


def off_main_thread(fn):
    """fn() in a thread that exits afterwards (see the module docstring)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()  # leaving the block joins the thread


def bench_generate_decode(args) -> float:
    """Decode tok/s of bench/generate.py itself (its own process, Engine.generate on its main thread)."""
    cmd = [sys.executable, str(ROOT / "bench" / "generate.py"), "--model", args.model, "--threads", str(args.threads),
           "--prompt-tokens", str(GENERATE_PROMPT_TOKENS), "--new-tokens", "128", "--repeats", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)["ours"]["decode_tok_s"]


def memory_child(args) -> None:
    """8 chats of ~1,500-token history at once through ChatModel; prints peak RSS (MB) as JSON."""
    from bench.generate import peak_rss_mb
    from bot.config import ModelSettings, env_cache_dir
    from bot.services.lm_gateway import ChatModel, generation_config
    from lm.load import load_chat_model

    model, tok = off_main_thread(lambda: load_chat_model(args.model, env_cache_dir(), threads=args.threads))
    chat_model = ChatModel(model, tok, 2048, settings=ModelSettings())
    sampling = generation_config(ModelSettings(), max_new_tokens=32)

    async def go() -> list[int]:
        async def one(i: int) -> int:
            messages = chat_messages(i, history_words=840)  # ~1,500 tokens
            async for _ in chat_model.reply_events(messages, sampling, threading.Event()):
                pass
            return len(chat_model.prompt(messages, sampling))
        return await asyncio.gather(*(one(i) for i in range(8)))
    lengths = asyncio.run(go())
    print(json.dumps({"prompt_tokens": lengths, "peak_rss_mb": peak_rss_mb()}))


# ---------------------------------------------------------------------------------------------- llama.cpp's peer

def parse_batched_bench(text: str) -> dict[int, dict]:
    """llama-batched-bench's results by number of parallel sequences, from its `--output-format jsonl` lines (or
    its default Markdown table): T_PP (all N prompts prefilled, in one batch), S_TG (N x TG / the decode time) and
    T (prefill + decode). agg_tok_s = N x TG / T is the figure ours is compared with: new tokens over the time from
    the start to the last one, prefill included, as bench/serve.py measures its own aggregate (S t/s would count
    the prompt tokens too, S_TG leaves the prefill out). Its sequences all get their first token when the batched
    prefill ends, so T_PP is each one's time to first token."""
    rows = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            pl, tg, t_pp, speed_tg, t = r["pl"], r["tg"], r["t_pp"], r["speed_tg"], r["t"]
        elif line.startswith("|") and (cells := [c.strip() for c in line.strip("|").split("|")])[0].isdigit():
            _pp, tg, pl = (int(c) for c in cells[:3])  # PP | TG | B | N_KV | T_PP s | S_PP | T_TG s | S_TG | T s | S
            t_pp, speed_tg, t = float(cells[4]), float(cells[7]), float(cells[8])
        else:
            continue
        rows[pl] = {"agg_tok_s": pl * tg / t, "decode_tok_s": speed_tg, "ttft_s": t_pp, "total_s": t}
    return rows


def llama_batched_bench(path: str, gguf: str, args, ns: list[int], threads: int) -> tuple[dict[int, dict], str]:
    """One run of llama-batched-bench on the same GGUF and threads: N sequences of --prompt-tokens prompt tokens
    each (not shared, as ours are distinct) and --new-tokens new ones, for every N."""
    cmd = [path, "-m", gguf, "-c", str(max(ns) * (args.prompt_tokens + args.new_tokens)), "-b", "2048", "-ub", "512",
           "-npp", str(args.prompt_tokens), "-ntg", str(args.new_tokens), "-npl", ",".join(map(str, ns)),
           "-t", str(threads), "--output-format", "jsonl"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    rows = parse_batched_bench(proc.stdout)
    if proc.returncode != 0 or set(ns) - set(rows):
        raise SystemExit(f"llama-batched-bench failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return rows, " ".join(cmd)


def llama_main(args) -> None:
    """Our server's batched aggregate against llama-batched-bench's, in interleaved rounds (see the docstring)."""
    import torch

    from bench.generate import prompt_text
    from bot.config import ModelSettings, env_cache_dir
    from bot.services.lm_gateway import ChatModel
    from lm import hub
    from lm.engine import GenerationConfig
    from lm.load import load_chat_model

    ns = [int(n) for n in args.ns.split(",")]
    gguf = str(hub.resolve(args.model, env_cache_dir()))
    model, tok = off_main_thread(lambda: load_chat_model(args.model, env_cache_dir(), threads=args.threads))
    threads = torch.get_num_threads()
    settings = ModelSettings(batch_size=max(ns))
    chat_model = ChatModel(model, tok, settings.context_tokens, settings=settings)  # the bot's server settings
    ids, p = tok.encode(prompt_text()), args.prompt_tokens
    prompts = [ids[i * p:(i + 1) * p] for i in range(max(ns))]  # distinct: no shared prefix to reuse
    if len(prompts[-1]) < p:
        raise SystemExit(f"prompt text has only {len(ids)} tokens, need {max(ns) * p}")
    greedy = GenerationConfig(max_new_tokens=args.new_tokens, ignore_stop_ids=True, reuse_cache=False)
    load = [os.getloadavg()]

    async def measure() -> tuple[list, list]:
        ours, theirs = [], []
        await run_ids(chat_model.server, prompts[:2], greedy)  # warm-up
        for _ in range(args.rounds):  # interleaved: the peer (every N in one call), then ours at every N
            theirs.append(await asyncio.to_thread(llama_batched_bench, args.llama_batched_bench, gguf, args, ns,
                                                  threads))
            ours.append({})
            for n in ns:
                await asyncio.wrap_future(chat_model.server.forget())
                t0 = time.perf_counter()
                ours[-1][n] = figures(await run_ids(chat_model.server, prompts[:n], greedy), t0)
        return ours, theirs

    ours, theirs = asyncio.run(measure())
    chat_model.close()
    load.append(os.getloadavg())
    command = theirs[0][1]
    theirs = [rows for rows, _ in theirs]
    ratios = {n: sorted(o[n]["agg_tok_s"] / t[n]["agg_tok_s"] for o, t in zip(ours, theirs, strict=True)) for n in ns}
    ratio = {n: statistics.median(r) for n, r in ratios.items()}
    med_ours = {n: _median_run([o[n] for o in ours]) for n in ns}
    med_theirs = {n: _median_run([t[n] for t in theirs]) for n in ns}
    print(f"{args.model}, {p}-token prompts (distinct), {args.new_tokens} new tokens each (greedy, stop ids "
          f"ignored), threads {threads}, median of {args.rounds} interleaved round(s); load average "
          f"{load[0][0]:.2f} -> {load[1][0]:.2f}\nllama.cpp: {command}")
    print(f"{'N':>3} {'ours agg tok/s':>15} {'TTFT med s':>11} {'TTFT p95 s':>11} {'llama agg tok/s':>16} "
          f"{'its S_TG':>9} {'its T_PP s':>11} {'ours/llama':>11} {'(min-max)':>11}")
    for n in ns:
        o, t = med_ours[n], med_theirs[n]
        print(f"{n:>3} {o['agg_tok_s']:>15.1f} {o['ttft_median_s']:>11.2f} {o['ttft_p95_s']:>11.2f} "
              f"{t['agg_tok_s']:>16.1f} {t['decode_tok_s']:>9.1f} {t['ttft_s']:>11.2f} {ratio[n]:>10.2f}x "
              f"{f'({ratios[n][0]:.2f}-{ratios[n][-1]:.2f})':>11}")
    summary = {"model": args.model, "threads": threads, "prompt_tokens": p, "new_tokens": args.new_tokens,
               "rounds": args.rounds, "llama_cpp": command, "loadavg": [round(x[0], 2) for x in load],
               **{f"agg_tok_s_at_{n}": {"ours": round(med_ours[n]["agg_tok_s"], 1),
                                        "llama_cpp": round(med_theirs[n]["agg_tok_s"], 1)} for n in ns},
               **{f"vs_llama_batched_at_{n}": round(ratio[n], 3) for n in ns}}
    if 8 in ns:
        summary["ttft_p95_s_at_8"] = round(med_ours[8]["ttft_p95_s"], 2)
        summary["llama_ttft_s_at_8"] = round(med_theirs[8]["ttft_s"], 2)
    print(json.dumps(summary))


# ---------------------------------------------------------------------------------------------- driver

def http_main(args) -> None:
    """In-process against the same model behind the HTTP API (see the module docstring)."""
    import torch
    from aiohttp import web

    from bot.config import Settings, env_cache_dir
    from bot.services.lm_gateway import ChatModel, generation_config
    from bot.services.openai_server import Worker
    from bot.services.remote_model import RemoteChatModel
    from lm.load import load_chat_model

    ns = [int(n) for n in args.ns.split(",")]
    settings = Settings()
    settings.model.batch_size = max(ns)
    model, tok = off_main_thread(lambda: load_chat_model(args.model, env_cache_dir(), threads=args.threads))
    chat_model = ChatModel(model, tok, settings.model.context_tokens, settings=settings.model, label=args.model)
    sampling = generation_config(settings.model, max_new_tokens=args.new_tokens)

    async def measure() -> dict:
        runner = web.AppRunner(Worker(settings, chat_model).app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        settings.model.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
        remote = await RemoteChatModel.connect(settings)
        table = {n: {"in-process": [], "http": []} for n in ns}
        await run_batched(chat_model, sampling, 2, tok)  # warm-up
        await run_batched(remote, sampling, 2, tok)
        for _ in range(args.rounds):
            for n in ns:
                for name in ("in-process", "http"):
                    await asyncio.wrap_future(chat_model.server.forget())  # every run prefills its prompts
                    t0 = time.perf_counter()
                    runs = await run_batched(chat_model if name == "in-process" else remote, sampling, n, tok)
                    table[n][name].append(figures(runs, t0))
        await remote.client.aclose()
        await runner.cleanup()
        return table

    table = asyncio.run(measure())
    chat_model.close()
    ratio = {n: statistics.median(h["agg_tok_s"] / p["agg_tok_s"] for p, h in
                                  zip(table[n]["in-process"], table[n]["http"], strict=True)) for n in ns}
    print(f"{args.model}, {args.new_tokens} new tokens per reply, threads {torch.get_num_threads()}, "
          f"median of {args.rounds} round(s)")
    print(f"{'N':>3} {'path':>11} {'agg tok/s':>10} {'TTFT med s':>11} {'TTFT p95 s':>11} {'vs in-process':>14}")
    for n in ns:
        for name in ("in-process", "http"):
            f = _median_run(table[n][name])
            print(f"{n:>3} {name:>11} {f['agg_tok_s']:>10.1f} {f['ttft_median_s']:>11.2f} {f['ttft_p95_s']:>11.2f} "
                  f"{ratio[n] if name == 'http' else 1.0:>13.2f}x")
    print(json.dumps({"threads": torch.get_num_threads(), "new_tokens": args.new_tokens, "rounds": args.rounds,
                      **{f"http_vs_in_process_at_{n}": round(ratio[n], 3) for n in ns}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=0, help="0 = one per physical core")
    ap.add_argument("--ns", default="1,4,8,16", help="numbers of simultaneous conversations")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=128, help="with --llama-batched-bench: prompt tokens per "
                                                                   "sequence")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--http", action="store_true", help="measure the OpenAI-compatible API against in-process "
                                                        "(N defaults to 1,8)")
    ap.add_argument("--llama-batched-bench", metavar="PATH", help="llama.cpp's llama-batched-bench binary: our "
                    "server's batched aggregate against it on the same GGUF, in interleaved rounds (N defaults to 1,4,8)")
    args = ap.parse_args()
    if args.llama_batched_bench:
        args.ns = "1,4,8" if args.ns == ap.get_default("ns") else args.ns
        llama_main(args)
        return
    if args.http:
        args.ns = "1,8" if args.ns == ap.get_default("ns") else args.ns
        http_main(args)
        return
    if args.memory_child:
        memory_child(args)
        return
    print("llama.cpp's batched peer skipped: no --llama-batched-bench PATH given (the peer here is the serialised engine)")

    import torch

    from bot.config import ModelSettings, env_cache_dir
    from bot.services.lm_gateway import ChatModel, generation_config
    from lm.engine import Engine, GenerationConfig
    from lm.load import load_chat_model

    ns = [int(n) for n in args.ns.split(",")]
    model, tok = off_main_thread(lambda: load_chat_model(args.model, env_cache_dir(), threads=args.threads))
    settings = ModelSettings(batch_size=max(ns))
    chat_model = ChatModel(model, tok, settings.context_tokens, settings=settings)
    sampling = generation_config(settings, max_new_tokens=args.new_tokens)
    engine = Engine(model, tok, max_len=settings.context_tokens)

    async def measure() -> dict:
        table: dict[int, dict[str, list[dict]]] = {n: {"serialised": [], "batched": []} for n in ns}
        await run_batched(chat_model, sampling, 2, tok)  # warm-up (FBGEMM packing, allocator)
        await run_serialised(engine, chat_model, sampling, 1, tok)
        for _ in range(args.rounds):
            for n in ns:
                for name in ("serialised", "batched"):
                    engine.reset()
                    await asyncio.wrap_future(chat_model.server.forget())  # every run prefills its prompts
                    t0 = time.perf_counter()
                    runs = await (run_batched(chat_model, sampling, n, tok) if name == "batched"
                                  else run_serialised(engine, chat_model, sampling, n, tok))
                    table[n][name].append(figures(runs, t0))
        from bench.generate import prompt_text

        ids = tok.encode(prompt_text())[:GENERATE_PROMPT_TOKENS]
        greedy = GenerationConfig(max_new_tokens=128, ignore_stop_ids=True, reuse_cache=False)
        ratios = []
        for _ in range(max(2, args.rounds)):  # interleaved: bench/generate.py, then the bot path
            bench = await asyncio.to_thread(bench_generate_decode, args)
            bot = await bot_path_decode(chat_model, ids, greedy)
            ratios.append((bot, bench))
        return {"table": table, "bot_vs_bench": ratios}

    got = asyncio.run(measure())
    chat_model.close()
    # per round, the two paths ran back to back on the same conversations: the speedup is the median of those
    # paired ratios, and each path's figures are those of its median round
    med = {n: {k: _median_run(v) for k, v in got["table"][n].items()} for n in ns}
    speedup = {n: statistics.median(b["agg_tok_s"] / s["agg_tok_s"] for s, b in
                                    zip(got["table"][n]["serialised"], got["table"][n]["batched"], strict=True))
               for n in ns}
    print(f"{args.new_tokens} new tokens per reply, bot sampling settings, threads {torch.get_num_threads()}, "
          f"median of {args.rounds} round(s)")
    print(f"{'N':>3} {'path':>11} {'agg tok/s':>10} {'(min-max)':>13} {'TTFT med s':>11} {'TTFT p95 s':>11} "
          f"{'speedup':>8}")
    for n in ns:
        for name in ("serialised", "batched"):
            f, runs = med[n][name], [r["agg_tok_s"] for r in got["table"][n][name]]
            speed = speedup[n] if name == "batched" else 1.0
            print(f"{n:>3} {name:>11} {f['agg_tok_s']:>10.1f} {f'({min(runs):.0f}-{max(runs):.0f})':>13} "
                  f"{f['ttft_median_s']:>11.2f} {f['ttft_p95_s']:>11.2f} {speed:>7.2f}x")
    ratios = sorted(bot / bench for bot, bench in got["bot_vs_bench"])
    bot, bench = statistics.median(r[0] for r in got["bot_vs_bench"]), statistics.median(r[1] for r in got["bot_vs_bench"])
    print(f"one conversation, greedy: bot path decode {bot:.1f} tok/s, bench/generate.py {bench:.1f} tok/s "
          f"(median of paired ratios {statistics.median(ratios):.2f}x, {ratios[0]:.2f}-{ratios[-1]:.2f})")
    child = subprocess.run([sys.executable, __file__, "--memory-child", "--model", args.model, "--threads",
                            str(args.threads)], capture_output=True, text=True)
    memory = json.loads(child.stdout.strip().splitlines()[-1]) if child.returncode == 0 else {}
    if memory:
        print(f"8 chats of {min(memory['prompt_tokens'])}-{max(memory['prompt_tokens'])} prompt tokens at once: "
              f"peak RSS {memory['peak_rss_mb']:.0f} MB")
    else:
        print(f"memory child failed: {child.stderr[-2000:]}")
    summary = {"threads": torch.get_num_threads(), "new_tokens": args.new_tokens, "rounds": args.rounds,
               **{f"agg_tok_s_at_{n}": {k: round(v["agg_tok_s"], 1) for k, v in med[n].items()} for n in ns},
               **{f"speedup_at_{n}": round(speedup[n], 2) for n in ns},
               "bot_path_vs_bench_decode": round(statistics.median(ratios), 3),
               "peak_rss_mb_8x1500": round(memory.get("peak_rss_mb", 0))}
    if 8 in med:
        summary["p95_ttft_s_at_8"] = round(med[8]["batched"]["ttft_p95_s"], 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
