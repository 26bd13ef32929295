"""Text generation: prefill + KV-cached decode, sampling, stop conditions, streaming, chat, context budget.

    engine = Engine(model, tokenizer, max_len=2048)
    result = engine.generate(prompt_ids, GenerationConfig(max_new_tokens=64))        # Result
    for delta in engine.stream_chat(messages, GenerationConfig(temperature=0.7, seed=1)):
        print(delta, end="")

- Sampling: temperature (0 = greedy), top-k, top-p (on the top-k set when both are given), repetition penalty
  (CTRL / HF definition: a logit l of a token already in prompt+output becomes l/p if l > 0 else l*p), and a
  seeded torch.Generator (the same seed gives the same text, for the same cache history: see reuse_cache).
- Loops: `no_repeat_ngram` = n bans every token that would generate an n-gram of output a second time.
- Stops: a stop id (end of turn, from `tokenizer.stop_ids`), a stop string (found in the decoded text; it is not
  emitted, and text that could be the start of one is held back until it is disambiguated), `max_new_tokens`,
  or a `cancel` event (checked before every token).
- Streaming never splits a UTF-8 character: the generated ids are decoded as a whole and only text up to a
  trailing U+FFFD (an incomplete byte sequence) is emitted.
- The KV cache is kept between calls together with the ids it holds: a new prompt that extends a previous
  prompt+answer (the next turn of a chat) only prefills the new tokens (GenerationConfig.reuse_cache).
- Thread safety: one Engine has one KV cache, so generations are serialised by a lock (lm.serve batches many
  at once, with the same per-sequence Decoder). `generate` holds it for the call; a `stream` holds it from its
  first item until it is exhausted or closed (close it, or use it in a `with`/`contextlib.closing`, when you
  stop reading early). Other threads wait for their turn.

The tokenizer is duck-typed: `encode(text) -> ids`, `decode(ids) -> str`, `stop_ids: set[int]`, and for chat
`render_chat(messages, add_generation_prompt=True) -> (ids, mask)` (lm.tokenizer.Tokenizer has all of these).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lm.model import KVCache
from lm.prefix import common_prefix


class ContextOverflow(ValueError):
    """The prompt (plus at least one new token) does not fit the context window."""


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no limit
    top_p: float = 1.0  # 1 = no limit
    repetition_penalty: float = 1.0  # 1 = off
    no_repeat_ngram: int = 0  # n > 0: never generate an n-gram of output tokens twice (0 = off)
    seed: int | None = None  # None = a fresh random seed per call
    stop_strings: tuple[str, ...] = ()
    ignore_stop_ids: bool = False  # benchmarks: decode all max_new_tokens
    # Reuse the cached keys/values of a shared prefix (the previous turns of a chat). Cached positions were
    # computed by other kernels (one-token decode steps) than a fresh prefill would use, so logits differ in
    # the last bits; a sampled continuation is bit-reproducible for a seed only with the same cache history,
    # or with reuse_cache=False (always prefill the whole prompt).
    reuse_cache: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.no_repeat_ngram < 0 or self.no_repeat_ngram == 1:
            raise ValueError(f"no_repeat_ngram must be 0 (off) or >= 2, got {self.no_repeat_ngram}")
        self.stop_strings = tuple(s for s in self.stop_strings if s)


@dataclass
class Result:
    text: str
    ids: list[int]  # generated ids (a final stop id is not included)
    finish_reason: str  # "stop" | "length" | "stop_string" | "cancelled"
    prompt_tokens: int
    new_tokens: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds and tokens/s; see Engine._generate


# ---------------------------------------------------------------------------------------------- sampling

@torch.inference_mode()
def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """In place on logits (V,): every id in `seen` gets l/p if l > 0 else l*p (duplicates in `seen` are fine)."""
    picked = logits.gather(0, seen)
    return logits.scatter_(0, seen, torch.where(picked > 0, picked / penalty, picked * penalty))


def allowed_logits(logits: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Narrow (V,) temperature-scaled logits (or (R, V), row by row) to the top-k / top-p set.

    Returns (values, ids): the candidate logits (disallowed ones at -inf) and their token ids, or
    (logits, None) when nothing is narrowed. top-p keeps the smallest prefix of the sorted distribution whose
    probability reaches p (at least one token), computed on the top-k set when top_k is given.
    """
    if top_k <= 0 and top_p >= 1.0:
        return logits, None
    k = min(top_k, logits.shape[-1]) if top_k > 0 else logits.shape[-1]
    vals, ids = torch.topk(logits, k)  # sorted, descending
    if top_p < 1.0:
        probs = torch.softmax(vals, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # probability mass of the better-ranked tokens
        vals = vals.masked_fill(before >= top_p, float("-inf"))  # the first token always stays (before = 0)
    return vals, ids


class NgramBlocker:
    """Bans the tokens that would repeat an n-gram of the output so far (a loop guard for small models).

    Only generated tokens count: copying a phrase from the prompt stays allowed, repeating it does not.
    """

    def __init__(self, n: int):
        self.n = n
        self.followers: dict[tuple[int, ...], set[int]] = {}  # (n-1) tokens -> the tokens seen after them

    def add(self, out: list[int]) -> None:
        """Record the n-gram that out's last token completes."""
        if len(out) >= self.n:
            self.followers.setdefault(tuple(out[-self.n:-1]), set()).add(out[-1])

    def banned(self, out: list[int]) -> list[int]:
        """Token ids that may not come next."""
        if len(out) < self.n - 1:
            return []
        return list(self.followers.get(tuple(out[len(out) - self.n + 1:]), ()))

    @torch.inference_mode()
    def apply(self, logits: torch.Tensor, out: list[int]) -> torch.Tensor:
        """In place on (V,) logits: the banned next tokens get -inf."""
        if banned := self.banned(out):
            logits[banned] = float("-inf")
        return logits


@torch.inference_mode()
def sample_token(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> int:
    """One token id from (V,) float32 logits (already repetition-penalised)."""
    if cfg.temperature == 0 or cfg.top_k == 1:
        return int(torch.argmax(logits))
    vals, ids = allowed_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
    choice = int(torch.multinomial(torch.softmax(vals, dim=-1), 1, generator=generator))
    return choice if ids is None else int(ids[choice])


@torch.inference_mode()
def sample_rows(logits: torch.Tensor, rows: Sequence[int], configs: Sequence[GenerationConfig],
                generators: Sequence[torch.Generator | None]) -> list[int]:
    """sample_token for the given rows of (R, V) logits, each with its own settings and generator, with the
    vocabulary-wide work (argmax, temperature, top-k) done once for the rows that share their settings: one
    top-k over 8 rows costs about what one row's does. Each row's draw is the one sample_token would make."""
    picked: list[int] = [0] * len(rows)
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):
        greedy = cfg.temperature == 0 or cfg.top_k == 1
        groups.setdefault((0.0, 1, 1.0) if greedy else (cfg.temperature, cfg.top_k, cfg.top_p), []).append(i)
    for (temperature, top_k, top_p), members in groups.items():
        if temperature != 0.0 and (len(members) == 1 or top_k <= 0):  # nothing to share (a full sort): row by row
            for i in members:
                picked[i] = sample_token(logits[rows[i]], configs[i], generators[i])
            continue
        chosen = logits.index_select(0, torch.tensor([rows[i] for i in members]))  # (n, V)
        if temperature == 0.0:
            for i, tok in zip(members, torch.argmax(chosen, dim=-1).tolist(), strict=True):
                picked[i] = tok
        else:
            vals, ids = allowed_logits(chosen / temperature, top_k, top_p)  # (n, k) each
            probs = torch.softmax(vals, dim=-1)
            for j, i in enumerate(members):
                picked[i] = int(ids[j, int(torch.multinomial(probs[j], 1, generator=generators[i]))])
    return picked


# ---------------------------------------------------------------------------------------------- text

def stop_holdback(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of text could be the beginning of a stop string."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold


class TextTracker:
    """Turns the growing list of generated ids into safe text deltas (whole characters, no stop strings)."""

    def __init__(self, tokenizer: Any, stops: Sequence[str]):
        self.tok, self.stops = tokenizer, tuple(stops)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.sent = 0  # characters emitted so far
        self.text = ""  # decoded text of everything generated (up to a stop string once found)
        self.stopped = False

    def push(self, ids: list[int]) -> str:
        """The new delta after ids grew; sets .stopped when a stop string appeared."""
        text = self.tok.decode(ids)
        safe = len(text.rstrip("\ufffd"))  # an incomplete UTF-8 sequence decodes to U+FFFD: wait for the rest
        self.text = text
        if self.stops:
            lo = max(0, self.sent - self.longest)
            hits = [i for i in (text.find(s, lo) for s in self.stops) if i >= 0]
            if hits:
                self.stopped = True
                self.text = text[:min(hits)]
                return self._emit(len(self.text))
            safe -= stop_holdback(text[:safe], self.stops)
        return self._emit(safe)

    def flush(self) -> str:
        """Everything not emitted yet (the end of generation resolves every hold-back)."""
        return self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        if end <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent:end], end
        return delta


class Decoder:
    """One sequence's side of generation: sampling, the loop guard, stops and text deltas.

    The engine (one sequence) and lm.serve (many sequences in a batch) both feed it the logits of the
    sequence's last position, one step at a time.
    """

    def __init__(self, tokenizer: Any, prompt: list[int], cfg: GenerationConfig, max_len: int):
        self.cfg = cfg
        self.stops = set() if cfg.ignore_stop_ids else set(getattr(tokenizer, "stop_ids", ()) or ())
        # no seed: a fresh one from the OS (torch.seed() would also reseed torch's global generator)
        self.generator = torch.Generator().manual_seed(cfg.seed if cfg.seed is not None else secrets.randbits(63))
        self.budget = reply_budget(len(prompt), cfg.max_new_tokens, max_len)
        self.n_prompt = len(prompt)
        self.seen = None
        if cfg.repetition_penalty != 1.0:  # every id of prompt + output, preallocated
            self.seen = torch.empty(len(prompt) + self.budget, dtype=torch.long)
            self.seen[:len(prompt)] = torch.tensor(prompt)
        # the tokenizer's own stop strings: the fallback template's end of turn where it is no single token
        self.text = TextTracker(tokenizer, cfg.stop_strings + tuple(getattr(tokenizer, "stop_strings", ()) or ()))
        self.blocker = NgramBlocker(cfg.no_repeat_ngram) if cfg.no_repeat_ngram else None
        self.out: list[int] = []
        self.finish: str | None = None  # set once generation has ended: see Result.finish_reason

    @torch.inference_mode()
    def push(self, logits: torch.Tensor) -> str:
        """Pick the next token from (V,) float32 logits (changed in place); returns the new text delta."""
        self.constrain(logits)
        return self.accept(sample_token(logits, self.cfg, self.generator))

    @torch.inference_mode()
    def constrain(self, logits: torch.Tensor) -> None:
        """Apply this sequence's repetition penalty and n-gram bans to its (V,) logits, in place."""
        if self.seen is not None:
            apply_repetition_penalty(logits, self.seen[:self.n_prompt + len(self.out)], self.cfg.repetition_penalty)
        if self.blocker is not None:
            self.blocker.apply(logits, self.out)

    def accept(self, tok: int) -> str:
        """Record the picked token; returns the new text delta (sets .finish when generation ends)."""
        out = self.out
        if tok in self.stops:
            self.finish = "stop"
            return ""
        out.append(tok)
        if self.blocker is not None:
            self.blocker.add(out)
        if self.seen is not None:
            self.seen[self.n_prompt + len(out) - 1] = tok
        delta = self.text.push(out)
        if self.text.stopped:
            self.finish = "stop_string"
        elif len(out) >= self.budget:
            self.finish = "length"
        return delta

    def flush(self) -> str:
        """The text held back so far (the end of generation resolves every hold-back)."""
        return self.text.flush()

    def result(self, timings: dict[str, float]) -> Result:
        return Result(self.text.text, self.out, self.finish or "length", self.n_prompt, len(self.out), timings)


# ---------------------------------------------------------------------------------------------- engine

class Engine:
    """Generation over one model and tokenizer with one reusable KV cache (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_len: int | None = None,
                 kv_dtype: torch.dtype = torch.float32):
        self.model, self.tokenizer = model, tokenizer
        self.max_len = min(max_len or model.config.max_seq_len, model.config.max_seq_len)
        self.kv_dtype = kv_dtype
        self.lock = threading.Lock()
        self._cache: KVCache | None = None  # allocated on first use: (n_layers, 1, KV, max_len, D) x 2
        self._cached_ids: list[int] = []  # the tokens whose keys/values are in the cache, in order
        self.last_prefilled = 0  # prompt tokens the last generation actually ran (the rest came from the cache)

    # ------------------------------------------------------------------ public API
    def generate(self, prompt_ids: Sequence[int], cfg: GenerationConfig | None = None,
                 cancel: threading.Event | None = None) -> Result:
        """Generate a whole answer. Blocks while another generation on this engine runs."""
        stream = self.stream(prompt_ids, cfg, cancel)
        for _ in stream:
            pass
        return stream.result

    def stream(self, prompt_ids: Sequence[int], cfg: GenerationConfig | None = None,
               cancel: threading.Event | None = None) -> TextStream:
        """An iterator of text deltas; `.result` (a Result) is set once it is exhausted."""
        self.check_fits(len(prompt_ids))
        return TextStream(self._generate(list(prompt_ids), cfg or GenerationConfig(), cancel))

    def chat(self, messages: Sequence[dict], cfg: GenerationConfig | None = None,
             cancel: threading.Event | None = None) -> Result:
        return self.generate(self.render(messages), cfg, cancel)

    def stream_chat(self, messages: Sequence[dict], cfg: GenerationConfig | None = None,
                    cancel: threading.Event | None = None) -> TextStream:
        return self.stream(self.render(messages), cfg, cancel)

    def render(self, messages: Sequence[dict]) -> list[int]:
        ids, _mask = self.tokenizer.render_chat(messages, add_generation_prompt=True)
        return list(ids)

    def check_fits(self, n_prompt: int) -> None:
        reply_budget(n_prompt, 1, self.max_len)  # raises when not even one new token fits

    def reset(self) -> None:
        """Forget the cached conversation (the next prompt is prefilled from scratch)."""
        with self.lock:
            self._cached_ids = []

    # ------------------------------------------------------------------ internals
    @torch.inference_mode()
    def _forward(self, ids: list[int]) -> torch.Tensor:
        """Run ids through the model at the cache position; (V,) float32 logits of the last one."""
        logits = self.model(torch.tensor([ids], dtype=torch.long), cache=self._cache)  # (1, 1, V)
        return logits[0, -1].float()

    def _prefill(self, prompt: list[int], reuse_cache: bool = True) -> torch.Tensor:
        if self._cache is None:
            self._cache = KVCache(self.model.config, batch_size=1, max_len=self.max_len, dtype=self.kv_dtype)
        # reuse the cached prefix, but always run at least the last prompt token to get its logits
        reuse = common_prefix(self._cached_ids, prompt[:-1]) if reuse_cache else 0
        self._cache.reset(reuse)
        self._cached_ids = prompt[:reuse]  # if the forward fails, the cache holds exactly these
        self.last_prefilled = len(prompt) - reuse
        logits = self._forward(prompt[reuse:])
        self._cached_ids = list(prompt)
        return logits

    def _generate(self, prompt: list[int], cfg: GenerationConfig,
                  cancel: threading.Event | None) -> Iterator[str | Result]:
        """Yields text deltas, then the Result as the last item."""
        with self.lock:
            t0 = time.perf_counter()
            dec = Decoder(self.tokenizer, prompt, cfg, self.max_len)
            t_first = None
            logits = self._prefill(prompt, cfg.reuse_cache)
            t_prefill = time.perf_counter() - t0
            while True:
                if cancel is not None and cancel.is_set():
                    dec.finish = "cancelled"
                    break
                delta = dec.push(logits)
                if t_first is None:
                    t_first = time.perf_counter() - t0
                if delta:
                    yield delta
                if dec.finish:
                    break
                logits = self._forward([dec.out[-1]])
                self._cached_ids.append(dec.out[-1])
            tail = dec.flush()
            if tail:
                yield tail
            yield dec.result(timings(t0, t_prefill, t_first, self.last_prefilled, len(dec.out)))


def timings(t0: float, t_prefill: float, t_first: float | None, prefilled: int, new_tokens: int) -> dict[str, float]:
    """A generation's seconds and tokens/s, measured from t0 (perf_counter) to now."""
    total = time.perf_counter() - t0
    decode_s = total - (t_first or total)
    return {
        "prefill_s": t_prefill, "ttft_s": t_first or total, "decode_s": decode_s, "total_s": total,
        "prefilled_tokens": prefilled,
        "prefill_tok_s": prefilled / t_prefill if t_prefill else 0.0,
        # tokens after the first, over the time after the first (the first comes from the prefill)
        "decode_tok_s": (new_tokens - 1) / decode_s if new_tokens > 1 and decode_s > 0 else 0.0,
    }


class TextStream:
    """Iterator of text deltas from one generation; `.result` holds the Result once it has ended."""

    def __init__(self, gen: Iterator[str | Result]):
        self._gen = gen
        self.result: Result | None = None

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        item = next(self._gen)
        if isinstance(item, Result):
            self.result = item
            self._gen.close()  # the generator is parked at its last yield, inside the lock: let it exit
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop generating (releases the engine's lock); no Result is produced."""
        self._gen.close()

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- context budget

def reply_budget(n_prompt: int, max_new_tokens: int, max_len: int) -> int:
    """The new tokens a reply may have after a prompt of n_prompt tokens in a context of max_len tokens:
    max_new_tokens, or what the context has left when that is less.

    An empty prompt is a ValueError, and a prompt that leaves no room for one new token a ContextOverflow.
    """
    if n_prompt < 1:
        raise ValueError("the prompt is empty: generation needs at least one token to condition on")
    if n_prompt + 1 > max_len:
        raise ContextOverflow(f"the prompt has {n_prompt} tokens; with at least one new token it does not fit "
                              f"the context window of {max_len} tokens")
    return min(max_new_tokens, max_len - n_prompt)


def trim_messages(messages: Sequence[dict], tokenizer: Any, budget_tokens: int,
                  reserve_new_tokens: int = 0) -> list[dict]:
    """Drop the oldest turns until the rendered prompt + reserve_new_tokens fits budget_tokens.

    A leading system message and the latest message are always kept; if those alone do not fit,
    ContextOverflow says how many tokens the latest message has and what the limit is.
    """
    messages = list(messages)
    if not messages:
        raise ValueError("no messages to trim")
    limit = budget_tokens - reserve_new_tokens
    if limit < 1:
        raise ContextOverflow(f"no room for a prompt: budget {budget_tokens} tokens, {reserve_new_tokens} reserved "
                              "for the answer")

    def size(msgs: list[dict]) -> int:
        return len(tokenizer.render_chat(msgs, add_generation_prompt=True)[0])

    head = messages[:1] if messages[0].get("role") == "system" and len(messages) > 1 else []
    body = messages[len(head):]
    # drop from the front of body, a turn at a time: the kept part starts with a user message (or is the last)
    for start in range(len(body)):
        if body[start].get("role") == "assistant" and start < len(body) - 1:
            continue
        candidate = head + body[start:]
        if size(candidate) <= limit:
            return candidate
    last = body[-1]
    n_last = len(tokenizer.encode(str(last.get("content", ""))))
    raise ContextOverflow(f"the latest message has {n_last} tokens, which (with the prompt template"
                          f"{' and system prompt' if head else ''}) does not fit the limit of {limit} tokens "
                          f"({budget_tokens} in the context, {reserve_new_tokens} kept for the answer)")
