"""Copy decoding: an answer that is a span of given evidence text, chosen by the model's own likelihood.

A small model asked about a passage often knows where the answer is but says it badly: it restates the
question, pads, invents a date, or loops. Here it may only copy. Every suffix of the evidence that starts at
a word goes into a token trie; decoding starts from the `beams` most likely first tokens, and each beam then
follows the trie greedily. Wherever a word of the evidence ends ("Denmark," ends before the comma; "1-5"
does not end after the 1), a beam offers a finished answer, scored

    log P(span tokens | prompt) + log P(the answer ends here | prompt, span)

where "ends here" is the model's probability of an end of turn, a line break or a full stop. So the length
is decided by the content rather than by a token cap, and the answer cannot loop: it is a piece of the
evidence. A beam stops as soon as its running log-probability falls below the best finished score, since
more tokens can only lower it.

    decoder = SpanDecoder(model, tokenizer)
    spans = decoder.spans(prompt_ids, ["In 1066, Duke William II conquered England."])
    spans[0].text, spans[0].logprob     # ("1066", -2.3)

The prompt's keys and values are kept between calls: a fixed instruction and examples at the start of every
prompt are prefilled once.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lm.model import KVCache
from lm.prefix import common_prefix

_WORD = re.compile(r"\S+")


@dataclass
class Span:
    text: str
    logprob: float  # log P(span, then the end of the answer | prompt)


class _Node:
    __slots__ = ("kids", "end")

    def __init__(self) -> None:
        self.kids: dict[int, _Node] = {}
        self.end = False  # a word ends here: an answer may stop


_CLOSING = ".,;:!?)]}\"'”’»"


def word_ends(text: str) -> set[int]:
    """Character positions where an answer copied from text may end: after a word, or before the punctuation
    that closes it ("Denmark," -> after "Denmark"), never inside one ("1-5" does not end after "1")."""
    ends = set()
    for m in _WORD.finditer(text):
        ends.add(m.end())
        bare = m.group().rstrip(_CLOSING)
        if bare:
            ends.add(m.start() + len(bare))
    return ends


def suffix_trie(tokenizer, texts: Sequence[str]) -> _Node:
    """A trie of the token ids of every suffix of `texts` that starts at a word (tokenized on its own, as an
    answer that starts there would be); a node is an end where its suffix has a word end (`word_ends`)."""
    suffixes = [text[m.start():] for text in texts for m in _WORD.finditer(text)]
    root = _Node()
    for text, (ids, offsets) in zip(suffixes, tokenizer.encode_batch_offsets(suffixes) if suffixes else [],
                                    strict=True):
        ends = word_ends(text)
        node = root
        for k, t in enumerate(ids):
            node = node.kids.setdefault(t, _Node())
            end = offsets[k][1]
            whole = k + 1 == len(ids) or offsets[k + 1][0] >= end  # not inside a multi-byte character
            node.end |= whole and end in ends
    return root


class SpanDecoder:
    """Copy decoding over one model and tokenizer (see the module docstring). Not thread-safe: callers
    serialise it with the rest of the model's generation."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_len: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.max_len = min(max_len or model.config.max_seq_len, model.config.max_seq_len)
        self.lock = threading.Lock()
        # Its own float32 cache of the prompt, not a KV slot of lm.serve's runner, though it runs in the server's
        # thread (Server.call): the slots hold bf16 keys, and spans scored over bf16 prompt keys come out in
        # another order where their scores are close (the best span of a question changed on SmolLM2-135M); and
        # the beams need `beams` rows at once, as many as the server has slots, so they would evict every chat
        # parked there for its next turn.
        self._cache: KVCache | None = None
        self._cached_ids: list[int] = []
        texts = [tokenizer.decode([i]) for i in range(len(tokenizer))]
        self.end_ids = sorted(set(tokenizer.stop_ids) | {i for i, t in enumerate(texts)
                                                         if "\n" in t or t.strip() in {".", "!", "?"}})

    @torch.inference_mode()
    def _prefill(self, prompt: list[int]) -> torch.Tensor:
        """(V,) log-probabilities after the prompt, reusing the cached keys/values of a shared prefix."""
        if self._cache is None:
            self._cache = KVCache(self.model.config, batch_size=1, max_len=self.max_len)
        reuse = common_prefix(self._cached_ids, prompt[:-1])
        self._cache.reset(reuse)
        self._cached_ids = prompt[:reuse]
        logits = self.model(torch.tensor([prompt[reuse:]]), cache=self._cache)  # (1, 1, V)
        self._cached_ids = list(prompt)
        return torch.log_softmax(logits[0, -1].float(), -1)

    def _beam_cache(self, P: int, B: int, extra: int) -> KVCache:
        """A cache of B rows that all continue the cached prompt of P tokens, with room for `extra` more."""
        cache = KVCache(self.model.config, batch_size=B, max_len=P + extra + 1)
        cache.k[:, :, :, :P] = self._cache.k[:, :1, :, :P]
        cache.v[:, :, :, :P] = self._cache.v[:, :1, :, :P]
        cache.pos = P
        return cache

    @torch.inference_mode()
    def score(self, prompt: Sequence[int], texts: Sequence[str]) -> list[float]:
        """log P(text, then the end of the answer | prompt) for each text, all in one batch."""
        seqs = [self.tokenizer.encode(t) or [self.end_ids[0]] for t in texts]
        if not seqs:
            return []
        L = max(len(s) for s in seqs)
        with self.lock:
            logp0 = self._prefill(list(prompt))
            cache = self._beam_cache(len(prompt), len(seqs), L)
            totals = [float(logp0[s[0]]) for s in seqs]
            for j in range(L):
                feed = torch.tensor([[s[min(j, len(s) - 1)]] for s in seqs])  # (C, 1); finished rows idle
                logp = torch.log_softmax(self.model(feed, cache=cache)[:, -1].float(), -1)  # (C, V)
                end_lp = torch.logsumexp(logp[:, self.end_ids], -1)
                for c, s in enumerate(seqs):
                    if j + 1 < len(s):
                        totals[c] += float(logp[c, s[j + 1]])
                    elif j + 1 == len(s):
                        totals[c] += float(end_lp[c])
        return totals

    @torch.inference_mode()
    def spans(self, prompt: Sequence[int], evidence: Sequence[str], *, beams: int = 8,
              max_tokens: int = 48, keep: int = 16) -> list[Span]:
        """The best `keep` spans of `evidence` as answers to the prompt, best first (empty without evidence)."""
        prompt = list(prompt)
        if len(prompt) + max_tokens + 1 > self.max_len:
            raise ValueError(f"a prompt of {len(prompt)} tokens leaves no room for a {max_tokens}-token answer "
                             f"in {self.max_len}")
        root = suffix_trie(self.tokenizer, evidence)
        if not root.kids:
            return []
        with self.lock:
            logp0 = self._prefill(prompt)
            firsts = sorted(root.kids, key=lambda t: -float(logp0[t]))[:beams]
            B = len(firsts)
            cache = self._beam_cache(len(prompt), B, max_tokens)  # every beam continues the same prompt
            toks = [[t] for t in firsts]
            nodes = [root.kids[t] for t in firsts]
            logps = [float(logp0[t]) for t in firsts]
            alive = [True] * B
            done: dict[tuple[int, ...], float] = {}
            best = float("-inf")
            for _ in range(max_tokens):
                feed = torch.tensor([[seq[-1]] for seq in toks])  # (B, 1); finished beams idle along
                logp = torch.log_softmax(self.model(feed, cache=cache)[:, -1].float(), -1)  # (B, V)
                end_lp = torch.logsumexp(logp[:, self.end_ids], -1)  # (B,)
                for b in range(B):
                    if not alive[b]:
                        continue
                    node = nodes[b]
                    if node.end:
                        score = logps[b] + float(end_lp[b])
                        done[tuple(toks[b])] = score
                        best = max(best, score)
                    if not node.kids:
                        alive[b] = False
                        continue
                    kids = list(node.kids)
                    t = kids[int(torch.argmax(logp[b, kids]))]
                    logps[b] += float(logp[b, t])
                    toks[b].append(t)
                    nodes[b] = node.kids[t]
                    alive[b] = logps[b] > best  # more tokens only lower it: it can no longer win
                if not any(alive):
                    break
        ranked = sorted(done.items(), key=lambda kv: -kv[1])[:keep]
        return [Span(self.tokenizer.decode(list(ids)).strip(), score) for ids, score in ranked]

    def calibrated(self, spans: Sequence[Span], baseline: Sequence[int], weight: float) -> list[Span]:
        """The spans rescored as log P(span | prompt) - weight * log P(span | baseline), best first.

        `baseline` is the same prompt with an uninformative question ("What does the evidence mention?"):
        subtracting part of how likely a span is as an answer to anything (its salience, its position)
        leaves more of how likely it is as the answer to this question. This is domain-conditional PMI
        (Holtzman et al., 2021, "Surface Form Competition").
        """
        if not spans or weight == 0:
            return list(spans)
        prior = self.score(baseline, [s.text for s in spans])
        out = [Span(s.text, s.logprob - weight * p) for s, p in zip(spans, prior, strict=True)]
        return sorted(out, key=lambda s: -s.logprob)
