"""`docent chat` and `docent generate`: the model in a terminal, no Telegram needed.

The reply is generated in a worker thread while the main thread prints it, so Ctrl-C can stop a reply
(the engine checks a cancel flag between tokens) without ending the program.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from bot.config import Settings
from bot.services.lm_gateway import ChatModel, generation_config

if TYPE_CHECKING:
    from bot.services.lm_gateway import GenerationConfig

BANNER = "docent chat — /reset clears the conversation, /system TEXT sets the system prompt, /quit exits. " \
         "Ctrl-C stops a reply."


def _print_stream(make: Callable[[threading.Event], Iterator[str]], out=sys.stdout) -> tuple[str, bool]:
    """Print deltas as they come; returns (text, completed). Ctrl-C cancels the reply only."""
    cancel = threading.Event()
    q: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            for delta in make(cancel):
                q.put(delta)
        except BaseException as e:
            q.put(e)
        finally:
            q.put(None)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    parts: list[str] = []
    completed = True
    while True:
        try:
            item = q.get()
        except KeyboardInterrupt:
            cancel.set()
            completed = False
            out.write(" [stopped]")
            continue
        if item is None:
            break
        if isinstance(item, BaseException):
            raise item
        parts.append(item)
        out.write(item)
        out.flush()
    out.write("\n")
    worker.join()
    return "".join(parts), completed


def _lstm_dir(model: str | None) -> bool:
    config = Path(model).expanduser() / "config.json" if model else None
    return bool(config and config.is_file() and json.loads(config.read_text()).get("arch") == "lstm")


def generate_lstm(path: str, prompt: str, config: GenerationConfig, cache_dir: Path) -> str:
    """An LSTM language model (docent train scratch --arch lstm) continues the prompt with the same sampling."""
    import torch  # lazy: seconds at start-up

    from lm.load import load_model  # lazy: loads torch, seconds at start-up

    model, tokenizer, _ = load_model(path, cache_dir)
    ids = tokenizer.encode(prompt) or [tokenizer.eos_id or 0]
    generator = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), config.max_new_tokens, config.temperature,
                             config.top_k or None, config.top_p, generator, tokenizer.eos_id)
    return tokenizer.decode(out[0, len(ids):].tolist(), skip_special=True)


def generate_once(settings: Settings, prompt: str, model: str | None = None, raw: bool = False,
                  **overrides) -> int:
    config = generation_config(settings.model, **overrides)
    if _lstm_dir(model):
        print(generate_lstm(model, prompt, config, settings.cache_dir))
        return 0
    chat_model = ChatModel.load(settings, model)
    try:
        if raw:
            _print_stream(lambda cancel: chat_model.stream_text(prompt, config, cancel))
        else:
            messages = [{"role": "system", "content": settings.model.system_prompt},
                        {"role": "user", "content": prompt}]
            _print_stream(lambda cancel: chat_model.stream_chat(messages, config, cancel))
    finally:  # the scheduler thread may still be in torch after the last token: exiting then aborts
        chat_model.close(wait=True, cancel=True)
    return 0


def terminal_chat(settings: Settings, model: str | None = None, read: Callable[[str], str] = input,
                  **overrides) -> int:
    """A read-eval-print loop with the model; history stays within the context budget."""
    print(f"loading {model or settings.model.name} ...", file=sys.stderr)
    chat_model = ChatModel.load(settings, model)
    try:
        return _chat_loop(chat_model, settings, read, generation_config(settings.model, **overrides))
    finally:  # the scheduler thread may still be in torch after the last token: exiting then aborts
        chat_model.close(wait=True, cancel=True)


def _chat_loop(chat_model: ChatModel, settings: Settings, read: Callable[[str], str],
               config: GenerationConfig) -> int:
    """Read a line, answer it, until end of input or /quit."""
    system = settings.model.system_prompt
    history: list[dict] = []
    print(BANNER)
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            history.clear()
            print("(conversation cleared)")
            continue
        if line.startswith("/system"):
            system = line[len("/system"):].strip() or settings.model.system_prompt
            print("(system prompt set)")
            continue
        history.append({"role": "user", "content": line})
        messages = [{"role": "system", "content": system}, *history]
        try:
            messages = chat_model.fit(messages, config)
        except ValueError as e:  # ContextOverflow: this one message alone is too long
            history.pop()
            print(f"(!) {e}")
            continue
        history = [m for m in messages if m["role"] != "system"]
        sys.stdout.write("docent> ")
        text, _ = _print_stream(lambda cancel, m=messages: chat_model.stream_chat(m, config, cancel))
        history.append({"role": "assistant", "content": text})
