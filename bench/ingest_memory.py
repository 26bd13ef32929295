"""Peak memory of the process that ingests one large upload, the way the bot does (KnowledgeBase.ingest).

    python -m bench.ingest_memory --mb 20          # the largest file the Bot API lets a bot download

Generates MB megabytes of varied English-like text (distinct sentences, so nothing is deduplicated), ingests
it into a fresh SQLite database in a temporary directory, and samples this process's resident memory twice a
second while it runs. The parse runs in a child process with its own limit (bot.documents.parse), so what is
measured is chunking, embedding and storing. Prints the peak per stage and a final JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path

WORDS = ("river harbour council engine ledger station garden signal market bridge winter archive pilot "
         "letter valley factory orchard tunnel meadow canal quarry beacon").split()


def text_of(megabytes: float) -> bytes:
    """Distinct sentences in paragraphs of eight, at most `megabytes` long (20 is the upload limit)."""
    out, size, i = [], 0, 0
    while True:
        para = " ".join(f"The {WORDS[(i + k) % len(WORDS)]} of district {i}-{k} reported {(i * 31 + k) % 977} "
                        f"visitors and {(i * 7 + k) % 89} complaints about the {WORDS[(i * 3 + k) % len(WORDS)]}."
                        for k in range(8))
        if size + len(para) + 2 > megabytes * 2**20:
            break
        out.append(para)
        size += len(para) + 2
        i += 1
    return "\n\n".join(out).encode()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


async def measure(megabytes: float) -> dict:
    from bot.config import Settings
    from bot.services import open_services

    data = text_of(megabytes)
    peaks: dict[str, float] = {}
    stage = ["start"]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peaks[stage[0]] = max(peaks.get(stage[0], 0.0), rss_mb())

    with tempfile.TemporaryDirectory() as tmp:
        engine, services = await open_services(Settings(data_dir=Path(tmp) / "data"))
        kb = services.knowledge
        _ = kb.encoder  # loaded before the clock starts, as in a running bot
        before = rss_mb()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        last = [0.0]

        def progress(name: str, fraction: float) -> None:
            stage[0] = name
            if fraction - last[0] >= 0.05:
                last[0] = fraction
                print(f"  {time.perf_counter() - t0:7.0f} s  {name:10s} {fraction:5.0%}  rss {rss_mb():6.0f} MB",
                      flush=True)

        try:
            result = await kb.ingest("bench", data, "big.txt", progress=progress)
        finally:
            done.set()
            sampler.join()
            await engine.dispose()
        seconds = time.perf_counter() - t0
    peak = max(peaks.values())
    for name, mb in peaks.items():
        print(f"peak while {name:10s} {mb:7.0f} MB")
    return {"megabytes": megabytes, "chunks": result.chunks, "seconds": round(seconds, 1),
            "rss_before_mb": round(before), "peak_rss_mb": round(peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=20.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.mb))))


if __name__ == "__main__":
    main()
